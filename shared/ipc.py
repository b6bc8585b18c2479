"""ZeroMQ sockets and msgspec codecs. Only process mains use these.

Every socket gets bounded queues and a bounded message size (a peer cannot make us buffer
without limit), no linger on close, and ROUTERs raise on unknown peers instead of silently
dropping (ROUTER_MANDATORY). Each inbox decodes one tagged union with one pre-built decoder.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from shared.handshake_log import log_failed_handshakes

MAX_MESSAGE_BYTES = 64 * 2**20
HIGH_WATER_MARK = 100_000

_encoder = msgspec.msgpack.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


class BindError(OSError):
    """An address this process must serve on is taken or invalid."""


def make_socket(context: zmq.Context, kind: int, address: str, bind: bool, identity: bytes | None = None,
                curve_dir: str | None = None) -> zmq.Socket:
    """With `curve_dir` (see `create_keys`), the socket is CURVE-encrypted: binders as servers,
    connectors as clients that must know the server's public key."""
    socket = context.socket(kind)
    if curve_dir is not None:
        _secure(socket, curve_dir, as_server=bind)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    if kind == zmq.ROUTER:
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if identity is not None:
        socket.setsockopt(zmq.IDENTITY, identity)
    if bind:
        try:
            socket.bind(address)
        except zmq.ZMQError as exc:
            socket.close()
            raise BindError(f"cannot bind {address}: {os.strerror(exc.errno)}") from exc
        if curve_dir is not None:
            log_failed_handshakes(socket)
    else:
        socket.connect(address)
    return socket


def identity_of(client_id: int, instance: int = 0) -> bytes:
    """A peer's ZeroMQ identity: its client id, then the instance of that client's process. Two
    processes that claim one id are then both admitted by ZeroMQ (which would silently drop the
    second) and the binder can refuse one aloud (messages.Refused)."""
    return client_id.to_bytes(4, "little") + instance.to_bytes(4, "little")


def new_identity(client_id: int) -> bytes:
    """The identity of this process as client `client_id`: a fresh instance each start."""
    return identity_of(client_id, secrets.randbits(32))


def client_id_of(identity: bytes) -> int:
    return int.from_bytes(identity[:4], "little")


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


# --- CURVE: encryption and client authentication for sockets that cross hosts ---------------------
_SERVER, _CLIENT = "server", "client"


def create_keys(directory: str) -> None:
    """Write a server and a client keypair (server.key, server.key_secret, client.key,
    client.key_secret). Copy the directory to every host of the stack; keep it private."""
    import os

    import zmq.auth

    os.makedirs(directory, mode=0o700, exist_ok=True)
    existing = [f"{name}{suffix}" for name in (_SERVER, _CLIENT) for suffix in (".key", ".key_secret")
                if os.path.exists(os.path.join(directory, f"{name}{suffix}"))]
    if existing:  # keys in use elsewhere would stop matching: never replace them silently
        raise ValueError(f"{directory} already holds CURVE keys ({', '.join(existing)}); remove them first "
                         "to make new ones")
    for name in (_SERVER, _CLIENT):
        zmq.auth.create_certificates(directory, name)


def _secure(socket: zmq.Socket, directory: str, as_server: bool) -> None:
    import os

    import zmq.auth

    def load(name: str, secret: bool) -> tuple[bytes, bytes | None]:
        path = os.path.join(directory, f"{name}.key_secret" if secret else f"{name}.key")
        if not os.path.isfile(path):
            raise ValueError(f"CURVE key file {path} is missing (create the keys with `forge keys {directory}`)")
        return zmq.auth.load_certificate(path)

    if as_server:
        public, secret = load(_SERVER, secret=True)
        socket.curve_server = True
    else:
        public, secret = load(_CLIENT, secret=True)
        socket.curve_serverkey = load(_SERVER, secret=False)[0]
    socket.curve_publickey, socket.curve_secretkey = public, secret


def start_authenticator(context: zmq.Context, directory: str) -> object:
    """Accept only CURVE clients whose public key is in `directory`. Keep the returned
    authenticator alive (and `.stop()` it) for as long as the context serves."""
    if isinstance(context, zmq.asyncio.Context):
        from zmq.auth.asyncio import AsyncioAuthenticator as Authenticator
    else:
        from zmq.auth.thread import ThreadAuthenticator as Authenticator
    authenticator = Authenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=directory)
    return authenticator
