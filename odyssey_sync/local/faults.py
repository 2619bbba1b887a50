"""Fault injection for the local server (tests and chaos drills).

A :class:`Faults` instance lives on every running server (``server.faults``)
and is read by the HTTP handlers and the streamer at the moment they act, so
changing a field takes effect for the next request/message. All counters are
"next K occurrences" and decrement as they fire. Thread-safe: the test thread
sets fields through :meth:`Faults.set` while the server's loop thread reads
them with :meth:`Faults.take` / plain attribute reads.

The same switches are reachable over HTTP for out-of-process servers:
``POST /_admin/faults`` with a JSON object of field → value (and
``DELETE /_admin/faults`` to clear), authenticated with the server's API key
as a bearer token.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Faults"]


@dataclass
class Faults:
    """The server's fault switches (``server.faults``); see the module docstring.

    Set them with :meth:`set` (or ``POST /_admin/faults``), clear them with
    :meth:`clear`. Counters mean "the next K occurrences" and decrement as they fire.
    """

    # --- HTTP API ---------------------------------------------------------
    #: the next K ``POST /sessions/request`` answer 503 (clients queue and poll)
    refuse_sessions: int = 0
    #: the next ``usage_error_count`` ``/sessions/request`` answer 429 with
    #: ``{"detail": usage_error}`` (e.g. ``{"error": "MONTHLY_LIMIT_REACHED", ...}``)
    usage_error: dict[str, Any] | None = None
    usage_error_count: int = 0
    #: the next K ``POST /auth/token`` answer 403 with this detail text
    deny_auth: int = 0
    deny_auth_detail: str = "Access denied"

    # --- signaling --------------------------------------------------------
    #: close the signaling WebSocket abnormally (code 1011) this many seconds
    #: after it opened (applies to sockets opened while it is set)
    drop_signaling_after: float | None = None
    #: send ``{"type": "error", "reason": ...}`` right after the offer
    signaling_error: str | None = None
    #: refuse the WebSocket upgrade with 503 for the next K attempts
    refuse_signaling: int = 0

    # --- streamer ---------------------------------------------------------
    #: never answer start / update / end (the official clients hang on this)
    never_ack: bool = False
    #: delay every reply (stream_started, update_acknowledged, stream_ended), seconds
    ack_delay: float = 0.0
    #: answer the next ``interactive_stream_start`` with interactive_stream_error
    stream_error: str | None = None
    stream_error_message: str = "injected stream error"
    #: keep the connection but stop sending video frames
    stop_video: bool = False

    # --- network (RTP) ----------------------------------------------------
    #: drop outgoing video RTP packets whose sequence index matches
    #: ``index % drop_every == drop_every - 1`` (deterministic loss), 0 = off
    drop_every: int = 0
    #: swap each pair of consecutive video RTP packets every N packets, 0 = off
    reorder_every: int = 0

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def set(self, **changes: Any) -> None:
        """Set several fields atomically; unknown names raise ``TypeError``."""
        names = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def clear(self) -> None:
        """Reset every fault to its default."""
        defaults = Faults()
        with self._lock:
            for f in fields(self):
                if not f.name.startswith("_"):
                    setattr(self, f.name, getattr(defaults, f.name))

    def take(self, counter: str) -> bool:
        """Consume one occurrence of a counter fault; True if it fired."""
        with self._lock:
            remaining = getattr(self, counter)
            if remaining > 0:
                setattr(self, counter, remaining - 1)
                return True
            return False

    def as_dict(self) -> dict[str, Any]:
        """A snapshot of every switch's current value, by name."""
        with self._lock:
            return {
                f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")
            }
