"""Timeouts, once: the :class:`Deadline` shared by the steps of one blocking
operation, the ``DEFAULT`` sentinel and the checking of ``timeout=`` arguments."""

from __future__ import annotations

import enum
import time
from typing import Any

from .errors import OdysseyTimeoutError

__all__ = ["DEFAULT", "Deadline", "Timeout", "check_timeout", "resolve_timeout"]


class Deadline:
    """A point in time by which an operation must finish.

    ``Deadline(None)`` never expires; ``Deadline(0)`` is already due (a
    non-blocking attempt); ``Deadline(5.0)`` expires five seconds from now.
    Pass one object through every step of an operation so that the steps share
    the budget instead of each getting the full timeout.
    """

    __slots__ = ("_expires_at", "timeout")

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        self.timeout = timeout
        self._expires_at = None if timeout is None else time.monotonic() + timeout

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


class _Default(enum.Enum):
    TOKEN = "the configured default"

    def __repr__(self) -> str:
        return "DEFAULT"


#: "use the timeout from the configuration" (the default of ``timeout=`` arguments)
DEFAULT = _Default.TOKEN

#: what a ``timeout=`` argument may be
Timeout = float | None | _Default


def check_timeout(value: Any, name: str = "timeout") -> float | None:
    """A validated timeout: ``None`` or a number of seconds ≥ 0.

    Raises:
        TypeError: not a number (bools are refused too).
        ValueError: negative or NaN.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if value != value or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def resolve_timeout(value: Any, default: float | None, name: str = "timeout") -> float | None:
    """``DEFAULT`` → ``default``; anything else through :func:`check_timeout`."""
    return default if value is DEFAULT else check_timeout(value, name)
