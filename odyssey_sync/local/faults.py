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

Every value is checked by :meth:`Faults.set` (in-process and over HTTP alike):
counters are ints in ``0..1_000_000``, durations finite numbers in
``0..86_400`` seconds (``drop_signaling_after`` also ``None``), flags bools,
texts strings of at most 1,000 characters. A bad value raises
:class:`FaultValueError` (a ``ValueError``; a 422 over HTTP) naming the field
and the allowed range, and nothing is changed.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["FaultValueError", "Faults"]

#: largest value of a counter fault ("the next K ...")
MAX_COUNT = 1_000_000
#: largest duration fault, seconds
MAX_SECONDS = 86_400.0
#: longest text fault (reasons, messages)
MAX_TEXT = 1_000


class FaultValueError(ValueError):
    """A fault switch was given a value outside its type or range; ``name`` is the switch."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"fault {name!r}: {message}")
        self.name = name


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
    #: after it opened, or after it is set for sockets already open (mid-stream)
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
    #: the next K acknowledgements (stream_started, update_acknowledged or
    #: stream_ended replies, whichever come next) are silently never sent; the
    #: request itself takes effect (a "lost acknowledgement")
    drop_acks: int = 0
    #: answer the next ``interactive_stream_start`` with interactive_stream_error
    stream_error: str | None = None
    stream_error_message: str = "injected stream error"
    #: keep the connection but stop sending video frames (takes effect mid-stream,
    #: within one frame interval; clearing it resumes the video)
    stop_video: bool = False

    # --- network (RTP) ----------------------------------------------------
    #: drop outgoing video RTP packets whose sequence index matches
    #: ``index % drop_every == drop_every - 1`` (deterministic loss), 0 = off
    drop_every: int = 0
    #: swap each pair of consecutive video RTP packets every N packets, 0 = off
    reorder_every: int = 0

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def set(self, **changes: Any) -> None:
        """Set several fields atomically (all or none).

        Unknown names raise ``TypeError``; a value of the wrong type or out of
        range raises :class:`FaultValueError` (see the module docstring).
        """
        checked = self.validate(changes)
        with self._lock:
            for name, value in checked.items():
                setattr(self, name, value)

    @classmethod
    def validate(cls, changes: dict[str, Any]) -> dict[str, Any]:
        """``changes`` checked against each field's type and range; returns them normalised.

        Non-blocking, pure. Raises ``TypeError`` for unknown names and
        :class:`FaultValueError` for bad values.
        """
        kinds = {f.name: str(f.type) for f in fields(cls) if not f.name.startswith("_")}
        unknown = set(changes) - set(kinds)
        if unknown:
            raise TypeError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        return {name: _check_value(name, kinds[name], value) for name, value in changes.items()}

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


def _check_value(name: str, kind: str, value: Any) -> Any:
    """One fault value checked against its annotation (``kind``, a string)."""
    if value is None:
        if "None" in kind:
            return None
        raise FaultValueError(name, "must not be null")
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise FaultValueError(name, "must be true or false")
        return value
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise FaultValueError(name, f"must be an integer in 0..{MAX_COUNT}")
        return value
    if kind.startswith("float"):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or not 0 <= value <= MAX_SECONDS):
            raise FaultValueError(name, f"must be a number of seconds in 0..{MAX_SECONDS:g}")
        return float(value)
    if kind.startswith("str"):
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise FaultValueError(name, f"must be a string of at most {MAX_TEXT} characters")
        return value
    if kind.startswith("dict"):
        if not isinstance(value, dict) or len(repr(value)) > 10 * MAX_TEXT:
            raise FaultValueError(name, "must be a small JSON object")
        return value
    raise FaultValueError(name, f"has an unsupported type {kind}")  # pragma: no cover
