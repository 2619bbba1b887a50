"""Middlewares every route of the local server shares.

* ``//`` in a path is merged before routing (clients append paths to a base
  URL that may end in ``/``, PROTOCOL §2.1);
* CORS for browsers (§14): preflights answered for every path, ``*`` origin,
  ``Location`` exposed;
* every error is FastAPI-shaped JSON ``{"detail": ...}``; an unexpected
  exception becomes a logged JSON 500, never a traceback on the wire.

:func:`protocol_error_logger` is the aiohttp server logger: a request that
is not even valid HTTP (a 10 KB request line, a bad header) is answered 400
by aiohttp itself and logged as one INFO line, not an ERROR with a traceback:
it is a client mistake, not ours.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import ApiError, json_error

__all__ = ["MIDDLEWARES", "cors_middleware", "error_middleware", "merge_slashes_middleware",
           "protocol_error_logger"]

log = logging.getLogger("odyssey_sync.local")

_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Accept, Origin, "
    "X-Requested-With, If-Match",
    "Access-Control-Expose-Headers": "Location, Content-Length, ETag",
    "Access-Control-Max-Age": "600",
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:
        return  # WebSocket upgrades and streamed bodies: headers are gone already
    for name, value in _CORS_HEADERS.items():
        if name not in response.headers:
            response.headers[name] = value
    # No cookies are involved (origin "*"), so any header a browser asks to
    # send may be allowed: echo the request instead of guessing a list.
    wanted = request.headers.get("Access-Control-Request-Headers")
    if wanted and request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Headers"] = wanted


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every preflight; put ``Access-Control-*`` headers on every answer (§14)."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    _add_cors(request, response)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into FastAPI-style JSON; never leak a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_error(exc.status, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json":
            return exc  # already JSON (e.g. from the real-time half)
        reason = {404: "Not Found", 405: "Method Not Allowed",
                  413: "Request body too large"}.get(exc.status, exc.reason)
        return json_error(exc.status, reason,
                           {k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "Internal Server Error")


@web.middleware
async def merge_slashes_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Route ``//auth/token`` like ``/auth/token`` (a base URL with a trailing slash).

    Runs innermost: the router already matched (and failed) on the raw path,
    so resolve the merged path again and call that handler directly.
    """
    if "//" not in request.raw_path.split("?", 1)[0]:
        return await handler(request)
    path = request.path
    while "//" in path:
        path = path.replace("//", "/")
    clone = request.clone(rel_url=request.rel_url.with_path(path))
    match = await request.app.router.resolve(clone)
    match.add_app(request.app)
    match.freeze()
    clone._match_info = match
    return await match.handler(clone)



#: outermost first, as ``web.Application(middlewares=...)`` takes them
MIDDLEWARES = (cors_middleware, error_middleware, merge_slashes_middleware)


class _ProtocolErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, with malformed HTTP demoted to one INFO line."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        exc = exc_info if isinstance(exc_info, BaseException) else (
            sys.exc_info()[1] if exc_info is True else None)
        if isinstance(exc, HttpProcessingError):
            kwargs.pop("exc_info", None)
            self.logger.info("malformed HTTP request refused (%s %s)", exc.code,
                             str(exc.message)[:120])
            return
        super().log(level, msg, *args, **kwargs)


def protocol_error_logger() -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """The logger to give ``web.AppRunner(logger=...)`` (see the module docstring)."""
    return _ProtocolErrorLog(logging.getLogger("aiohttp.server"), {})
