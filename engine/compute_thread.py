"""The one thread that runs this process's torch compute.

libgomp gives every thread that enters a parallel region its own OpenMP team. Once two threads
have teams on a 2-core machine, it manages more threads than cores, throttles its spin-waits,
and every parallel region slows: measured 22 -> 36 ms per decoded token. So model loading and
every engine step go through this single thread, whichever thread asked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_thread_ident: list[int] = []


def _remember_thread() -> None:
    _thread_ident.append(threading.get_ident())


_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="forge-compute",
                                                  initializer=_remember_thread)


def run(fn: Callable[..., T], *args: object) -> T:
    """Run `fn(*args)` on the compute thread and wait for it (directly if already there)."""
    if _thread_ident and threading.get_ident() == _thread_ident[0]:
        return fn(*args)
    return _executor.submit(fn, *args).result()


async def run_async(fn: Callable[..., T], *args: object) -> T:
    """Await `fn(*args)` on the compute thread without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_executor, fn, *args)
