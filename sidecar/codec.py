"""What events look like on the broker.

`syncar`: one broker message carries a batch of events from one origin,
`{"v": 1, "origin": ..., "events": [{id, time, event, path, data, context}, ...]}`.
Each event is serialised once, when it is published (`Outgoing.part`); the
same bytes go into the batch and, spliced, into the frame written to local
clients.

`feathers-sync`: one message per event, `{event, path, data, context}`,
exactly what feathers-sync 3.x sends, so both can share a broker. It carries
no origin, so our own messages are recognised by remembering what we sent.
"""

from __future__ import annotations

import hashlib
import secrets
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from sidecar.errors import CodecError

SYNCAR_VERSION = 1
#: Every event part starts `{"id":"<id>","time":`; an unescaped `","time":` cannot occur inside the id string.
_ID_START, _ID_END = len(b'{"id":"'), b'","time":'
#: Messages we sent, remembered to recognise them when the broker echoes them back (feathers-sync codec).
ECHO_MEMORY = 65_536


@dataclass(slots=True)
class BusEvent:
    """One event received from the broker."""

    id: str
    time: float | None
    event: str
    path: str
    data: Any
    context: Any


@dataclass(slots=True)
class Outgoing:
    """One event published by a local client, on its way to the broker."""

    id: str
    event: str
    path: str
    data: Any
    context: Any
    part: bytes  # the event as JSON: {id, time, event, path, data, context}


@dataclass(slots=True)
class Batch:
    origin: str | None  # None: the format does not say (feathers-sync)
    events: list[BusEvent]


class Codec(ABC):
    name: ClassVar[str]

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id

    @abstractmethod
    def pack(self, events: list[Outgoing]) -> list[bytes]:
        """Turn events, in order, into broker message bodies."""

    def echoed(self, body: bytes) -> int:
        """How many events `body` carries if this daemon sent it (told without decoding it), else 0."""
        return 0

    @abstractmethod
    def unpack(self, body: bytes) -> Batch:
        """Decode a broker message.

        Raises:
            CodecError: malformed or foreign; `reason` is a short metric label.
        """


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CodecError("malformed", "message is not JSON") from None


def _event_fields(obj: Any) -> tuple[str, str]:
    if not isinstance(obj, dict):
        raise CodecError("malformed", "event is not a JSON object")
    event, path = obj.get("event"), obj.get("path")
    if not isinstance(event, str) or not isinstance(path, str) or not event or not path:
        raise CodecError("malformed", "event has no string 'event' and 'path'")
    return event, path


class SyncarCodec(Codec):
    name = "syncar"

    def __init__(self, instance_id: str) -> None:
        super().__init__(instance_id)
        self._head = b'{"v":%d,"origin":%s,"events":[' % (SYNCAR_VERSION, orjson.dumps(instance_id))
        # the JSON of a sent batch's first event id -> the number of events in that batch
        self._sent: OrderedDict[bytes, int] = OrderedDict()

    def pack(self, events: list[Outgoing]) -> list[bytes]:
        first = events[0].part
        self._sent[first[_ID_START:first.find(_ID_END, _ID_START)]] = len(events)
        if len(self._sent) > ECHO_MEMORY:
            self._sent.popitem(last=False)
        return [self._head + b",".join([e.part for e in events]) + b"]}"]

    def echoed(self, body: bytes) -> int:
        # Our batches all start with the same bytes, origin included: no need to decode them to drop them.
        if not body.startswith(self._head):
            return 0
        start = len(self._head) + _ID_START
        return self._sent.pop(body[start:body.find(_ID_END, start)], 1)

    def unpack(self, body: bytes) -> Batch:
        obj = _loads(body)
        if not isinstance(obj, dict) or "events" not in obj:
            raise CodecError("foreign", "message is not a syncar batch")
        if obj.get("v") != SYNCAR_VERSION:
            raise CodecError("foreign", f"syncar batch version {obj.get('v')!r} is not {SYNCAR_VERSION}")
        origin, raw_events = obj.get("origin"), obj["events"]
        if not isinstance(origin, str) or not isinstance(raw_events, list):
            raise CodecError("malformed", "syncar batch has no string 'origin' or list 'events'")
        events = []
        for raw in raw_events:
            event, path = _event_fields(raw)
            event_id, time = raw.get("id"), raw.get("time")
            if not isinstance(event_id, str) or not isinstance(time, int | float):
                raise CodecError("malformed", "event has no string 'id' or numeric 'time'")
            events.append(BusEvent(event_id, float(time), event, path, raw.get("data"), raw.get("context")))
        return Batch(origin, events)


class FeathersSyncCodec(Codec):
    name = "feathers-sync"

    def __init__(self, instance_id: str) -> None:
        super().__init__(instance_id)
        # digest -> how many copies of that body we sent and have not yet seen come back
        self._sent: OrderedDict[bytes, int] = OrderedDict()

    def pack(self, events: list[Outgoing]) -> list[bytes]:
        # feathers-sync's JSON.stringify leaves out an undefined context; we do the same for a null one.
        bodies = [orjson.dumps({"event": e.event, "path": e.path, "data": e.data, "context": e.context}
                               if e.context is not None else {"event": e.event, "path": e.path, "data": e.data})
                  for e in events]
        for body in bodies:
            digest = hashlib.blake2b(body, digest_size=16).digest()
            self._sent[digest] = self._sent.pop(digest, 0) + 1
        while len(self._sent) > ECHO_MEMORY:
            self._sent.popitem(last=False)
        return bodies

    def echoed(self, body: bytes) -> int:
        digest = hashlib.blake2b(body, digest_size=16).digest()
        pending = self._sent.get(digest)
        if pending is None:
            return 0
        if pending > 1:
            self._sent[digest] = pending - 1
        else:
            del self._sent[digest]
        return 1

    def unpack(self, body: bytes) -> Batch:
        obj = _loads(body)
        event, path = _event_fields(obj)
        return Batch(None, [BusEvent(secrets.token_hex(8), None, event, path, obj.get("data"), obj.get("context"))])


CODECS: dict[str, type[Codec]] = {c.name: c for c in (SyncarCodec, FeathersSyncCodec)}
