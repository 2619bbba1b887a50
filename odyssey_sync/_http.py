"""The HTTP boundary: the one owner of a ``requests.Session`` in the SDK.

Every HTTP request of the client side (REST calls, region pings, downloads,
telemetry, the ICE configuration, WHEP offers and deletes) goes through
:meth:`HttpClient.request`, and every failure becomes an
:mod:`odyssey_sync.errors` exception at this one place:

* a transport failure (refused, reset, DNS, TLS) → :class:`OdysseyConnectionError`
  whose message names the URL that could not be reached (without its query
  string) and the root cause;
* a request that ran out of time → :class:`OdysseyTimeoutError`;
* an HTTP status, via :meth:`HttpClient.raise_for_status`, by **status code**
  — never by searching message text (PROTOCOL §15.17)::

    401                → OdysseyAuthError      (on an auth endpoint: bad key)
    403                → OdysseyPermissionError (OdysseyAuthError on an auth endpoint)
    404                → OdysseyNotFoundError
    422 on auth        → OdysseyAuthError
    429                → usage_error_from_body(...)
    400, 422, other 4xx→ OdysseyRequestError with the server's ``detail``
    5xx, other         → OdysseyConnectionError

Secrets. Two different things are hidden, under two names:
:meth:`HttpClient.mask_secrets` replaces known secret *values* (API key,
bearer token) in text a server sent back; :func:`strip_query` drops the query
string of a URL (the spectator token travels in ``?token=``, PROTOCOL §8.2)
before the URL appears in a message. urllib3 logs request lines, query
included, at DEBUG: :func:`install_log_redaction` (called by every
:class:`HttpClient`) masks secret query values in those records.

Threads: all calls block the calling thread; a ``requests.Session`` may be
shared by threads for independent requests (connection pool), which is how
the REST client, its telemetry senders and region pings use it.
"""

from __future__ import annotations

import email.utils
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from ._version import __version__
from .errors import (
    OdysseyAuthError,
    OdysseyConnectionError,
    OdysseyError,
    OdysseyNotFoundError,
    OdysseyPermissionError,
    OdysseyRequestError,
    OdysseyTimeoutError,
    usage_error_from_body,
)

__all__ = [
    "HttpClient",
    "Response",
    "install_log_redaction",
    "int_header",
    "origin",
    "retry_after",
    "strip_query",
    "url_path",
    "validate_id",
]

log = logging.getLogger("odyssey_sync.http")

#: The response type handed to the resource modules (they never import requests).
Response = requests.Response

#: Longest server ``detail`` text copied into an exception message.
DETAIL_MAX = 500

#: Query parameters whose values are secrets wherever they appear in a URL.
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:token|access_token|session_token|spectator_token|api_key)=)[^&#\s\"']+"
)
#: Library loggers that may write a request line, query included: requests'
#: transport (urllib3) at DEBUG, and websocket-client when tracing is on.
_LIBRARY_LOGGERS = (
    "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry", "websocket",
)


def strip_query(url: str) -> str:
    """``url`` without its query string and fragment (which may carry a token)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def mask_secret_queries(text: str) -> str:
    """``text`` with the value of every ``token=``-like query parameter replaced by ``***``."""
    return _SECRET_QUERY.sub(r"\1***", text)


class _SecretQueryFilter(logging.Filter):
    """Masks secret query values in the records of a library logger (issue 10 item 9)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is the library's problem, not ours
            return True
        masked = mask_secret_queries(text)
        if masked != text:
            record.msg, record.args = masked, ()
        return True


_FILTER = _SecretQueryFilter("odyssey_sync")
_filter_lock = threading.Lock()


def install_log_redaction() -> None:
    """Mask secret query values in urllib3's and websocket-client's log records.

    Idempotent, thread-safe, non-blocking.

    urllib3 logs ``"POST /live/x/whep?token=… HTTP/1.1" 201`` at DEBUG; the
    protocol requires the spectator token in that query, so the filter goes
    on the loggers that emit such lines. A filter on a logger sees only the
    records created on that logger, which is exactly where these lines start.
    """
    with _filter_lock:
        for name in _LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


def retry_after(resp: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), at least 0.05."""
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


def int_header(resp: requests.Response, name: str) -> int | None:
    """A non-negative integer header, or ``None`` when absent or malformed."""
    try:
        value = int(resp.headers.get(name, ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def describe_failure(exc: BaseException) -> str:
    """A short, secret-free description of a transport failure (its root cause)."""
    root: BaseException = exc
    seen = {id(root)}
    while root.__context__ is not None and id(root.__context__) not in seen:
        root = root.__context__
        seen.add(id(root))
    if isinstance(root, OSError) and root.strerror:
        return root.strerror
    text = mask_secret_queries(str(root))
    return f"{type(root).__name__}: {text[:200]}" if text else type(root).__name__


def validate_id(value: Any, what: str) -> str:
    """Check an id that goes into a URL path, locally, before any request.

    A valid id is a non-empty ``str`` that is not ``.`` or ``..`` (which a URL
    resolver would turn into "this/parent directory", sending the bearer token
    to another endpoint) and has no control characters. It is later escaped
    as one path segment (``/``, ``?``, ``#``, ``%`` included).

    Raises:
        TypeError: not a str.
        ValueError: empty or blank, ``.`` or ``..``, or contains control characters.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if value in (".", ".."):
        raise ValueError(f"{what} must not be {value!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{what} must not contain control characters")
    return value


def url_path(*segments: str) -> str:
    """``/a/b/c`` with each segment escaped whole (``safe=''``: ``/`` becomes ``%2F``)."""
    return "".join("/" + quote(s, safe="") for s in segments)



class HttpClient:
    """The one ``requests.Session`` of an SDK object, with errors translated.

    Args:
        secrets: returns the secret values (API key, bearer token…) currently
            in use; :meth:`mask_secrets` hides them in server texts.

    Use as a context manager or call :meth:`close` (idempotent).
    """

    def __init__(self, *, secrets: Callable[[], Iterable[str | None]] | None = None) -> None:
        install_log_redaction()
        self._secrets = secrets
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"odyssey-sync/{__version__}"

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections; idempotent, non-blocking."""
        self._session.close()

    def add_response_hook(self, hook: Callable[..., Any]) -> None:
        """Call ``hook(response, **kwargs)`` for every response (requests' hook; for tests)."""
        self._session.hooks["response"].append(hook)

    # ------------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        timeout: float,
        ids: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send one request; return the response whatever its status.

        Blocking, caller's thread, at most ``timeout`` seconds per connect and
        per read. ``kwargs`` go to :meth:`requests.Session.request` (``json``,
        ``data``, ``params``, ``headers``, ``stream``, ``allow_redirects``).

        Raises:
            OdysseyTimeoutError: no answer in ``timeout`` seconds.
            OdysseyConnectionError: the server could not be reached; the
                message names the URL (query string removed) and the cause.
        """
        shown = strip_query(url)
        ids = ids or {}
        try:
            return self._session.request(method, url, timeout=max(timeout, 0.001), **kwargs)
        except requests.Timeout as exc:
            err: OdysseyError = OdysseyTimeoutError(
                f"{what} timed out after {timeout:g} s waiting for {shown}", **ids
            )
            cause: BaseException | None = exc
        except requests.RequestException as exc:
            err = OdysseyConnectionError(
                f"{what}: cannot reach {shown} ({describe_failure(exc)})", **ids
            )
            cause = exc
        if _SECRET_QUERY.search(url):
            # requests' exception texts quote the full URL, token included:
            # chain nothing rather than a secret (the message says the cause).
            cause = None
        raise err from cause

    def iter_body(self, resp: requests.Response, chunk: int, *, what: str) -> Iterator[bytes]:
        """The body of a ``stream=True`` response, ``chunk`` bytes at a time.

        Blocking per chunk for at most the request's ``timeout``.

        Raises:
            OdysseyTimeoutError: a read stalled for longer than the timeout.
            OdysseyConnectionError: the connection broke mid-body.
        """
        try:
            yield from resp.iter_content(chunk_size=chunk)
        except requests.Timeout as exc:
            raise OdysseyTimeoutError(f"{what} stalled: read timed out") from exc
        except requests.RequestException as exc:
            raise OdysseyConnectionError(f"{what} failed: {describe_failure(exc)}") from exc

    # ------------------------------------------------------------------ statuses

    def raise_for_status(
        self,
        resp: requests.Response,
        what: str,
        *,
        auth_endpoint: bool = False,
        ids: dict[str, Any] | None = None,
    ) -> None:
        """Raise the mapped error for a non-2xx ``resp`` (table in the module docstring).

        Closes ``resp`` before raising. Returns quietly for a 2xx.
        """
        if resp.ok:
            return
        ids = ids or {}
        status = resp.status_code
        body = _json_or_none(resp)
        detail = self.detail_text(body, resp)
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
                err = OdysseyPermissionError(f"{what} failed: forbidden (403){suffix}",
                                             status=403, **ids)
        elif status == 422 and auth_endpoint:
            err = OdysseyAuthError(f"{what} failed: malformed API key (422){suffix}",
                                   status=422, **ids)
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

    def json_object(
        self, resp: requests.Response, what: str, ids: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The body of a 2xx response, which must be a JSON object; closes ``resp``.

        Lenient about Content-Type (a JSON body labelled text/plain is fine),
        strict about the shape: the endpoints we call all answer objects.

        Raises:
            OdysseyConnectionError: not JSON, or not an object.
        """
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

    def detail_text(self, body: Any, resp: requests.Response) -> str:
        """The server's ``detail`` as one line of at most 500 characters, secrets masked."""
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
        text = self.mask_secrets(" ".join(text.split()))
        return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"

    def mask_secrets(self, text: str) -> str:
        """``text`` with every current secret value (4+ characters) replaced by ``***``."""
        for secret in self._secrets() if self._secrets is not None else ():
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return mask_secret_queries(text)


def _json_or_none(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None
