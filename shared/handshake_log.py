"""Failed CURVE handshakes on a binding socket, said in the log.

ZeroMQ drops a peer whose handshake fails without a word to the application: a worker started
without keys, or with another stack's keys, would wait forever and the binder would never say
why. A socket monitor sees each failure; a daemon thread names its likely cause, at most once per
cause every REPEAT_S (a refused peer reconnects ten times a second).
"""

from __future__ import annotations

import logging
import threading
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

REPEAT_S = 10.0
_CAUSES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "its client key is not among the keys in --curve-dir",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "it does not speak CURVE with this server's key (started without "
                                         "--curve-dir, or with another stack's keys)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake broke off (no --curve-dir on its side, or other keys)",
}


logger = logging.getLogger("forge.sockets")


def log_failed_handshakes(socket: zmq.Socket) -> None:
    """Log each failed handshake on `socket` (bound, a CURVE server). The watcher ends when the
    socket's context is terminated."""
    address = f"inproc://forge-handshakes-{id(socket):x}"
    socket.monitor(address, sum(_CAUSES))  # the events are bit flags
    context = zmq.Context.shadow(socket.context.underlying)
    threading.Thread(target=_watch, args=(context, address), daemon=True,
                     name="forge-handshake-log").start()


def _watch(context: zmq.Context, address: str) -> None:
    monitor = context.socket(zmq.PAIR)
    monitor.connect(address)
    said_s: dict[int, float] = {}
    failed_since: dict[int, int] = {}
    try:
        while True:
            event = recv_monitor_message(monitor)
            kind = event["event"]
            if kind not in _CAUSES:
                continue
            failed_since[kind] = failed_since.get(kind, 0) + 1
            now = time.monotonic()
            if now - said_s.get(kind, -REPEAT_S) >= REPEAT_S:
                logger.warning("refused a peer on %s (%d times since last said): the CURVE handshake failed; %s",
                               event["endpoint"].decode(errors="replace"), failed_since[kind], _CAUSES[kind])
                said_s[kind], failed_since[kind] = now, 0
    except zmq.ContextTerminated:
        pass
    finally:
        monitor.close(linger=0)
