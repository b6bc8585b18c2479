"""The engine's grammar-compiling thread: at the lowest scheduling priority, so on a machine with
few cores the steps keep the cores they need and compiles take what is left."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading

LOWEST_PRIORITY = 19  # nice


def compile_thread(stack_bytes: int) -> concurrent.futures.ThreadPoolExecutor:
    """One low-priority thread, started now with a stack of `stack_bytes`."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forge-grammar",
                                                     initializer=_lower_this_thread)
    previous = threading.stack_size(stack_bytes)  # applies to threads started from here on
    try:
        executor.submit(int).result()  # starts the thread under that stack size
    finally:
        threading.stack_size(previous)
    return executor


def _lower_this_thread() -> None:
    if sys.platform == "linux":  # a thread is a task of its own there; elsewhere this would renice the process
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
