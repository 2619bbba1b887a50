"""Streamer allocation (PROTOCOL §3.2–3.5): regions, the 503 queue, the signaling token.

:class:`Allocator` belongs to one :class:`~odyssey_sync._rest.ApiClient` and
sends through it (bearer token, error mapping, deadline clamping). It keeps
the measured region latencies for five minutes, so repeated connects do not
ping every region each time (the official client does, §15.19).

Blocking, caller's thread; the region pings run on short-lived daemon
threads named ``odyssey-region-ping``, joined within the ping budget.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from ._deadline import Deadline
from ._http import HttpClient, Response, retry_after, validate_id
from .errors import (
    OdysseyConnectionError,
    OdysseyError,
    OdysseyQueueTimeoutError,
    OdysseyTimeoutError,
)
from .types import StreamerCapabilities

__all__ = ["Allocation", "Allocator"]

log = logging.getLogger("odyssey_sync.api")

#: ``expires_in`` assumed when /sessions/token omits it.
DEFAULT_SESSION_TOKEN_TTL = 600
#: Latency reported for a region that did not answer its ping in time.
UNREACHABLE_MS = 9999
#: How long measured region latencies are reused by :meth:`Allocator.allocate`
#: (the official client pings before every allocation, §15.19).
REGION_CACHE_SECONDS = 300.0
#: Queue poll interval when the server gives no Retry-After (PROTOCOL §2.2).
QUEUE_POLL_SECONDS = 1.0
#: Never wait longer than this between two polls, whatever Retry-After says.
QUEUE_POLL_MAX_SECONDS = 10.0


@dataclass(frozen=True)
class Allocation:
    """A streamer allocated by ``POST /sessions/request`` plus its signaling token."""

    session_id: str
    signaling_url: str
    capabilities: StreamerCapabilities
    session_token: str = field(repr=False)
    token_expires_in: int


class ApiSession(Protocol):
    """What the allocator needs of its :class:`~odyssey_sync._rest.ApiClient`."""

    @property
    def http(self) -> HttpClient: ...

    def require_key(self, doing: str) -> str: ...

    def access_token(self, deadline: Deadline | None = None) -> str: ...

    def wait_closed(self, timeout: float) -> bool: ...

    def request_json(
        self, method: str, path: str, *, what: str, json: Any = None,
        params: dict[str, str] | None = None, auth: bool = True,
        deadline: Deadline | None = None, ids: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

    def request(
        self, method: str, path: str, *, what: str, json: Any = None,
        params: dict[str, str] | None = None, auth: bool = True,
        deadline: Deadline | None = None, ids: dict[str, Any] | None = None,
        passthrough: tuple[int, ...] = (),
    ) -> Response: ...


class Allocator:
    """Allocates streamers for one :class:`~odyssey_sync._rest.ApiClient`."""

    def __init__(self, api: ApiSession) -> None:
        self._api = api
        self._regions_lock = threading.Lock()
        self._regions: tuple[float, dict[str, int]] | None = None

    def region_latencies(
        self, *, budget: float = 1.0, deadline: Deadline | None = None
    ) -> dict[str, int] | None:
        """Measure round trips to every region of ``GET /regions`` (PROTOCOL §3.3).

        Blocking, at most about ``budget`` seconds after /regions answers; the
        pings run concurrently on short-lived daemon threads named
        ``odyssey-region-ping``. A region without a 2xx reply within the budget
        gets ``9999``.

        Returns:
            ``{region_id: milliseconds}``, or ``None`` when /regions failed or
            listed no usable region (allocation then goes without latencies).
            Never raises for server problems (only ``ValueError`` for a missing
            API key).
        """
        self._api.require_key("listing regions")
        try:
            body = self._api.request_json(
                "GET", "/regions", what="listing regions", deadline=deadline
            )
        except (OdysseyError, ValueError) as exc:
            log.debug("regions unavailable: %s", type(exc).__name__)
            return None
        regions = body.get("regions")
        targets: dict[str, str] = {}
        if isinstance(regions, list):
            for r in regions:
                if isinstance(r, dict) and isinstance(r.get("id"), str):
                    url = r.get("ping_url")
                    if isinstance(url, str) and urlsplit(url).scheme in ("http", "https"):
                        targets[r["id"]] = url
        if not targets:
            return None
        if deadline is not None:
            budget = deadline.clamp(budget) or 0.0
        results = dict.fromkeys(targets, UNREACHABLE_MS)
        lock = threading.Lock()

        def ping(region: str, url: str) -> None:
            start = time.monotonic()
            try:
                # A connect/read timeout of `budget` bounds the thread's life;
                # late replies are of no use to this allocation anyway.
                resp = self._api.http.request(
                    "GET", url, what="region ping", timeout=max(budget, 0.05)
                )
                resp.close()
            except OdysseyError:
                return
            if resp.ok:
                with lock:
                    results[region] = int((time.monotonic() - start) * 1000)

        threads = [
            threading.Thread(target=ping, args=(rid, url), name="odyssey-region-ping", daemon=True)
            for rid, url in targets.items()
        ]
        for t in threads:
            t.start()
        end = time.monotonic() + budget
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        with lock:
            measured = dict(results)
        with self._regions_lock:
            self._regions = (time.monotonic(), measured)
        return measured

    def _cached_latencies(self, deadline: Deadline) -> dict[str, int] | None:
        with self._regions_lock:
            cached = self._regions
        if cached is not None and time.monotonic() - cached[0] < REGION_CACHE_SECONDS:
            return dict(cached[1])
        return self.region_latencies(budget=1.0, deadline=deadline)

    def _pause(self, seconds: float, cancelled: threading.Event | None) -> None:
        """Sleep between queue polls; raise at once when the client closes or is cancelled."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._api.wait_closed(min(left, 0.05) if cancelled is not None else left):
                raise OdysseyConnectionError("client closed while waiting for a streamer")
            if cancelled is not None and cancelled.is_set():
                raise OdysseyConnectionError("cancelled while waiting for a streamer")

    def allocate(
        self, *, queue_timeout: float, deadline: Deadline,
        cancelled: threading.Event | None = None,
    ) -> Allocation:
        """Allocate a streamer and fetch its signaling token (PROTOCOL §3.2–3.5).

        Blocking, caller's thread. Steps: bearer token → region latencies
        (measured once, reused for 5 minutes) → ``POST /sessions/request``; on
        ``503`` it polls every second (or after ``Retry-After`` when the server
        sends one) until ``queue_timeout`` seconds have passed since the first
        attempt, refreshing the bearer token when it nears expiry → one
        ``POST /sessions/token``.

        Args:
            queue_timeout: seconds to keep polling while every streamer is
                busy; ``0`` fails on the first 503.
            deadline: overall limit shared by all the steps.
            cancelled: set from another thread to stop queueing at once
                (``disconnect()`` during ``connect()`` or a recovery).

        Raises:
            ValueError: no API key, or a negative ``queue_timeout``.
            OdysseyAuthError: key refused.
            OdysseyUsageError: account limit (429).
            OdysseyQueueTimeoutError: still no streamer after ``queue_timeout``.
            OdysseyTimeoutError: ``deadline`` ran out first.
            OdysseyConnectionError: network failure, 5xx, malformed response,
                or the client was closed (or ``cancelled`` set) while queued.
        """
        if isinstance(queue_timeout, bool) or not isinstance(queue_timeout, (int, float)):
            raise TypeError("queue_timeout must be a number of seconds")
        if queue_timeout < 0:
            raise ValueError(f"queue_timeout must be >= 0, not {queue_timeout}")
        self._api.require_key("allocating a session")
        self._api.access_token(deadline)
        latencies = self._cached_latencies(deadline)
        payload: dict[str, Any] = {"region_latencies": latencies} if latencies else {}
        first_attempt: float | None = None
        while True:
            resp = self._api.request(
                "POST", "/sessions/request", what="allocating a session", json=payload,
                deadline=deadline, passthrough=(503,),
            )
            if resp.status_code != 503:
                body = self._api.http.json_object(resp, "allocating a session")
                break
            resp.close()
            now = time.monotonic()
            first_attempt = now if first_attempt is None else first_attempt
            left = queue_timeout - (now - first_attempt)
            if queue_timeout == 0 or left <= 0:
                raise OdysseyQueueTimeoutError(
                    "no streamers available" if queue_timeout == 0
                    else f"timed out waiting for a streamer ({queue_timeout:g} s)",
                    status=503,
                )
            pause = min(retry_after(resp) or QUEUE_POLL_SECONDS, QUEUE_POLL_MAX_SECONDS, left)
            remaining = deadline.remaining()
            if remaining is not None and remaining <= pause:
                # Sleeping would overrun the caller's deadline: fail now, typed.
                self._api.wait_closed(remaining)
                raise OdysseyTimeoutError(
                    f"allocating a session timed out after {deadline.timeout:g} s "
                    "while waiting for a free streamer"
                )
            log.debug("all streamers busy; polling again in %.2f s", pause)
            self._pause(pause, cancelled)

        session_id = body.get("session_id")
        # "signalling_url" (double l) is the wire name; accept the single-l spelling too.
        sig_url = body.get("signalling_url", body.get("signaling_url"))
        if not isinstance(session_id, str) or not session_id:
            raise OdysseyConnectionError("invalid allocation response: no session_id")
        if not isinstance(sig_url, str) or not sig_url:
            raise OdysseyConnectionError(
                "invalid allocation response: no signalling_url", session_id=session_id
            )
        token, expires_in = self.session_token(session_id, deadline)
        return Allocation(
            session_id=session_id,
            signaling_url=sig_url,
            capabilities=StreamerCapabilities.from_dict(body.get("capabilities")),
            session_token=token,
            token_expires_in=expires_in,
        )

    def session_token(self, session_id: str, deadline: Deadline | None = None) -> tuple[str, int]:
        """``POST /sessions/token``: a signaling JWT for an allocation.

        Blocking, caller's thread.

        Returns:
            ``(token, expires_in_seconds)`` (600 when the server omits it).

        Raises:
            ValueError/TypeError: bad ``session_id`` or no API key.
            OdysseyNotFoundError: unknown or foreign allocation (404).
            OdysseyAuthError, OdysseyConnectionError, OdysseyTimeoutError: as usual.
        """
        validate_id(session_id, "session_id")
        body = self._api.request_json(
            "POST", "/sessions/token", what="fetching the session token",
            json={"session_id": session_id}, deadline=deadline, ids={"session_id": session_id},
        )
        token = body.get("session_token")
        if not isinstance(token, str) or not token:
            raise OdysseyConnectionError(
                "invalid session token response: no session_token", session_id=session_id
            )
        ttl = body.get("expires_in")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            ttl = DEFAULT_SESSION_TOKEN_TTL
        return token, ttl

