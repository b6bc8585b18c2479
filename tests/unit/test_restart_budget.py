"""forge serve restarts a child that exits, at most RESTART_LIMIT times within RESTART_WINDOW_S."""

from __future__ import annotations

import collections
import time

from frontend import launch


def test_a_child_is_restarted_until_the_budget_is_spent_then_not_again():
    child = launch.Child("test child", ["keys", "--help"])  # exits at once, like a crashing engine
    restarts = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        child.process.wait(30)
        if not child.revive():
            break
        restarts += 1
    assert restarts == launch.RESTART_LIMIT
    assert len(child.restarts) == launch.RESTART_LIMIT and child.process.poll() is not None
    long_ago = time.monotonic() - launch.RESTART_WINDOW_S - 1
    child.restarts = collections.deque([long_ago] * launch.RESTART_LIMIT)
    assert child.revive()  # restarts older than the window no longer count
    child.process.wait(30)
