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
#: Messages we sent, remembered to recognise them when the broker echoes them back (feathers-sync codec).
ECHO_MEMORY = 65_536


@dataclass(frozen=True, slots=True)
class BusEvent:
    """One event received from the broker."""

    id: str
    time: float | None
    event: str
    path: str
    data: Any
    context: Any


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event published by a local client, on its way to the broker."""

    id: str
    event: str
    path: str
    data: Any
    context: Any
    part: bytes  # the event as JSON: {id, time, event, path, data, context}


@dataclass(frozen=True, slots=True)
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

    def pack(self, events: list[Outgoing]) -> list[bytes]:
        return [self._head + b",".join([e.part for e in events]) + b"]}"]

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

    def unpack(self, body: bytes) -> Batch:
        obj = _loads(body)
        event, path = _event_fields(obj)
        origin = None
        digest = hashlib.blake2b(body, digest_size=16).digest()
        pending = self._sent.get(digest)
        if pending is not None:
            origin = self.instance_id
            if pending > 1:
                self._sent[digest] = pending - 1
            else:
                del self._sent[digest]
        return Batch(origin, [BusEvent(secrets.token_hex(8), None, event, path, obj.get("data"), obj.get("context"))])


CODECS: dict[str, type[Codec]] = {c.name: c for c in (SyncarCodec, FeathersSyncCodec)}
