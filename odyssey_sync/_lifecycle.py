"""One registry of live clients and spectators, closed at interpreter exit.

A client or spectator the user forgets to close still holds a peer
connection, and aiortc's decoder threads are *not* daemons: they stop only
when their peer connection closes. An ordinary ``atexit`` hook runs after
the interpreter has started joining non-daemon threads, so it would come too
late and exit would hang. ``threading._register_atexit`` runs before that
join; it is private, so plain ``atexit`` is the fallback where it is missing.

Both facades register here on creation and unregister on close; at exit each
live object's ``close_at_exit()`` runs with short, bounded waits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Protocol

__all__ = ["ClosesAtExit", "register", "unregister"]

log = logging.getLogger("odyssey_sync.lifecycle")

#: the wait each forgotten object gets at exit (seconds)
EXIT_TIMEOUT = 3.0


class ClosesAtExit(Protocol):
    def close_at_exit(self, timeout: float) -> None:
        """Release everything within ``timeout`` seconds; never raise."""


_live: weakref.WeakSet[ClosesAtExit] = weakref.WeakSet()
_lock = threading.Lock()


def register(obj: ClosesAtExit) -> None:
    """Close ``obj`` at interpreter exit unless :func:`unregister` came first."""
    with _lock:
        _live.add(obj)


def unregister(obj: ClosesAtExit) -> None:
    """``obj`` was closed by its owner; idempotent."""
    with _lock:
        _live.discard(obj)


def _close_forgotten() -> None:
    with _lock:
        forgotten = list(_live)
    for obj in forgotten:
        with contextlib.suppress(Exception):
            log.debug("closing a forgotten %s at exit", type(obj).__name__)
            obj.close_at_exit(EXIT_TIMEOUT)


try:
    threading._register_atexit(_close_forgotten)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover - other interpreters
    import atexit

    atexit.register(_close_forgotten)
