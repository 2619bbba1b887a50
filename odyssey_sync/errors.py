"""The one error tree of odyssey_sync.

Every exception this package raises on purpose is an :class:`OdysseyError`.
Each class also subclasses the builtin a Python caller would catch for that
kind of failure, so ``except TimeoutError`` / ``except ConnectionError`` /
``except ValueError`` / ``except PermissionError`` work without importing
anything from here, and code written against the official client (which
raises builtin ``ValueError`` / ``ConnectionError``) keeps working::

    OdysseyError(Exception)
    ├── OdysseyAuthError(ValueError)            bad/expired API key, 401/403/422 on auth,
    │                                           refused spectator token
    ├── OdysseyConnectionError(ConnectionError) allocation, signaling, WebRTC, HTTP 5xx,
    │   │                                       unreachable server (names the URL)
    │   ├── OdysseyQueueTimeoutError(TimeoutError)
    │   │                                       no streamer freed up within queue_timeout
    │   └── SignalingHandshakeError             the signaling WebSocket upgrade failed
    ├── OdysseyRequestError(ValueError)         a 4xx the caller can fix (carries .status)
    │   ├── OdysseyNotFoundError(LookupError)   404: unknown stream / recording / job
    │   └── OdysseyPermissionError(PermissionError)
    │                                           403: someone else's job, missing privilege
    ├── OdysseyStreamError(RuntimeError)        stream calls: wrong state, stream errors,
    │                                           a failed or cancelled simulation
    ├── OdysseyTimeoutError(TimeoutError)       a blocking call ran out of time
    └── OdysseyUsageError(PermissionError)      account limits (HTTP 429 / stream errors)
        ├── MonthlyLimitReachedError
        ├── ConcurrentLimitReachedError
        ├── StreamDurationExceededError
        ├── AccountSuspendedError
        └── RateLimitError

Invalid *arguments* (wrong types, empty prompts, oversized images, malformed
scripts, ids such as ``".."``, values beyond a documented limit) raise the
builtin ``TypeError`` / ``ValueError`` before any network call, as Python APIs
do.

No exception ever carries an API key or a token: messages are built from
status codes, server ``detail`` texts (with secrets masked), URLs without
their query string, and ids only.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AccountSuspendedError",
    "ConcurrentLimitReachedError",
    "MonthlyLimitReachedError",
    "OdysseyAuthError",
    "OdysseyConnectionError",
    "OdysseyError",
    "OdysseyNotFoundError",
    "OdysseyPermissionError",
    "OdysseyQueueTimeoutError",
    "OdysseyRequestError",
    "OdysseyStreamError",
    "OdysseyTimeoutError",
    "OdysseyUsageError",
    "RateLimitError",
    "SignalingHandshakeError",
    "StreamDurationExceededError",
    "stream_error_from_reason",
    "usage_error_from_body",
]

PORTAL_DASHBOARD_URL = "https://portal.odyssey.systems/dashboard"


class OdysseyError(Exception):
    """Base of every error raised by odyssey_sync.

    Attributes:
        message: human-readable text (also ``str(err)`` for most classes).
        status: HTTP status code when the error came from an HTTP response.
        session_id: the allocation the error happened in, when known.
        stream_id: the stream the error happened in, when known.
    """

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        session_id: str | None = None,
        stream_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.session_id = session_id
        self.stream_id = stream_id

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={value!r}"
            for name, value in (
                ("status", self.status),
                ("session_id", self.session_id),
                ("stream_id", self.stream_id),
            )
            if value is not None
        )
        return f"{type(self).__name__}({self.message!r}{extra})"


class OdysseyAuthError(OdysseyError, ValueError):
    """The API key (or bearer/spectator token) was refused."""


class OdysseyConnectionError(OdysseyError, ConnectionError):
    """Connecting failed or the connection broke: allocation, signaling, WebRTC, 5xx."""


class OdysseyQueueTimeoutError(OdysseyConnectionError, TimeoutError):
    """Every streamer stayed busy (HTTP 503) for longer than ``queue_timeout``."""


class SignalingHandshakeError(OdysseyConnectionError):
    """The signaling WebSocket upgrade failed (network error or an HTTP status; see ``status``)."""


class OdysseyRequestError(OdysseyError, ValueError):
    """The server refused a request the caller can fix (HTTP 4xx); see ``status``."""


class OdysseyNotFoundError(OdysseyRequestError, LookupError):
    """HTTP 404: the stream, recording, job or broadcast does not exist (for you)."""


class OdysseyPermissionError(OdysseyRequestError, PermissionError):
    """HTTP 403: the object belongs to another account, or a privilege is missing."""


class OdysseyStreamError(OdysseyError, RuntimeError):
    """A stream call failed: wrong connection state, or the streamer reported an error.

    Attributes:
        reason: the ``interactive_stream_error`` reason (``None`` for state errors).
    """

    def __init__(self, message: str = "", *, reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reason = reason


class OdysseyTimeoutError(OdysseyError, TimeoutError):
    """A blocking call did not complete within its timeout."""


class OdysseyUsageError(OdysseyError, PermissionError):
    """An account limit: HTTP 429 usage bodies and quota-type stream errors.

    Attributes:
        code: machine-readable code (``MONTHLY_LIMIT_REACHED``, ...).
        action: what the user can do about it.
        action_url: where to do it, when known.
        details: class-specific numbers (``{}`` when absent).
    """

    title = "Usage limit"

    def __init__(
        self,
        code: str,
        message: str,
        action: str = "",
        action_url: str | None = None,
        details: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.code = code
        self.action = action
        self.action_url = action_url
        self.details: dict[str, Any] = dict(details or {})

    def _detail_lines(self) -> list[str]:
        return []

    def __str__(self) -> str:
        lines = [f"Odyssey · {self.title} ({self.code})", self.message]
        lines += self._detail_lines()
        if self.action:
            lines.append(f"→ {self.action}")
        if self.action_url:
            lines.append(f"  {self.action_url}")
        width = max(len(line) for line in lines)
        rule = "─" * (width + 2)
        body = "\n".join(f"│ {line.ljust(width)} │" for line in lines)
        return f"┌{rule}┐\n{body}\n└{rule}┘"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class MonthlyLimitReachedError(OdysseyUsageError):
    """The account's monthly streaming hours are used up."""

    title = "Monthly limit reached"

    def _detail_lines(self) -> list[str]:
        d = self.details
        lines = []
        if "used_hours" in d or "limit_hours" in d:
            lines.append(f"Used {d.get('used_hours', '?')} of {d.get('limit_hours', '?')} hours")
        if d.get("reset_date"):
            lines.append(f"Resets on {d['reset_date']}")
        return lines


class ConcurrentLimitReachedError(OdysseyUsageError):
    """Too many sessions are open at once for this account."""

    title = "Concurrent session limit reached"

    def _detail_lines(self) -> list[str]:
        d = self.details
        if "active_count" in d or "limit" in d:
            return [f"{d.get('active_count', '?')} of {d.get('limit', '?')} sessions active"]
        return []


class StreamDurationExceededError(OdysseyUsageError):
    """The stream ran longer than the account's maximum stream duration."""

    title = "Stream duration exceeded"

    def _detail_lines(self) -> list[str]:
        return [f"Maximum duration {self.details.get('max_duration_seconds', 300)} s"]


class AccountSuspendedError(OdysseyUsageError):
    """The account is suspended."""

    title = "Account suspended"

    def _detail_lines(self) -> list[str]:
        reason = self.details.get("reason")
        return [f"Reason: {reason}"] if reason else []


class RateLimitError(OdysseyUsageError):
    """Too many requests; retry after ``details['retry_after_seconds']``."""

    title = "Rate limited"

    def _detail_lines(self) -> list[str]:
        after = self.details.get("retry_after_seconds")
        return [f"Retry after {after} s"] if after is not None else []


_USAGE_CLASSES: dict[str, type[OdysseyUsageError]] = {
    "MONTHLY_LIMIT_REACHED": MonthlyLimitReachedError,
    "CONCURRENT_LIMIT_REACHED": ConcurrentLimitReachedError,
    "STREAM_DURATION_EXCEEDED": StreamDurationExceededError,
    "ACCOUNT_SUSPENDED": AccountSuspendedError,
    "RATE_LIMITED": RateLimitError,
}


def usage_error_from_body(body: Any, *, status: int | None = 429) -> OdysseyError:
    """Map a 429 body (``{"detail": {...}}`` or the bare object) to an exception.

    Recognised bodies (``message`` and ``action`` present) give the class of
    PROTOCOL §3.10; anything else gives a plain :class:`OdysseyUsageError` with
    code ``UNKNOWN`` whose message is the ``detail`` string when there is one.
    """
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict) and isinstance(detail.get("message"), str) and "action" in detail:
        code = detail.get("error") or detail.get("code") or "UNKNOWN"
        cls = _USAGE_CLASSES.get(str(code), OdysseyUsageError)
        details = detail.get("details")
        return cls(
            str(code),
            detail["message"],
            str(detail.get("action") or ""),
            detail.get("action_url") if isinstance(detail.get("action_url"), str) else None,
            details if isinstance(details, dict) else None,
            status=status,
        )
    text = detail if isinstance(detail, str) and detail else "Request limit exceeded"
    return OdysseyUsageError("UNKNOWN", text, "", status=status)


def stream_error_from_reason(
    reason: str, message: str, *, stream_id: str | None = None, session_id: str | None = None
) -> OdysseyError:
    """Map an ``interactive_stream_error`` (PROTOCOL §6.4) to an exception."""
    ids: dict[str, Any] = {"stream_id": stream_id, "session_id": session_id}
    if reason == "quota_exceeded":
        return MonthlyLimitReachedError(
            "MONTHLY_LIMIT_REACHED", message or reason, "Upgrade your plan",
            PORTAL_DASHBOARD_URL, **ids,
        )
    if reason == "concurrent_limit_exceeded":
        return ConcurrentLimitReachedError(
            "CONCURRENT_LIMIT_EXCEEDED", message or reason, "Close other sessions",
            PORTAL_DASHBOARD_URL, **ids,
        )
    if reason == "session_timeout":
        return StreamDurationExceededError(
            "STREAM_DURATION_EXCEEDED", message or reason, "Start a new stream",
            PORTAL_DASHBOARD_URL, **ids,
        )
    text = f"{reason}: {message}" if message else reason
    return OdysseyStreamError(text, reason=reason, **ids)
