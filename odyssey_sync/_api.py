"""The REST half of the SDK: every HTTP call to the Odyssey API (PROTOCOL §3, §4.1).

:class:`ApiClient` is the only module that imports :mod:`requests`. It owns a
``requests.Session`` (connection pooling, keep-alive) and translates every
transport failure and every HTTP status into the :mod:`odyssey_sync.errors`
tree at one boundary, :meth:`ApiClient._call`, by **status code** — never by
searching message text (PROTOCOL §15.17)::

    401                → OdysseyAuthError   (an authenticated call refreshes its
                                             bearer token and retries once first)
    403                → OdysseyPermissionError (OdysseyAuthError on /auth/token)
    404                → OdysseyNotFoundError
    400, 422, other 4xx→ OdysseyRequestError with the server's ``detail``
    429                → usage_error_from_body(...)   (simulations too, §15.21)
    503 /sessions/request → queue (poll, honour Retry-After)
    other 5xx, network, malformed bodies → OdysseyConnectionError
    timeouts           → OdysseyTimeoutError

All calls block on the caller's thread (no event loop). Every request carries
an explicit timeout: the client's per-request ``timeout``, clamped to the
:class:`~odyssey_sync._deadline.Deadline` of the operation when one is given,
so the steps of one operation (auth, regions, allocation, token) share one
budget. The API key and tokens never appear in logs, reprs or exception text.

Thread-safety: one ``ApiClient`` may be used from several threads at once;
the bearer-token cache is guarded by a lock (one refresh in flight at a time).
"""

from __future__ import annotations

import email.utils
import functools
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import requests

from ._deadline import Deadline
from ._version import __version__
from .errors import (
    OdysseyAuthError,
    OdysseyConnectionError,
    OdysseyError,
    OdysseyNotFoundError,
    OdysseyPermissionError,
    OdysseyQueueTimeoutError,
    OdysseyRequestError,
    OdysseyTimeoutError,
    usage_error_from_body,
)
from .types import (
    Recording,
    SimulationJobDetail,
    SimulationJobInfo,
    SimulationJobsList,
    SimulationJobStatus,
    StreamerCapabilities,
    StreamRecordingsList,
)

__all__ = ["DEFAULT_API_URL", "Allocation", "ApiClient", "progress_bar", "validate_id"]

log = logging.getLogger("odyssey_sync.api")

DEFAULT_API_URL = "https://api.odyssey.ml"

#: Refresh the bearer token this long before it expires (PROTOCOL §2.2).
TOKEN_REFRESH_MARGIN = 60.0
#: ``expires_in`` assumed when /auth/token omits it.
DEFAULT_TOKEN_TTL = 3600
#: ``expires_in`` assumed when /sessions/token omits it.
DEFAULT_SESSION_TOKEN_TTL = 600
#: Latency reported for a region that did not answer its ping in time.
UNREACHABLE_MS = 9999
#: How long measured region latencies are reused by :meth:`ApiClient.allocate`
#: (the official client pings before every allocation, §15.19).
REGION_CACHE_SECONDS = 300.0
#: Queue poll interval when the server gives no Retry-After (PROTOCOL §2.2).
QUEUE_POLL_SECONDS = 1.0
#: Never wait longer than this between two polls, whatever Retry-After says.
QUEUE_POLL_MAX_SECONDS = 10.0
#: Telemetry: at most this many POSTs in flight; more events are dropped.
TELEMETRY_MAX_IN_FLIGHT = 3
TELEMETRY_TIMEOUT = 5.0
#: Longest server ``detail`` text copied into an exception message.
_DETAIL_MAX = 500

T = TypeVar("T")


@dataclass(frozen=True)
class Allocation:
    """A streamer allocated by ``POST /sessions/request`` plus its signaling token."""

    session_id: str
    signaling_url: str
    capabilities: StreamerCapabilities
    session_token: str = field(repr=False)
    token_expires_in: int


def validate_id(value: Any, what: str) -> str:
    """Check a path id locally: a non-empty ``str`` without control characters.

    Raises:
        TypeError: not a str.
        ValueError: empty, or contains whitespace-only / control characters.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what} must not contain control characters")
    return value


def _check_page(limit: Any, offset: Any, *, max_limit: int | None) -> None:
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int or None, not {type(limit).__name__}")
        if limit < 1 or (max_limit is not None and limit > max_limit):
            bound = f"between 1 and {max_limit}" if max_limit else ">= 1"
            raise ValueError(f"limit must be {bound}, not {limit}")
    if offset is not None:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int or None, not {type(offset).__name__}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")


class ApiClient:
    """Blocking client of the Odyssey HTTP API.

    Args:
        api_url: base URL, ``http(s)://host[:port][/prefix]``; a trailing ``/``
            is ignored (the official client would produce ``//`` paths).
        api_key: the account's API key, or ``None``/``""`` for a client that
            only connects with ready-made credentials; calls that need it raise
            ``ValueError`` before any request.
        timeout: per-request timeout in seconds (connect and each read), > 0.
        telemetry: send :meth:`telemetry` events; off by default.

    Raises:
        TypeError: wrong argument types.
        ValueError: malformed ``api_url`` or non-positive ``timeout``.

    Use as a context manager or call :meth:`close`; closing interrupts a
    caller waiting in the allocation queue.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str | None,
        *,
        timeout: float = 10.0,
        telemetry: bool = False,
    ) -> None:
        if not isinstance(api_url, str):
            raise TypeError(f"api_url must be a str, not {type(api_url).__name__}")
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"api_url must be an http:// or https:// URL, not {api_url!r}")
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str or None, not {type(api_key).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._base = api_url.rstrip("/")
        self._api_key = api_key or None
        self._timeout = float(timeout)
        self._telemetry_enabled = bool(telemetry)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"odyssey-sync/{__version__}"
        self._closed = threading.Event()
        # Token cache: (token, monotonic time after which it must be refreshed).
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._regions_lock = threading.Lock()
        self._regions: tuple[float, dict[str, int]] | None = None
        self._telemetry_slots = threading.BoundedSemaphore(TELEMETRY_MAX_IN_FLIGHT)
        self._telemetry_threads: set[threading.Thread] = set()
        self._telemetry_lock = threading.Lock()

    # ------------------------------------------------------------------ basics

    @property
    def api_url(self) -> str:
        """The base URL, without trailing slash."""
        return self._base

    @property
    def timeout(self) -> float:
        """The per-request timeout in seconds."""
        return self._timeout

    @property
    def has_api_key(self) -> bool:
        """Whether an API key was given (calls to the account API need one)."""
        return self._api_key is not None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        state = "closed" if self.closed else "open"
        return f"<ApiClient {self._base} api_key={key} {state}>"

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the HTTP connections; idempotent, non-blocking apart from
        joining telemetry senders (at most about 1 s in total).

        A thread waiting in :meth:`allocate`'s queue or in :meth:`wait_closed`
        wakes up at once; later calls raise :class:`OdysseyConnectionError`.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        with self._telemetry_lock:
            senders = list(self._telemetry_threads)
        end = time.monotonic() + 1.0
        for t in senders:
            t.join(max(0.0, end - time.monotonic()))
        self._session.close()

    def wait_closed(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds or until :meth:`close`; True if closed.

        Pollers (queue, :func:`wait_for_simulation`) sleep with this so that
        closing the client interrupts them.
        """
        return self._closed.wait(max(0.0, timeout))

    # ------------------------------------------------------------------ auth

    def access_token(self, deadline: Deadline | None = None) -> str:
        """The bearer token for the API key, from ``POST /auth/token``.

        Blocking, caller's thread. Cached until 60 s before it expires; the
        first caller refreshes while concurrent callers wait for that result.

        Raises:
            ValueError: no API key was configured (before any request).
            OdysseyAuthError: the key was refused (401/403/422).
            OdysseyConnectionError: network failure, 5xx, malformed response.
            OdysseyTimeoutError: the request or ``deadline`` ran out.
        """
        key = self._require_key("authenticating")
        remaining = None if deadline is None else deadline.remaining()
        if not self._token_lock.acquire(timeout=-1 if remaining is None else remaining):
            raise OdysseyTimeoutError("waiting for a bearer token timed out")
        try:
            if self._token is not None and time.monotonic() < self._token_refresh_at:
                return self._token
            self._token = None
            body = self._call(
                "POST", "/auth/token", what="authentication", json={"api_key": key},
                auth=False, deadline=deadline,
            )
            token = body.get("access_token")
            if not isinstance(token, str) or not token:
                raise OdysseyConnectionError("invalid auth response: no access_token")
            ttl = body.get("expires_in")
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
                ttl = DEFAULT_TOKEN_TTL
            self._token = token
            self._token_refresh_at = time.monotonic() + float(ttl) - TOKEN_REFRESH_MARGIN
            return token
        finally:
            self._token_lock.release()

    def _invalidate_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:
                self._token = None

    # ------------------------------------------------------------------ sessions

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
        self._require_key("listing regions")
        try:
            body = self._call("GET", "/regions", what="listing regions", deadline=deadline)
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
                resp = self._session.get(url, timeout=max(budget, 0.05))
                resp.close()
            except requests.RequestException:
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

    def allocate(self, *, queue_timeout: float, deadline: Deadline) -> Allocation:
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

        Raises:
            ValueError: no API key, or a negative ``queue_timeout``.
            OdysseyAuthError: key refused.
            OdysseyUsageError: account limit (429).
            OdysseyQueueTimeoutError: still no streamer after ``queue_timeout``.
            OdysseyTimeoutError: ``deadline`` ran out first.
            OdysseyConnectionError: network failure, 5xx, malformed response,
                or the client was closed while queued.
        """
        if isinstance(queue_timeout, bool) or not isinstance(queue_timeout, (int, float)):
            raise TypeError("queue_timeout must be a number of seconds")
        if queue_timeout < 0:
            raise ValueError(f"queue_timeout must be >= 0, not {queue_timeout}")
        self._require_key("allocating a session")
        self.access_token(deadline)
        latencies = self._cached_latencies(deadline)
        payload: dict[str, Any] = {"region_latencies": latencies} if latencies else {}
        first_attempt: float | None = None
        while True:
            resp = self._call_raw(
                "POST", "/sessions/request", what="allocating a session", json=payload,
                deadline=deadline, passthrough=(503,),
            )
            if resp.status_code != 503:
                body = self._json_object(resp, "allocating a session")
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
            pause = min(_retry_after(resp) or QUEUE_POLL_SECONDS, QUEUE_POLL_MAX_SECONDS, left)
            remaining = deadline.remaining()
            if remaining is not None and remaining <= pause:
                # Sleeping would overrun the caller's deadline: fail now, typed.
                self.wait_closed(remaining)
                raise OdysseyTimeoutError(
                    f"allocating a session timed out after {deadline.timeout:g} s "
                    "while waiting for a free streamer"
                )
            log.debug("all streamers busy; polling again in %.2f s", pause)
            if self.wait_closed(pause):
                raise OdysseyConnectionError("client closed while waiting for a streamer")

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
        body = self._call(
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

    def fetch_ice_servers(self, signaling_url: str, *, timeout: float) -> list[dict[str, Any]]:
        """``GET {signaling_url as http(s)}/config``: the ICE servers (PROTOCOL §4.1).

        Blocking for at most ``timeout`` seconds, caller's thread. Unlike the
        official client it keeps TURN ``username``/``credential`` and never
        substitutes a public STUN server (PROTOCOL §15.8–9).

        Returns:
            ``[{"urls": [...], "username"?: str, "credential"?: str}, ...]``;
            ``[]`` on any failure (non-2xx, bad JSON, network, timeout) — host
            candidates still work. Never raises.
        """
        if not isinstance(signaling_url, str):
            return []
        url = signaling_url
        if url.startswith("wss://"):
            url = "https://" + url[len("wss://"):]
        elif url.startswith("ws://"):
            url = "http://" + url[len("ws://"):]
        elif not url.startswith(("http://", "https://")):
            url = "http://" + url
        try:
            resp = self._session.get(url.rstrip("/") + "/config", timeout=max(timeout, 0.01))
            resp.raise_for_status()
            body = resp.json()
        except (requests.RequestException, ValueError) as exc:
            log.debug("ICE config unavailable (%s); using host candidates only", type(exc).__name__)
            return []
        entries = body.get("iceServers") if isinstance(body, dict) else None
        servers: list[dict[str, Any]] = []
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            urls = entry.get("urls")
            url_list = [urls] if isinstance(urls, str) else urls
            if not isinstance(url_list, list):
                continue
            url_list = [u for u in url_list if isinstance(u, str) and u]
            if not url_list:
                continue
            server: dict[str, Any] = {"urls": url_list}
            for k in ("username", "credential"):
                if isinstance(entry.get(k), str):
                    server[k] = entry[k]
            servers.append(server)
        return servers

    # ------------------------------------------------------------------ recordings

    def get_recording(self, stream_id: str, *, deadline: Deadline | None = None) -> Recording:
        """``GET /recordings/{stream_id}`` → :class:`Recording` (blocking).

        Raises:
            TypeError/ValueError: bad ``stream_id`` or no API key (no request made).
            OdysseyNotFoundError: unknown stream (404).
            OdysseyAuthError / OdysseyPermissionError / OdysseyConnectionError /
            OdysseyTimeoutError: see the module docstring.
        """
        validate_id(stream_id, "stream_id")
        body = self._call(
            "GET", f"/recordings/{quote(stream_id, safe='')}", what="fetching the recording",
            deadline=deadline, ids={"stream_id": stream_id},
        )
        return self._parse(Recording.from_dict, body, "recording", stream_id=stream_id)

    def list_stream_recordings(
        self, limit: int | None = None, offset: int | None = None, *,
        deadline: Deadline | None = None,
    ) -> StreamRecordingsList:
        """``GET /stream-recordings`` → one page, newest first (blocking).

        ``limit`` (≥ 1) and ``offset`` (≥ 0) are sent only when given.

        Raises:
            TypeError/ValueError: bad paging values or no API key (no request made).
            OdysseyError subclasses as in the module docstring.
        """
        _check_page(limit, offset, max_limit=None)
        params = {k: str(v) for k, v in (("limit", limit), ("offset", offset)) if v is not None}
        body = self._call(
            "GET", "/stream-recordings", what="listing recordings", params=params,
            deadline=deadline,
        )
        return self._parse(StreamRecordingsList.from_dict, body, "recordings list")

    def download(
        self,
        url: str,
        path: Path,
        *,
        progress: bool,
        chunk: int = 1 << 16,
        deadline: Deadline | None = None,
        description: str | None = None,
    ) -> Path:
        """Stream a presigned URL into ``path`` (blocking, caller's thread).

        The body goes to a temporary file next to ``path`` that is renamed over
        ``path`` only when the whole body arrived (a failed download leaves no
        partial file behind). No ``Authorization`` header is sent: the URL is
        presigned and may point at another host. Each read times out after the
        per-request timeout; ``deadline`` bounds the whole transfer.

        Args:
            progress: show a tqdm progress bar on stderr.

        Returns:
            ``path``.

        Raises:
            ValueError: ``url`` is not http(s), or the parent directory is missing.
            OdysseyNotFoundError / OdysseyPermissionError: 404 / 403 (e.g. an
                expired presigned URL).
            OdysseyConnectionError: network failure, 5xx, truncated body.
            OdysseyTimeoutError: a read or ``deadline`` ran out.
        """
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("download URL must be http:// or https://")
        path = Path(path)
        if not path.parent.is_dir():
            raise ValueError(f"directory does not exist: {path.parent}")
        self._ensure_open()
        timeout = self._timeout if deadline is None else deadline.clamp(self._timeout)
        if deadline is not None:
            deadline.check("download")
        try:
            resp = self._session.get(url, stream=True, timeout=timeout)
        except requests.Timeout as exc:
            raise OdysseyTimeoutError("download timed out waiting for the server") from exc
        except requests.RequestException as exc:
            raise OdysseyConnectionError(f"download failed: {_describe(exc)}") from exc
        tmp: Path | None = None
        try:
            if not resp.ok:
                self._raise_for_status(resp, "download", auth_endpoint=False, ids={})
            total = _int_header(resp, "Content-Length")
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".part", dir=path.parent
            )
            tmp = Path(tmp_name)
            received = 0
            with os.fdopen(fd, "wb") as out, progress_bar(
                total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=description or path.name, disable=not progress, file=sys.stderr,
                leave=False,
            ) as bar:
                for piece in resp.iter_content(chunk_size=chunk):
                    if deadline is not None and deadline.expired:
                        raise OdysseyTimeoutError(
                            f"download timed out after {deadline.timeout:g} s "
                            f"({received} bytes received)"
                        )
                    out.write(piece)
                    received += len(piece)
                    bar.update(len(piece))
            if total is not None and received != total:
                raise OdysseyConnectionError(
                    f"download truncated: {received} of {total} bytes received"
                )
            os.replace(tmp, path)
            tmp = None
            return path
        except requests.Timeout as exc:
            raise OdysseyTimeoutError("download stalled: read timed out") from exc
        except requests.RequestException as exc:
            raise OdysseyConnectionError(f"download failed: {_describe(exc)}") from exc
        finally:
            resp.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    # ------------------------------------------------------------------ simulations

    def submit_simulation(
        self, body: dict[str, Any], *, deadline: Deadline | None = None
    ) -> SimulationJobDetail:
        """``POST /simulation-jobs`` with a body from ``build_simulation_body`` (blocking).

        Raises:
            OdysseyPermissionError: e.g. ``bypass_vlm_expansion`` without the privilege.
            OdysseyRequestError: the server refused the script (400/422, with its detail).
            OdysseyUsageError: account limits (429).
            OdysseyError subclasses as in the module docstring.
        """
        if not isinstance(body, dict):
            raise TypeError("simulation body must be a dict")
        resp = self._call(
            "POST", "/simulation-jobs", what="submitting the simulation", json=body,
            deadline=deadline,
        )
        return self._parse(SimulationJobDetail.from_dict, resp, "simulation job")

    def get_simulation(
        self, job_id: str, *, deadline: Deadline | None = None
    ) -> SimulationJobDetail:
        """``GET /simulation-jobs/{job_id}`` (blocking).

        Raises:
            OdysseyNotFoundError (404), OdysseyPermissionError (403, someone
            else's job), and the rest as in the module docstring.
        """
        validate_id(job_id, "job_id")
        body = self._call(
            "GET", f"/simulation-jobs/{quote(job_id, safe='')}", what="fetching the simulation",
            deadline=deadline,
        )
        return self._parse(SimulationJobDetail.from_dict, body, "simulation job")

    def list_simulations(
        self,
        *,
        status: str | None,
        active: bool | None,
        limit: int | None,
        offset: int | None,
        deadline: Deadline | None = None,
    ) -> SimulationJobsList:
        """``GET /simulation-jobs`` with optional filters (blocking).

        ``status`` is a :class:`SimulationJobStatus` or one of its values;
        ``limit`` 1–100; ``offset`` ≥ 0 — all checked before any request.

        Raises:
            TypeError/ValueError: bad filters. OdysseyError subclasses otherwise.
        """
        _check_page(limit, offset, max_limit=100)
        params: dict[str, str] = {}
        if status is not None:
            params["status"] = _status_value(status)
        if active is not None:
            if not isinstance(active, bool):
                raise TypeError("active must be a bool or None")
            params["active"] = "true" if active else "false"
        if limit is not None:
            params["limit"] = str(limit)
        if offset is not None:
            params["offset"] = str(offset)
        body = self._call(
            "GET", "/simulation-jobs", what="listing simulations", params=params,
            deadline=deadline,
        )
        return self._parse(SimulationJobsList.from_dict, body, "simulation list")

    def cancel_simulation(
        self, job_id: str, *, deadline: Deadline | None = None
    ) -> SimulationJobInfo:
        """``DELETE /simulation-jobs/{job_id}`` (blocking).

        Raises:
            OdysseyRequestError: 400, the job is no longer cancellable (the
                server's detail says why).
            OdysseyNotFoundError / OdysseyPermissionError: 404 / 403.
        """
        validate_id(job_id, "job_id")
        body = self._call(
            "DELETE", f"/simulation-jobs/{quote(job_id, safe='')}",
            what="cancelling the simulation", deadline=deadline,
        )
        body.setdefault("job_id", job_id)
        return self._parse(SimulationJobInfo.from_dict, body, "cancel result")

    # ------------------------------------------------------------------ telemetry

    def telemetry(self, event: dict[str, Any]) -> None:
        """Send one telemetry event to ``POST /telemetry``, fire-and-forget.

        Non-blocking: a no-op unless the client was built with
        ``telemetry=True``; otherwise the POST (5 s timeout) runs on a daemon
        thread named ``odyssey-telemetry``, at most 3 at a time (further events
        are dropped, not queued). Failures are swallowed. Never sends the API
        key or any part of it; string values are cut to 2000 characters.
        """
        if not self._telemetry_enabled or self._closed.is_set() or not isinstance(event, dict):
            return
        clean: dict[str, Any] = {}
        for k, v in event.items():
            if k in ("api_key", "api_key_prefix", "access_token", "session_token"):
                continue
            clean[k] = self._redact(v)[:2000] if isinstance(v, str) else v
        clean.update(
            sdk_version=__version__,
            sdk_platform="python",
            platform_info=f"{platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}",
        )
        if not self._telemetry_slots.acquire(blocking=False):
            log.debug("telemetry dropped: %d sends in flight", TELEMETRY_MAX_IN_FLIGHT)
            return

        def send() -> None:
            try:
                self._session.post(
                    f"{self._base}/telemetry", json={"events": [clean]}, timeout=TELEMETRY_TIMEOUT
                ).close()
            except Exception as exc:  # fire-and-forget: nothing may escape a sender thread
                log.debug("telemetry not sent: %s", type(exc).__name__)
            finally:
                self._telemetry_slots.release()
                with self._telemetry_lock:
                    self._telemetry_threads.discard(threading.current_thread())

        # daemon: a stuck telemetry POST must never delay interpreter exit
        t = threading.Thread(target=send, name="odyssey-telemetry", daemon=True)
        with self._telemetry_lock:
            self._telemetry_threads.add(t)
        t.start()

    # ------------------------------------------------------------------ the boundary

    def _require_key(self, doing: str) -> str:
        if self._api_key is None:
            raise ValueError(f"an API key is required for {doing}; pass api_key=...")
        return self._api_key

    def _ensure_open(self) -> None:
        if self._closed.is_set():
            raise OdysseyConnectionError("the API client is closed")

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
        deadline: Deadline | None = None,
        ids: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request whose 2xx body must be a JSON object; errors mapped."""
        resp = self._call_raw(
            method, path, what=what, json=json, params=params, auth=auth, deadline=deadline,
            ids=ids,
        )
        return self._json_object(resp, what, ids)

    def _call_raw(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        params: dict[str, str] | None = None,
        auth: bool = True,
        deadline: Deadline | None = None,
        ids: dict[str, Any] | None = None,
        passthrough: tuple[int, ...] = (),
    ) -> requests.Response:
        """Send one request (retrying once on 401 with a fresh bearer token).

        Returns the response when it is 2xx or its status is in ``passthrough``;
        raises the mapped error otherwise. The single place where requests'
        exceptions and HTTP statuses become :mod:`odyssey_sync.errors`.
        """
        ids = ids or {}
        if auth:
            self._require_key(what)
        url = self._base + path
        for attempt in (1, 2):
            self._ensure_open()
            headers: dict[str, str] = {}
            token = None
            if auth:
                token = self.access_token(deadline)
                headers["Authorization"] = f"Bearer {token}"
            timeout = self._timeout
            if deadline is not None:
                deadline.check(what)
                timeout = deadline.clamp(self._timeout) or 0.0
            try:
                resp = self._session.request(
                    method, url, json=json, params=params or None, headers=headers,
                    timeout=max(timeout, 0.001),
                )
            except requests.Timeout as exc:
                raise OdysseyTimeoutError(f"{what} timed out after {timeout:g} s", **ids) from exc
            except requests.RequestException as exc:
                raise OdysseyConnectionError(f"{what} failed: {_describe(exc)}", **ids) from exc
            log.debug("%s %s → %d", method, path, resp.status_code)
            if resp.ok or resp.status_code in passthrough:
                return resp
            if resp.status_code == 401 and auth and attempt == 1 and token is not None:
                # The bearer may have expired server-side before our margin:
                # drop it and retry once with a fresh one (PROTOCOL §15.22).
                resp.close()
                self._invalidate_token(token)
                continue
            self._raise_for_status(resp, what, auth_endpoint=not auth, ids=ids)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for_status(
        self, resp: requests.Response, what: str, *, auth_endpoint: bool, ids: dict[str, str]
    ) -> None:
        status = resp.status_code
        body = _json_or_none(resp)
        detail = self._detail_text(body, resp)
        suffix = f": {detail}" if detail else ""
        err: OdysseyError
        if status == 429:
            err = usage_error_from_body(body if body is not None else detail, status=429)
            for k, v in ids.items():
                setattr(err, k, v)
        elif status == 401:
            err = OdysseyAuthError(
                f"{what} failed: invalid API key or expired token (401){suffix}"
                if auth_endpoint else f"{what} failed: not authorized (401){suffix}",
                status=401, **ids,
            )
        elif status == 403:
            if auth_endpoint:
                err = OdysseyAuthError(detail or "access denied (403)", status=403, **ids)
            else:
                err = OdysseyPermissionError(f"{what} failed: forbidden (403){suffix}", status=403,
                                             **ids)
        elif status == 422 and auth_endpoint:
            err = OdysseyAuthError(f"{what} failed: malformed API key (422){suffix}", status=422,
                                   **ids)
        elif status == 404:
            err = OdysseyNotFoundError(f"{what} failed: not found (404){suffix}", status=404, **ids)
        elif 400 <= status < 500:
            err = OdysseyRequestError(f"{what} failed ({status}){suffix}", status=status, **ids)
        else:
            err = OdysseyConnectionError(
                f"{what} failed: server error {status} {resp.reason or ''}".rstrip() + suffix,
                status=status, **ids,
            )
        resp.close()
        raise err

    def _json_object(
        self, resp: requests.Response, what: str, ids: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        # Lenient about Content-Type (a JSON body labelled text/plain is fine),
        # strict about the shape: the endpoints we call all answer objects.
        try:
            body = resp.json()
        except ValueError as exc:
            raise OdysseyConnectionError(
                f"{what}: the server's response is not JSON (status {resp.status_code})",
                status=resp.status_code, **(ids or {}),
            ) from exc
        finally:
            resp.close()
        if not isinstance(body, dict):
            raise OdysseyConnectionError(
                f"{what}: expected a JSON object, got {type(body).__name__}",
                status=resp.status_code, **(ids or {}),
            )
        return body

    def _parse(
        self, parser: Callable[[dict[str, Any]], T], body: dict[str, Any], what: str,
        **ids: Any,
    ) -> T:
        try:
            return parser(body)
        except (ValueError, TypeError, KeyError) as exc:
            raise OdysseyConnectionError(f"malformed {what} in response: {exc}", **ids) from exc

    def _detail_text(self, body: Any, resp: requests.Response) -> str:
        if isinstance(body, dict) and "detail" in body:
            detail = body["detail"]
            if isinstance(detail, dict) and isinstance(detail.get("message"), str):
                text = detail["message"]
            elif isinstance(detail, list):  # FastAPI 422: [{"loc": [...], "msg": ...}, ...]
                text = "; ".join(
                    f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}"
                    if isinstance(d, dict) else str(d)
                    for d in detail
                )
            else:
                text = str(detail)
        elif body is None and resp.headers.get("Content-Type", "").startswith("text/plain"):
            text = resp.text.strip()
        else:
            text = ""
        text = self._redact(" ".join(text.split()))
        return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 1] + "…"

    def _redact(self, text: str) -> str:
        """Remove the API key and bearer token should a server echo them back."""
        for secret in (self._api_key, self._token):
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text


# ---------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=1)
def _bar_class() -> Any:
    from tqdm import tqdm  # lazily: only downloads and waits draw bars

    class QuietMonitorBar(tqdm):  # type: ignore[misc]
        monitor_interval = 0

    return QuietMonitorBar


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar (same keyword arguments) that starts no monitor thread.

    tqdm's default starts a process-wide ``tqdm_monitor`` thread with the
    first bar and keeps it alive for good; our bars are updated on every
    chunk/poll, so the monitor adds nothing but a thread we would leak.
    """
    return _bar_class()(**kwargs)


def _json_or_none(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def _retry_after(resp: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.05, seconds) if seconds == seconds else None  # NaN guard


def _int_header(resp: requests.Response, name: str) -> int | None:
    try:
        value = int(resp.headers.get(name, ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _status_value(status: Any) -> str:
    if isinstance(status, SimulationJobStatus):
        return status.value
    if not isinstance(status, str):
        raise TypeError(f"status must be a SimulationJobStatus or str, not {type(status).__name__}")
    known = [s.value for s in SimulationJobStatus]
    if status not in known:
        raise ValueError(
            f"unknown simulation status {status!r} (one of {', '.join(known)}; "
            "pass SimulationJobStatus(...) for a newer value)"
        )
    return status


def _describe(exc: requests.RequestException) -> str:
    """A short, secret-free description of a transport failure (its root cause)."""
    root: BaseException = exc
    seen = {id(root)}
    while root.__context__ is not None and id(root.__context__) not in seen:
        root = root.__context__
        seen.add(id(root))
    if isinstance(root, OSError) and root.strerror:
        return root.strerror
    text = str(root)
    return f"{type(root).__name__}: {text[:200]}" if text else type(root).__name__
