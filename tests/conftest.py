"""Shared fixtures: thread-leak check after every test, small local servers.

The whole session runs with ``ODYSSEY_SYNC_DATA_DIR`` pointing at a temporary
directory (removed at the end), so no test, example or CLI subprocess ever
writes to the user's default data directory of the local server.
"""

from __future__ import annotations

import os
import shutil
import tempfile
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


_DATA_DIR_ENV = "ODYSSEY_SYNC_DATA_DIR"  # odyssey_sync.local.DATA_DIR_ENV
_saved_data_dir: list[str | None] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_thread_leak: the test (or a module fixture) owns long-lived threads"
    )
    _saved_data_dir.append(os.environ.get(_DATA_DIR_ENV))
    os.environ[_DATA_DIR_ENV] = tempfile.mkdtemp(prefix="odyssey-sync-tests-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.get(_DATA_DIR_ENV, ""), ignore_errors=True)
    previous = _saved_data_dir.pop() if _saved_data_dir else None
    if previous is None:
        os.environ.pop(_DATA_DIR_ENV, None)
    else:
        os.environ[_DATA_DIR_ENV] = previous
