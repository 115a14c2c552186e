"""AMQP 0-9-1 frames as bytes: their layout, the frames every message has decoded without pamqp's generic decoder,
whole frames found in what arrived, messages marshalled into frames (`FrameMarshal`) and deliveries assembled from
them (`Deliveries`). `backends.amqp_internals` reads and writes them on aiormq's connections."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, Protocol

import aiormq
import pamqp.frame
from aiormq.abc import DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

FRAME = struct.Struct(">BHI")  # type, channel, size; then the payload and FRAME_END
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
METHOD, HEADER, BODY = 1, 2, 3
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"  # pamqp.frame.marshal(Heartbeat(), 0)
BASIC_DELIVER, BASIC_ACK = b"\x00\x3c\x00\x3c", b"\x00\x3c\x00\x50"
SHORT_HEADER = struct.Struct(">HHQ")  # class, weight, body size
ACK = struct.Struct(">QB")  # Basic.Ack's delivery tag and bits (multiple)


class LazyContentHeader(ContentHeader):
    """A content header whose properties are decoded when first read: syncar reads only the body size."""

    def __init__(self, payload: bytes) -> None:
        self.class_id, self.weight, self.body_size = SHORT_HEADER.unpack_from(payload)
        self._payload: bytes | None = payload
        self._properties: Basic.Properties | None = None

    @property
    def properties(self) -> Basic.Properties:
        if self._properties is None:
            properties, payload = Basic.Properties(), self._payload or b"\0\0"
            offset, flags = self._get_flags(payload[12:])
            properties.unmarshal(flags, payload[12 + offset :])
            self._properties = properties
        return self._properties

    @properties.setter
    def properties(self, value: Basic.Properties) -> None:
        self._properties, self._payload = value, None  # the payload no longer says what the properties are


def short_string(payload: bytes, offset: int) -> tuple[str, int]:
    end = offset + 1 + payload[offset]
    return payload[offset + 1 : end].decode(), end


def basic_deliver(payload: bytes) -> Basic.Deliver:
    """A Basic.Deliver from its method frame's payload, as pamqp decodes it, without its generic decoder."""
    consumer_tag, offset = short_string(payload, 4)
    (delivery_tag,) = struct.unpack_from(">Q", payload, offset)
    redelivered = bool(payload[offset + 8] & 1)
    exchange, offset = short_string(payload, offset + 9)
    routing_key, _ = short_string(payload, offset)
    deliver = Basic.Deliver.__new__(Basic.Deliver)  # without validate(): a regex match per message on the exchange
    deliver.consumer_tag, deliver.delivery_tag, deliver.redelivered = consumer_tag, delivery_tag, redelivered
    deliver.exchange, deliver.routing_key = exchange, routing_key
    return deliver


def whole(data: bytes, offset: int, kind: int, channel: int) -> int:
    """Where the frame at `offset` ends (past its FRAME_END) if it is of `kind` on `channel` and all of it is in
    `data`; else 0."""
    if offset + FRAME.size > len(data):
        return 0
    its_kind, its_channel, size = FRAME.unpack_from(data, offset)
    end: int = offset + FRAME.size + size + 1
    if its_kind != kind or its_channel != channel or end > len(data) or data[end - 1] != FRAME_END:
        return 0
    return end


def unmarshal(kind: int, frame: bytes, payload: bytes) -> Any:
    """What pamqp.frame.unmarshal(frame)[2] is, cheaper for the frames every message has."""
    if kind == BODY:
        return ContentBody(payload)
    if kind == HEADER:
        return LazyContentHeader(payload)
    if kind == METHOD:
        method = payload[:4]
        if method == b"\x00\x3c\x00\x3c":  # Basic.Deliver
            return basic_deliver(payload)
        if method == b"\x00\x3c\x00\x50":  # Basic.Ack, a publisher confirm: one per publish at a low rate
            tag, bits = ACK.unpack_from(payload, 4)
            return Basic.Ack(tag, bool(bits & 1))  # pamqp's decoder took 12 µs, this 1.6
    return pamqp.frame.unmarshal(frame)[2]


class Taker(Protocol):
    def take(self, data: bytes, offset: int, channel: int) -> int:
        """Where the frames taken from `offset` on end: `offset` if none were (they go to aiormq's reader)."""


class FrameMarshal:
    """Messages as frames on the wire, the bytes pamqp would marshal (one exchange, routing key and set of
    properties): the method frame and the header's properties are marshalled once, not per message (pamqp took 40 to
    90 µs for the two, as much as the rest of a one-message batch's publish)."""

    def __init__(self, channel: aiormq.Channel, exchange: str, properties: Basic.Properties, routing_key: str) -> None:
        self.source, self.routing_key = properties, routing_key
        self.channel, self.max_body = channel.number, channel.max_content_size
        self.method = pamqp.frame.marshal(Basic.Publish(exchange=exchange, routing_key=routing_key), channel.number)
        self.properties = properties.marshal()

    def message(self, frames: list[bytes], body: bytes) -> None:
        size = SHORT_HEADER.size + len(self.properties)
        header = FRAME.pack(HEADER, self.channel, size) + SHORT_HEADER.pack(Basic.frame_id, 0, len(body))
        frames += (self.method, header, self.properties, FRAME_END_BYTE)
        for start in range(0, len(body), self.max_body):  # none for an empty body, as aiormq's _split_body
            chunk = body[start : start + self.max_body]
            frames += (FRAME.pack(BODY, self.channel, len(chunk)), chunk, FRAME_END_BYTE)


class Deliveries:
    """Takes the place of a consuming channel's `frames.put`: assembles each Basic.Deliver with its content header
    and body frames as the connection's reader hands them over, and passes the message on; every other frame goes to
    the channel's reader as before."""

    def __init__(self, channel: aiormq.Channel, deliver: Callable[[DeliveredMessage], None]) -> None:
        self._channel, self.deliver, self._queue = channel, deliver, channel.frames
        self._delivery: Basic.Deliver | None = None
        self._header: ContentHeader | None = None
        self._parts: list[bytes] = []
        self._size = 0
        channel.frames.put = self.put  # type: ignore[method-assign]

    def take(self, data: bytes, offset: int, channel: int) -> int:
        """A whole delivery (Basic.Deliver, its content header and body frames) as it arrives, unless one is half
        assembled from what aiormq's reader handed over."""
        method_end = whole(data, offset, METHOD, channel)
        start = offset + FRAME.size
        if self._delivery is not None or not method_end or data[start : start + 4] != BASIC_DELIVER:
            return offset
        header_end = whole(data, method_end, HEADER, channel)
        if not header_end:
            return offset
        try:
            header = LazyContentHeader(data[method_end + FRAME.size : header_end - 1])
            delivery = basic_deliver(data[start : method_end - 1])
        except (struct.error, IndexError, UnicodeDecodeError):  # aiormq's reader says what is wrong with it
            return offset
        parts: list[bytes] = []
        size, end = 0, header_end
        while size < header.body_size:
            body_end = whole(data, end, BODY, channel)
            if not body_end:
                return offset
            parts.append(data[end + FRAME.size : body_end - 1])
            size, end = size + body_end - end - FRAME.size - 1, body_end
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self.deliver(DeliveredMessage(delivery=delivery, header=header, body=body, channel=self._channel))
        return end

    async def put(self, item: tuple[int, Any]) -> None:
        frame = item[1]
        if self._delivery is None:
            if isinstance(frame, Basic.Deliver):
                self._delivery = frame
            else:
                await asyncio.Queue.put(self._queue, item)  # the method this one stands in for
            return
        if self._header is None:
            if not isinstance(frame, ContentHeader):
                raise ValueError(f"Unexpected frame {frame!r} instead of ContentHeader", frame)
            self._header, self._parts, self._size = frame, [], 0
        elif isinstance(frame, ContentBody):
            self._parts.append(frame.value or b"")
            self._size += len(frame.value or b"")
        else:
            raise ValueError(f"Unexpected frame {frame!r}", frame)
        if self._size >= self._header.body_size:
            delivery, header = self._delivery, self._header
            self._delivery = self._header = None
            body = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self.deliver(DeliveredMessage(delivery=delivery, header=header, body=body, channel=self._channel))
