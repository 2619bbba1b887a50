"""Telemetry: fire-and-forget ``POST /telemetry`` events (PROTOCOL §3.11).

Off by default (``Odyssey(enable_telemetry=True)`` turns it on). Each event is
sent on its own short-lived daemon thread named ``odyssey-telemetry``, at most
three at a time; further events are dropped, never queued, so telemetry can
neither slow the caller down nor grow memory. Failures are swallowed (logged
at DEBUG). Events never carry the API key or a token.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

from ._http import HttpClient
from ._version import __version__
from .errors import (
    OdysseyAuthError,
    OdysseyConnectionError,
    OdysseyError,
    OdysseyStreamError,
    OdysseyUsageError,
)
from .types import ConnectionStatus

__all__ = [
    "TELEMETRY_MAX_IN_FLIGHT",
    "TELEMETRY_TIMEOUT",
    "TelemetrySender",
    "error_event",
    "error_text",
]

log = logging.getLogger("odyssey_sync.telemetry")

#: At most this many POSTs in flight; more events are dropped.
TELEMETRY_MAX_IN_FLIGHT = 3
#: Timeout of one telemetry POST, seconds.
TELEMETRY_TIMEOUT = 5.0
#: Longest string value sent in an event.
_VALUE_MAX = 2000
#: Keys never sent, whatever the caller put in the event.
_SECRET_KEYS = frozenset({"api_key", "api_key_prefix", "access_token", "session_token"})


class TelemetrySender:
    """Sends events to ``{base_url}/telemetry`` over ``http``.

    Args:
        http: the owner's HTTP boundary (its connection pool is reused).
        base_url: API base URL without trailing slash.
        enabled: when False, :meth:`send` is a no-op.
        mask: hides secret values in string fields (the owner's
            :meth:`~odyssey_sync._http.HttpClient.mask_secrets`).
    """

    def __init__(
        self, http: HttpClient, base_url: str, *, enabled: bool, mask: Callable[[str], str]
    ) -> None:
        self._http = http
        self._url = f"{base_url}/telemetry"
        self._enabled = enabled
        self._mask = mask
        self._closed = False
        self._slots = threading.BoundedSemaphore(TELEMETRY_MAX_IN_FLIGHT)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def send(self, event: dict[str, Any]) -> None:
        """Send one event, fire-and-forget. Non-blocking; never raises.

        String values are cut to 2000 characters with secrets masked; the
        keys ``api_key``, ``access_token``, ``session_token`` are dropped; the
        SDK version and platform are added.
        """
        if not self._enabled or self._closed or not isinstance(event, dict):
            return
        clean: dict[str, Any] = {}
        for k, v in event.items():
            if k in _SECRET_KEYS:
                continue
            clean[k] = self._mask(v)[:_VALUE_MAX] if isinstance(v, str) else v
        clean.update(
            sdk_version=__version__,
            sdk_platform="python",
            platform_info=f"{platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}",
        )
        if not self._slots.acquire(blocking=False):
            log.debug("telemetry dropped: %d sends in flight", TELEMETRY_MAX_IN_FLIGHT)
            return
        # daemon: a stuck telemetry POST must never delay interpreter exit
        t = threading.Thread(
            target=self._post, args=(clean,), name="odyssey-telemetry", daemon=True
        )
        with self._lock:
            self._threads.add(t)
        t.start()

    def _post(self, event: dict[str, Any]) -> None:
        try:
            self._http.request(
                "POST", self._url, what="telemetry", timeout=TELEMETRY_TIMEOUT,
                json={"events": [event]},
            ).close()
        except Exception as exc:  # fire-and-forget: nothing may escape a sender thread
            log.debug("telemetry not sent: %s", type(exc).__name__)
        finally:
            self._slots.release()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def close(self, timeout: float = 1.0) -> None:
        """Stop sending and join the senders in flight, ``timeout`` seconds in total.

        Blocking for at most ``timeout``; idempotent. A sender still running
        after that is a daemon and dies with the interpreter.
        """
        self._closed = True
        with self._lock:
            senders = list(self._threads)
        end = time.monotonic() + timeout
        for t in senders:
            t.join(max(0.0, end - time.monotonic()))


def error_event(
    err: OdysseyError, session_id: str | None, status: ConnectionStatus | None
) -> dict[str, Any]:
    """The telemetry event describing ``err`` (kind, message, code; never a secret)."""
    if isinstance(err, OdysseyAuthError):
        kind = "auth"
    elif isinstance(err, OdysseyUsageError):
        kind = "usage"
    elif isinstance(err, OdysseyStreamError):
        kind = "stream"
    elif isinstance(err, OdysseyConnectionError):
        kind = "connection"
    else:
        kind = "unknown"
    event: dict[str, Any] = {"error_type": kind, "error_message": error_text(err)}
    if session_id:
        event["session_id"] = session_id
    if isinstance(err, OdysseyUsageError):
        event["error_code"] = err.code
    if status is not None:
        event["connection_status"] = status.value
    return event


def error_text(err: BaseException) -> str:
    """A one-line description of ``err`` for status messages and events."""
    from .errors import OdysseyError, OdysseyUsageError

    if isinstance(err, OdysseyUsageError):
        return f"{err.code}: {err.message}"
    if isinstance(err, OdysseyError):
        return err.message or type(err).__name__
    return str(err) or type(err).__name__
