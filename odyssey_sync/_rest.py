"""The REST resources of the Odyssey API (PROTOCOL §3), over :mod:`odyssey_sync._http`.

:class:`ApiClient` holds the account side of the SDK: the bearer token for
the API key, recordings, simulation jobs and the client's ICE configuration
here; streamer allocation (regions, the 503 queue, the signaling token) in
:mod:`odyssey_sync._allocation`, downloads in :mod:`odyssey_sync._download`
and telemetry in :mod:`odyssey_sync._telemetry`, all reached through its
methods. It sends every request through its
:class:`~odyssey_sync._http.HttpClient`, where transport failures and HTTP
statuses become :mod:`odyssey_sync.errors` (the mapping table is there); this
module adds what is specific to the API: a 401 on an authenticated call
refreshes the bearer token and retries once (PROTOCOL §15.22).

All calls block on the caller's thread (no event loop). Every request carries
an explicit timeout: the client's per-request ``timeout``, clamped to the
:class:`~odyssey_sync._deadline.Deadline` of the operation when one is given,
so the steps of one operation (auth, regions, allocation, token) share one
budget. Bad arguments — ids that are empty, ``.`` or ``..``, paging values
beyond the documented limits — raise ``TypeError``/``ValueError`` before any
request; every id is escaped as one path segment. The API key and tokens
never appear in logs, reprs or exception text.

Thread-safety: one ``ApiClient`` may be used from several threads at once;
the bearer-token cache is guarded by a lock (one refresh in flight at a time).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ._allocation import Allocation, Allocator
from ._deadline import Deadline
from ._download import download_to_file, progress_bar
from ._http import HttpClient, Response, url_path, validate_id
from ._signaling import config_url
from ._telemetry import TelemetrySender
from ._whep import fetch_ice_config
from .config import MAX_LIST_LIMIT, MAX_LIST_OFFSET
from .errors import (
    OdysseyConnectionError,
    OdysseyTimeoutError,
)
from .types import (
    Recording,
    SimulationJobDetail,
    SimulationJobInfo,
    SimulationJobsList,
    SimulationJobStatus,
    StreamRecordingsList,
)

__all__ = ["Allocation", "ApiClient", "check_page", "progress_bar", "validate_id"]

log = logging.getLogger("odyssey_sync.api")

#: Refresh the bearer token this long before it expires (PROTOCOL §2.2).
TOKEN_REFRESH_MARGIN = 60.0
#: ``expires_in`` assumed when /auth/token omits it.
DEFAULT_TOKEN_TTL = 3600

T = TypeVar("T")


def check_page(limit: Any, offset: Any) -> None:
    """Check list paging locally: ``limit`` 1–100, ``offset`` 0–2⁶³−1 (or ``None``).

    Raises:
        TypeError: not an int (``bool`` refused).
        ValueError: out of range; the message names the limit.
    """
    for name, value, low, high in (("limit", limit, 1, MAX_LIST_LIMIT),
                                   ("offset", offset, 0, MAX_LIST_OFFSET)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high}, not {value}")


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
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._base = api_url.rstrip("/")
        self._api_key = api_key or None
        self._timeout = float(timeout)
        self._closed = threading.Event()
        # Token cache: (token, monotonic time after which it must be refreshed).
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._http = HttpClient(secrets=lambda: (self._api_key, self._token))
        self._allocator = Allocator(self)
        self._telemetry = TelemetrySender(
            self._http, self._base, enabled=bool(telemetry), mask=self._http.mask_secrets
        )

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
    def http(self) -> HttpClient:
        """The HTTP boundary this client sends through (shared connection pool)."""
        return self._http

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
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
        self._telemetry.close(timeout=1.0)
        self._http.close()

    def wait_closed(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds or until :meth:`close`; True if closed.

        Pollers (queue, :func:`wait_for_simulation`) sleep with this so that
        closing the client interrupts them.
        """
        return self._closed.wait(max(0.0, timeout))

    def telemetry(self, event: dict[str, Any]) -> None:
        """Send one telemetry event (non-blocking, never raises; see :mod:`._telemetry`).

        A no-op unless the client was built with ``telemetry=True``.
        """
        if not self._closed.is_set():
            self._telemetry.send(event)

    # ------------------------------------------------------------------ auth

    def access_token(self, deadline: Deadline | None = None) -> str:
        """The bearer token for the API key, from ``POST /auth/token``.

        Blocking, caller's thread. Cached until 60 s before it expires; the
        first caller refreshes while concurrent callers wait for that result.

        Raises:
            ValueError: no API key was configured (before any request).
            OdysseyAuthError: the key was refused (401/403/422).
            OdysseyConnectionError: the API cannot be reached (the message
                names its URL), 5xx, malformed response.
            OdysseyTimeoutError: the request or ``deadline`` ran out.
        """
        key = self.require_key("authenticating")
        remaining = None if deadline is None else deadline.remaining()
        if not self._token_lock.acquire(timeout=-1 if remaining is None else remaining):
            raise OdysseyTimeoutError("waiting for a bearer token timed out")
        try:
            if self._token is not None and time.monotonic() < self._token_refresh_at:
                return self._token
            self._token = None
            body = self.request_json(
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
        """Region round trips in ms, or ``None``; see :meth:`Allocator.region_latencies`."""
        return self._allocator.region_latencies(budget=budget, deadline=deadline)

    def allocate(
        self, *, queue_timeout: float, deadline: Deadline,
        cancelled: threading.Event | None = None,
    ) -> Allocation:
        """Allocate a streamer and its signaling token; see :meth:`Allocator.allocate`."""
        return self._allocator.allocate(queue_timeout=queue_timeout, deadline=deadline,
                                        cancelled=cancelled)

    def session_token(self, session_id: str, deadline: Deadline | None = None) -> tuple[str, int]:
        """``POST /sessions/token``; see :meth:`Allocator.session_token`."""
        return self._allocator.session_token(session_id, deadline)

    def fetch_ice_servers(self, signaling_url: str, *, timeout: float) -> list[dict[str, Any]]:
        """``GET {signaling_url as http(s)}/config``: the ICE servers (PROTOCOL §4.1).

        Blocking for at most ``timeout`` seconds, caller's thread. Unlike the
        official client it keeps TURN ``username``/``credential`` and never
        substitutes a public STUN server (PROTOCOL §15.8–9).

        Returns:
            ``[{"urls": [...], "username"?: str, "credential"?: str}, ...]``
            (:func:`~odyssey_sync._whep.parse_ice_servers`); ``[]`` on any
            failure (non-2xx, bad JSON, network, timeout) — host candidates
            still work. Never raises.
        """
        if not isinstance(signaling_url, str):
            return []
        url = signaling_url
        if not url.startswith(("ws://", "wss://", "http://", "https://")):
            url = "http://" + url
        return fetch_ice_config(self._http, config_url(url.rstrip("/")), timeout=timeout)

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
        body = self.request_json(
            "GET", url_path("recordings", stream_id), what="fetching the recording",
            deadline=deadline, ids={"stream_id": stream_id},
        )
        return self.parse_body(Recording.from_dict, body, "recording", stream_id=stream_id)

    def list_stream_recordings(
        self, limit: int | None = None, offset: int | None = None, *,
        deadline: Deadline | None = None,
    ) -> StreamRecordingsList:
        """``GET /stream-recordings`` → one page, newest first (blocking).

        ``limit`` (1–100) and ``offset`` (≥ 0) are sent only when given, and
        checked first.

        Raises:
            TypeError/ValueError: bad paging values or no API key (no request made).
            OdysseyError subclasses as in the module docstring.
        """
        check_page(limit, offset)
        params = {k: str(v) for k, v in (("limit", limit), ("offset", offset)) if v is not None}
        body = self.request_json(
            "GET", "/stream-recordings", what="listing recordings", params=params,
            deadline=deadline,
        )
        return self.parse_body(StreamRecordingsList.from_dict, body, "recordings list")
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
        """Stream a presigned URL into ``path`` (see :func:`._download.download_to_file`).

        Each read times out after the per-request timeout. Raises
        :class:`OdysseyConnectionError` when the client is closed.
        """
        self._ensure_open()
        return download_to_file(
            self._http, url, path, timeout=self._timeout, progress=progress, chunk=chunk,
            deadline=deadline, description=description,
        )

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
        resp = self.request_json(
            "POST", "/simulation-jobs", what="submitting the simulation", json=body,
            deadline=deadline,
        )
        return self.parse_body(SimulationJobDetail.from_dict, resp, "simulation job")

    def get_simulation(
        self, job_id: str, *, deadline: Deadline | None = None
    ) -> SimulationJobDetail:
        """``GET /simulation-jobs/{job_id}`` (blocking).

        Raises:
            OdysseyNotFoundError (404), OdysseyPermissionError (403, someone
            else's job), and the rest as in the module docstring.
        """
        validate_id(job_id, "job_id")
        body = self.request_json(
            "GET", url_path("simulation-jobs", job_id), what="fetching the simulation",
            deadline=deadline,
        )
        return self.parse_body(SimulationJobDetail.from_dict, body, "simulation job")

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
        check_page(limit, offset)
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
        body = self.request_json(
            "GET", "/simulation-jobs", what="listing simulations", params=params,
            deadline=deadline,
        )
        return self.parse_body(SimulationJobsList.from_dict, body, "simulation list")

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
        body = self.request_json(
            "DELETE", url_path("simulation-jobs", job_id),
            what="cancelling the simulation", deadline=deadline,
        )
        body.setdefault("job_id", job_id)
        return self.parse_body(SimulationJobInfo.from_dict, body, "cancel result")

    # ------------------------------------------------------------------ the boundary

    def require_key(self, doing: str) -> str:
        """The API key; ``ValueError`` naming ``doing`` when none was given (no request)."""
        if self._api_key is None:
            raise ValueError(f"an API key is required for {doing}; pass api_key=...")
        return self._api_key

    def _ensure_open(self) -> None:
        if self._closed.is_set():
            raise OdysseyConnectionError("the API client is closed")

    def request_json(
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
        resp = self.request(
            method, path, what=what, json=json, params=params, auth=auth, deadline=deadline,
            ids=ids,
        )
        return self._http.json_object(resp, what, ids)

    def request(
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
    ) -> Response:
        """Send one API request (retrying once on 401 with a fresh bearer token).

        Returns the response when it is 2xx or its status is in ``passthrough``;
        raises the error :meth:`HttpClient.raise_for_status` maps otherwise.
        """
        ids = ids or {}
        if auth:
            self.require_key(what)
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
            resp = self._http.request(
                method, url, what=what, timeout=timeout, ids=ids, json=json,
                params=params or None, headers=headers,
            )
            log.debug("%s %s → %d", method, path, resp.status_code)
            if resp.ok or resp.status_code in passthrough:
                return resp
            if resp.status_code == 401 and auth and attempt == 1 and token is not None:
                # The bearer may have expired server-side before our margin:
                # drop it and retry once with a fresh one (PROTOCOL §15.22).
                resp.close()
                self._invalidate_token(token)
                continue
            self._http.raise_for_status(resp, what, auth_endpoint=not auth, ids=ids)
        raise AssertionError("unreachable")  # pragma: no cover

    def parse_body(
        self, parser: Callable[[dict[str, Any]], T], body: dict[str, Any], what: str,
        **ids: Any,
    ) -> T:
        """``parser(body)``; a malformed body is an :class:`OdysseyConnectionError`."""
        try:
            return parser(body)
        except (ValueError, TypeError, KeyError) as exc:
            raise OdysseyConnectionError(f"malformed {what} in response: {exc}", **ids) from exc


# ---------------------------------------------------------------------- helpers


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
