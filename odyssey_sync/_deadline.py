"""One deadline shared by the steps of one blocking operation."""

from __future__ import annotations

import time

from .errors import OdysseyTimeoutError

__all__ = ["Deadline"]


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
