"""Shared fixtures: thread-leak check after every test, small local servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

# Threads that belong to the interpreter or to libraries we do not own and
# that may legitimately outlive a test (pytest-timeout's watchdog, etc.).
_FOREIGN_PREFIXES = ("pytest_timeout", "ThreadPoolExecutor-0", "tqdm_monitor")


def _our_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.name.startswith(_FOREIGN_PREFIXES)
    ]


@pytest.fixture(autouse=True)
def no_thread_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a thread it started running (after a 5 s grace)."""
    if request.node.get_closest_marker("allow_thread_leak"):
        yield
        return
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    leaked = _our_threads(before)
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = _our_threads(before)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_thread_leak: the test (or a module fixture) owns long-lived threads"
    )
