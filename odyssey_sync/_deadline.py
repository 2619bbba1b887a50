"""Timeouts, once: the ``DEFAULT`` sentinel, :func:`check_timeout` and :class:`Deadline`.

Every public blocking call of the package takes ``timeout=``; its meaning is
the same everywhere (STYLE rule 2):

* ``None`` — no overall limit (each network request still has its own
  per-request timeout, so nothing hangs);
* a number ``>= 0`` — seconds, after which the call raises
  :class:`~odyssey_sync.errors.OdysseyTimeoutError`; ``0`` is a
  non-blocking attempt;
* :data:`DEFAULT` (where a call offers it) — the value from the client's
  configuration.

:func:`check_timeout` validates such a value *before* the call acts (issue 10
item 7), and :class:`Deadline` turns it into one budget shared by every step of
the operation.
"""

from __future__ import annotations

import enum
import math
import time
from typing import Any

from .errors import OdysseyTimeoutError

__all__ = ["DEFAULT", "Deadline", "Timeout", "check_timeout", "resolve_timeout"]


class _Default(enum.Enum):
    TOKEN = "the configured default"

    def __repr__(self) -> str:
        return "DEFAULT"


#: "use the timeout from the client's configuration" (the default of ``timeout=``)
DEFAULT = _Default.TOKEN

#: The type of a ``timeout=`` argument that accepts :data:`DEFAULT`.
Timeout = float | None | _Default


def check_timeout(value: Any, name: str = "timeout") -> float | None:
    """Validate a ``timeout``-like argument; return it as seconds or ``None``.

    Non-blocking. ``None`` and ``math.inf`` both mean "no limit" and return
    ``None`` (an infinite float would overflow the waits it reaches).
    :data:`DEFAULT` is *not* accepted here: resolve it first.

    Raises:
        TypeError: not an int, float or ``None`` (``bool`` is refused too),
            naming ``name`` and the type received.
        ValueError: negative or NaN, naming ``name`` and the value.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds or None, not {type(value).__name__}"
        )
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds or None, not {value!r}")
    if math.isinf(value):
        return None
    return float(value)


class Deadline:
    """A point in time by which an operation must finish.

    ``Deadline(None)`` never expires; ``Deadline(0)`` is already due (a
    non-blocking attempt); ``Deadline(5.0)`` expires five seconds from now.
    Pass one object through every step of an operation so that the steps share
    the budget instead of each getting the full timeout.

    Raises:
        TypeError, ValueError: ``timeout`` is not valid (see :func:`check_timeout`).
    """

    __slots__ = ("_expires_at", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = check_timeout(timeout)
        self._expires_at = None if self.timeout is None else time.monotonic() + self.timeout

    def remaining(self) -> float | None:
        """Seconds left (never negative), or ``None`` for no limit."""
        if self._expires_at is None:
            return None
        return max(0.0, self._expires_at - time.monotonic())

    @property
    def expired(self) -> bool:
        return self._expires_at is not None and time.monotonic() >= self._expires_at

    def check(self, what: str) -> None:
        """Raise :class:`OdysseyTimeoutError` naming ``what`` if the deadline passed."""
        if self.expired:
            raise OdysseyTimeoutError(f"{what} timed out after {self.timeout:g} s")

    def clamp(self, seconds: float | None) -> float | None:
        """The smaller of ``seconds`` and what is left (``None`` means unbounded)."""
        left = self.remaining()
        if left is None:
            return seconds
        return left if seconds is None else min(seconds, left)


def resolve_timeout(value: Any, default: float | None, name: str = "timeout") -> float | None:
    """``DEFAULT`` → ``default``; anything else through :func:`check_timeout`."""
    return default if value is DEFAULT else check_timeout(value, name)
