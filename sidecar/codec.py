"""What events look like on the broker.

`syncar`: one broker message carries a batch of events from one origin,
`{"v": 1, "origin": ..., "run": ..., "events": [{id, time, event, path, data, context}, ...], "seq": ...}`;
an event published with W3C trace context carries its `traceparent` and `tracestate` too (left out otherwise).
`run` names this run of the origin's daemon and `seq` is the number, within the run, of the batch's first event
on the bus (its events are contiguous), so that a receiver can tell how many it missed (sidecar/gaps.py). Batches
of daemons older than these two fields are still taken, only not followed. `origin` and `run` are at most
MAX_ID_LENGTH characters (`BusName`): a receiver keeps them (its gap tracker, its origins' JSON), and a longer one,
which no daemon sends (an instance id is at most 200), is malformed.
Each event is serialised once, when it is published (`Outgoing.part`); the
same bytes go into the batch and, spliced, into the frame written to local
clients.

`feathers-sync`: one message per event, `{event, path, data, context}`,
exactly what feathers-sync 3.x sends, so both can share a broker; or, with a
binary serializer (BSON, MessagePack), the bytes it made, passed through. It carries
no origin, so our own messages are recognised by remembering what we sent.

Decoding is msgspec's: it checks that the whole message is JSON but keeps
`data` and `context` as the bytes they came in (`msgspec.Raw`), so an event
is never turned into Python objects and back. A message it refuses is
explained by a plain parse that tells foreign from malformed.
"""

from __future__ import annotations

import binascii
import itertools
import secrets
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec
import orjson

from sidecar import MAX_ID_LENGTH
from sidecar.errors import CodecError

SYNCAR_VERSION = 1
#: A name that comes from the bus and is kept (an origin, a run; an announcement's strings): bounded in length, so that
#: strangers' messages, each a different 1 MiB origin, cannot fill the tables that are bounded in entries only.
BusName = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]
#: Every event part starts `{"id":"<id>","time":`; an unescaped `","time":` cannot occur inside the id string.
_ID_START, _ID_END = len(b'{"id":"'), b'","time":'
#: Messages we sent, remembered to recognise them when the broker echoes them back (feathers-sync codec).
ECHO_MEMORY = 65_536
NULL = msgspec.Raw(b"null")
T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_scratch = bytearray()
_LINE_BREAKS_TO_SPACES = bytes.maketrans(b"\n\r", b"  ")


def encode(value: Any) -> bytes:
    """`value` as JSON, in bytes of exactly its size: what msgspec returns can hold up to twice that, which the
    replay buffer, full of them, would pay for in memory."""
    _encoder.encode_into(value, _scratch)
    return bytes(_scratch)


def encode_spliced(head: bytes, value: Any) -> bytes:
    """`head` (which ends in a comma), then the fields of `value`'s JSON object without its opening brace, then a
    line feed: the JSON of an object spliced into a frame as it is encoded, in one copy. Made from `encode(value)`,
    the same frame took three more (the bytes of exactly its size, its slice without the brace, the join)."""
    scratch = _scratch
    # Over the first bytes, not `scratch[:] = head`: that shrank the scratch (realloc) to the head, and the encoding
    # grew it back (realloc and copy), for every frame.
    scratch[: len(head)] = head
    brace = len(head) - 1
    _encoder.encode_into(value, scratch, brace)  # its `{` over the head's comma
    scratch[brace] = 0x2C
    scratch.append(0x0A)
    return bytes(scratch)


class Event(msgspec.Struct, gc=False, omit_defaults=True):
    """One event as it travels: `data` and `context` stay the JSON they arrived as.

    `traceparent` and `tracestate`, when set, are the W3C trace context its app published it in: carried by the
    `syncar` codec, not by feathers-sync's fixed format. `bin`, when set, is the whole event as an app's binary
    serializer made it (BSON, MessagePack), in base64: opaque to syncar, and `data` and `context` are null. Each is
    left out of the JSON when unset; `bin` comes last.
    """

    id: str
    time: float | None  # when its origin published it; feathers-sync does not say
    event: str  # "" for a binary event from a feathers-sync app: only its serializer can read it
    path: str
    # A factory, not NULL: omit_defaults leaves out a field that *is* its default, and null data must stay in frames.
    data: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    context: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    traceparent: str | None = None  # W3C trace context of the publish, left out when unset (syncar codec only)
    tracestate: str | None = None
    bin: str | None = None


class Outgoing(msgspec.Struct, gc=False):
    """One event published by a local client, on its way to the broker."""

    event: Event
    part: bytes  # encode(event): the bytes that go into a batch and, spliced, into local frames
    queued_at: float  # time.monotonic() when it entered the outbox
    cost: int = 0  # the memory it holds in the outbox (outbox.entry_cost), set as it enters


class Batch(msgspec.Struct, gc=False):
    origin: str | None  # None: the format does not say (feathers-sync)
    events: list[Event]
    run: str | None = None  # the run of the origin's daemon; None: not said (feathers-sync, older syncar)
    seq: int | None = None  # the bus sequence number, within `run`, of the first event


class _SyncarBatch(msgspec.Struct, gc=False):
    v: int
    origin: BusName
    events: list[Event]
    run: BusName | None = None
    seq: Annotated[int, msgspec.Meta(ge=1)] | None = None


class _FeathersSyncBody(msgspec.Struct, gc=False):
    event: str
    path: str
    data: msgspec.Raw = NULL
    context: msgspec.Raw = NULL


class _FeathersSyncOut(msgspec.Struct, gc=False, omit_defaults=True):
    # feathers-sync's JSON.stringify leaves out an undefined context; we do the same for a null one. msgspec omits
    # a field that *is* its default, so `pack` passes NULL itself for any null.
    event: str
    path: str
    data: msgspec.Raw
    context: msgspec.Raw = NULL


def decode_json(decoder: msgspec.json.Decoder[T], body: bytes) -> T | None:
    """`body` decoded, or None if it is not valid JSON of the decoder's shape.

    The raw parts it keeps are safe to splice into frames: valid UTF-8 (msgspec does not check inside them), and
    free of raw line feeds and carriage returns, which in valid JSON can only be whitespace between tokens and are
    made spaces (a CR ends a line for Node's readline and Python's text-mode readers). JSON nested deeper than
    msgspec goes (about 1,000 levels) is refused too: it raises RecursionError for it.
    """
    try:
        if not body.isascii():
            body.decode()
        value = decoder.decode(body)
        if b"\n" in body or b"\r" in body:
            return decoder.decode(body.translate(_LINE_BREAKS_TO_SPACES))
        return value
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None


class Codec(ABC):
    name: ClassVar[str]
    #: Bytes a broker message adds to the parts of its events (and a comma between two), at most: the outbox keeps
    #: a batch's parts within the broker's message size minus this.
    overhead: int = 0
    #: Each event travels with its origin and id, so a receiver drops a copy of a message sent twice.
    carries_ids: bool
    #: `pack` reads nothing of an event's `data` and `context` (it packs `Outgoing.part`): the relay lets go of them,
    #: views into the app's read, before the event waits in the outbox.
    packs_parts: bool = False

    def __init__(self, instance_id: str, *, broker_echoes: bool = True) -> None:
        self.instance_id = instance_id
        # Whether the broker brings our own messages back: if it does not, there is nothing to remember them for.
        self.broker_echoes = broker_echoes

    @abstractmethod
    def pack(self, events: list[Outgoing], seq: int = 1) -> list[bytes]:
        """Turn events, in order, into broker message bodies; `seq` is the bus sequence number of the first (the
        number of events of this run the broker accepted before it, plus one)."""

    def refresh(self, bodies: list[bytes]) -> list[bytes]:
        """Bodies `pack` made, made fit to send again now (for a retry: a signature carries a time)."""
        return bodies

    def echoed(self, body: bytes) -> int:
        """How many events `body` carries if this daemon sent it (told without decoding it), else 0."""
        return 0

    @abstractmethod
    def unpack(self, body: bytes, accepted_at: float | None = None) -> Batch:
        """Decode a broker message; `accepted_at` is the broker's time of it, where the backend knows it.

        Raises:
            CodecError: malformed or foreign; `reason` is a short metric label.
        """


# -- why a message was refused: the slow path, only for messages msgspec did not take ---------------------------


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CodecError("malformed", "message is not JSON") from None


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def _check_event(obj: Any) -> None:
    if not isinstance(obj, dict):
        raise CodecError("malformed", "event is not a JSON object")
    event, path = obj.get("event"), obj.get("path")
    if not isinstance(event, str) or not isinstance(path, str) or not event or not path:
        raise CodecError("malformed", "event has no string 'event' and 'path'")


def _explain_syncar(body: bytes) -> CodecError:
    obj = _loads(body)
    if not isinstance(obj, dict) or "events" not in obj:
        return CodecError("foreign", "message is not a syncar batch")
    if obj.get("v") != SYNCAR_VERSION:
        return CodecError("foreign", f"syncar batch version {obj.get('v')!r} is not {SYNCAR_VERSION}")
    if not isinstance(obj.get("origin"), str) or not isinstance(obj["events"], list):
        return CodecError("malformed", "syncar batch has no string 'origin' or list 'events'")
    seq = obj.get("seq")
    if not isinstance(obj.get("run", ""), str | None) or not (seq is None or (type(seq) is int and seq >= 1)):
        return CodecError(
            "malformed", "syncar batch has a 'run' that is not a string or a 'seq' that is not a positive integer"
        )
    if len(obj["origin"]) > MAX_ID_LENGTH or len(obj.get("run") or "") > MAX_ID_LENGTH:
        return CodecError("malformed", f"syncar batch has an 'origin' or 'run' over {MAX_ID_LENGTH} characters")
    for raw in obj["events"]:
        _check_event(raw)
    return CodecError("malformed", "event has no string 'id' or numeric 'time'")


def _explain_feathers_sync(body: bytes) -> CodecError:
    _check_event(_loads(body))
    return CodecError("malformed", "message has a field of the wrong type")


# -- the codecs ------------------------------------------------------------------------------------------------


class SyncarCodec(Codec):
    name = "syncar"
    carries_ids = True
    packs_parts = True
    _decoder = msgspec.json.Decoder(_SyncarBatch)

    def __init__(self, instance_id: str, *, broker_echoes: bool = True) -> None:
        super().__init__(instance_id, broker_echoes=broker_echoes)
        self.run = secrets.token_hex(8)
        # The head is the same for every batch of this run (`echoed` needs no decoding); the seq goes in the tail.
        self._head = b'{"v":%d,"origin":%s,"run":"%s","events":[' % (
            SYNCAR_VERSION,
            orjson.dumps(instance_id),
            self.run.encode(),
        )
        self.overhead = len(self._head) + len(b'],"seq":%d}' % 2**64)
        # the JSON of a sent batch's first event id -> the number of events in that batch
        self._sent: OrderedDict[bytes, int] = OrderedDict()

    def pack(self, events: list[Outgoing], seq: int = 1) -> list[bytes]:
        if self.broker_echoes:
            first = events[0].part
            self._sent[first[_ID_START : first.find(_ID_END, _ID_START)]] = len(events)
            if len(self._sent) > ECHO_MEMORY:
                self._sent.popitem(last=False)
        # One copy of the batch: the head and the tail are joined to the first and last events, not to the whole.
        parts = [e.part for e in events]
        parts[0] = self._head + parts[0]
        parts[-1] += b'],"seq":%d}' % seq
        return [b",".join(parts)]

    def echoed(self, body: bytes) -> int:
        # Our batches all start with the same bytes, origin included: no need to decode them to drop them.
        if not body.startswith(self._head):
            return 0
        start = len(self._head) + _ID_START
        return self._sent.pop(body[start : body.find(_ID_END, start)], 1)

    def unpack(self, body: bytes, accepted_at: float | None = None) -> Batch:
        batch = decode_json(self._decoder, body)
        if batch is None or batch.v != SYNCAR_VERSION:
            raise _explain_syncar(body)
        for event in batch.events:
            if not event.event or not event.path or event.time is None:
                raise _explain_syncar(body)
        return Batch(batch.origin, batch.events, batch.run, batch.seq)


class FeathersSyncCodec(Codec):
    """feathers-sync's fixed format has no room for a run or a seq (what a receiver misses is not seen), nor for
    trace context (it stays with the apps of the publishing daemon)."""

    name = "feathers-sync"
    carries_ids = False
    _decoder = msgspec.json.Decoder(_FeathersSyncBody)

    def __init__(self, instance_id: str, *, broker_echoes: bool = True) -> None:
        super().__init__(instance_id, broker_echoes=broker_echoes)
        # hash of a body -> how many copies of it we sent and have not yet seen come back. A 64-bit hash with the
        # process's random seed: a foreign body mistaken for ours is about one chance in 10^14 per message.
        self._sent: OrderedDict[int, int] = OrderedDict()
        # The format has no id: each event received gets one, unique within this run.
        self._ids = itertools.count(1)
        self._id_prefix = f"fs-{secrets.token_hex(4)}-"

    def pack(self, events: list[Outgoing], seq: int = 1) -> list[bytes]:
        # A binary event goes as the bytes its serializer made, as feathers-sync publishes a Buffer.
        bodies = [
            binascii.a2b_base64(e.bin)
            if e.bin is not None
            else encode(_FeathersSyncOut(e.event, e.path, e.data, NULL if e.context == NULL else e.context))
            for e in (o.event for o in events)
        ]
        if not self.broker_echoes:
            # Remembered, a body would never come back to be forgotten, and an identical one from a feathers-sync
            # app would be taken for ours.
            return bodies
        sent = self._sent
        for body in bodies:
            digest = hash(body)
            sent[digest] = sent.pop(digest, 0) + 1
        while len(sent) > ECHO_MEMORY:
            sent.popitem(last=False)
        return bodies

    def echoed(self, body: bytes) -> int:
        digest = hash(body)
        pending = self._sent.get(digest)
        if pending is None:
            return 0
        if pending > 1:
            self._sent[digest] = pending - 1
        else:
            del self._sent[digest]
        return 1

    def unpack(self, body: bytes, accepted_at: float | None = None) -> Batch:
        event_id = f"{self._id_prefix}{next(self._ids)}"
        message = decode_json(self._decoder, body)
        if message is None or not message.event or not message.path:
            if (not body.lstrip(b" \t\r\n").startswith(b"{") or b"\0" in body) and not _is_json(body):
                # Not JSON, nor the start of an object (which has no NUL byte; BSON ends with one): what a binary
                # serializer (BSON, MessagePack) made. Only the apps can read it.
                binary = binascii.b2a_base64(body, newline=False).decode()
                return Batch(None, [Event(event_id, None, "", "", NULL, NULL, bin=binary)])
            raise _explain_feathers_sync(body)
        return Batch(None, [Event(event_id, None, message.event, message.path, message.data, message.context)])


CODECS: dict[str, type[Codec]] = {c.name: c for c in (SyncarCodec, FeathersSyncCodec)}
