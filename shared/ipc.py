"""ZeroMQ sockets and msgspec codecs. Only process mains use these.

Every socket gets bounded queues and a bounded message size (a peer cannot make us buffer
without limit), no linger on close, and ROUTERs raise on unknown peers instead of silently
dropping (ROUTER_MANDATORY). Each inbox decodes one tagged union with one pre-built decoder.
"""

from __future__ import annotations

from typing import Any

import msgspec
import zmq
import zmq.asyncio

MAX_MESSAGE_BYTES = 64 * 2**20
HIGH_WATER_MARK = 100_000

_encoder = msgspec.msgpack.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def make_socket(context: zmq.Context, kind: int, address: str, bind: bool, identity: bytes | None = None
                ) -> zmq.Socket:
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    if kind == zmq.ROUTER:
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if identity is not None:
        socket.setsockopt(zmq.IDENTITY, identity)
    if bind:
        socket.bind(address)
    else:
        socket.connect(address)
    return socket


def identity_of(client_id: int) -> bytes:
    return client_id.to_bytes(4, "little")


def client_id_of(identity: bytes) -> int:
    return int.from_bytes(identity, "little")


class Inbox:
    """Decodes what one socket receives into one union of message types."""

    def __init__(self, socket: zmq.Socket, message_type: Any) -> None:
        self.socket = socket
        self.decoder = msgspec.msgpack.Decoder(message_type)
        self.is_router = socket.type == zmq.ROUTER

    def decode(self, frames: list[bytes]) -> tuple[bytes | None, Any]:
        """(sender identity or None, message); raises msgspec errors on malformed input."""
        if self.is_router:
            if len(frames) != 2:
                raise msgspec.DecodeError(f"expected [identity, payload], got {len(frames)} frames")
            return frames[0], self.decoder.decode(frames[1])
        if len(frames) != 1:
            raise msgspec.DecodeError(f"expected one frame, got {len(frames)}")
        return None, self.decoder.decode(frames[0])

    def recv(self, flags: int = 0) -> tuple[bytes | None, Any]:
        return self.decode(self.socket.recv_multipart(flags))

    async def recv_async(self) -> tuple[bytes | None, Any]:
        return self.decode(await self.socket.recv_multipart())


def send(socket: zmq.Socket, message: msgspec.Struct, identity: bytes | None = None) -> Any:
    """Send one message (to `identity` on a ROUTER). Returns what the socket returns (a future on
    an asyncio socket)."""
    payload = encode(message)
    if identity is None:
        return socket.send(payload)
    return socket.send_multipart([identity, payload])
