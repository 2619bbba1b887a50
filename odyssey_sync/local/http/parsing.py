"""Reading what a client sent over HTTP: bounded bodies, JSON, strict query values.

Every function here answers a client mistake with an :class:`~.errors.ApiError`
(413 or a FastAPI-shaped 422), never with an exception that would reach the
error middleware as a 500: bodies are read to at most ``limit`` bytes (413
beyond); JSON goes through :func:`odyssey_sync.local.limits.decode_json`
(422 for what it refuses); query integers are ASCII digits with an optional
leading ``-`` only (``"1 "``, ``"+5"``, ``"١"`` and ``"1_0"`` are 422, unlike
``int()``).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
from aiohttp import web

from ..limits import INT64_MAX, JsonProblem, decode_json
from .errors import ApiError, validation_error

__all__ = [
    "query_bool",
    "query_int",
    "read_json",
    "read_limited",
    "require_object",
    "require_str",
]

_QUERY_INT = re.compile(r"-?[0-9]{1,19}")


async def read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """Read a body to EOF; None as soon as it exceeds ``limit`` bytes (no buffering past it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


async def read_json(request: web.Request, limit: int, *, required: bool = True) -> Any:
    """Read and decode a JSON body of at most ``limit`` bytes (413 / 422 otherwise)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"Request body too large (limit {limit} bytes)")
    raw = await read_limited(request.content, limit)
    if raw is None:
        raise ApiError(413, f"Request body too large (limit {limit} bytes)")
    if not raw.strip():
        if required:
            raise validation_error(["body"], "Field required", "missing")
        return {}
    try:
        if len(raw) > (256 << 10):
            # Scanning and parsing megabytes would stall the loop: off it.
            return await asyncio.get_running_loop().run_in_executor(None, decode_json, raw)
        return decode_json(raw)
    except JsonProblem as exc:
        raise ApiError(422, [{"type": exc.kind, "loc": ["body", *exc.loc],
                              "msg": exc.msg}]) from None


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise validation_error(["body"], "Input should be a valid dictionary or object to "
                               "extract fields from", "model_attributes_type")
    return body


def require_str(body: dict[str, Any], name: str, *, non_empty: bool = False) -> str:
    """The string field *name* of a JSON object body; a 422 when it is missing, not a
    string or (``non_empty``) empty."""
    loc = ["body", name]
    if name not in body:
        raise validation_error(loc, "Field required", "missing")
    value = body[name]
    if not isinstance(value, str):
        raise validation_error(loc, "Input should be a valid string", "string_type")
    if non_empty and not value:
        raise validation_error(loc, "String should have at least 1 character",
                               "string_too_short")
    return value


def query_int(request: web.Request, name: str, default: int, lo: int,
              hi: int = INT64_MAX) -> int:
    """An integer query parameter within [lo, hi] (422 like FastAPI otherwise).

    Strict: ASCII digits with an optional leading ``-``; no spaces, ``+``,
    underscores or non-ASCII digits.
    """
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if _QUERY_INT.fullmatch(raw) is None:
        raise validation_error(["query", name], "Input should be a valid integer, unable to "
                               "parse string as an integer", "int_parsing")
    value = int(raw)
    if value < lo:
        raise validation_error(["query", name], f"Input should be greater than or equal to {lo}",
                               "greater_than_equal")
    if value > hi:
        raise validation_error(["query", name], f"Input should be less than or equal to {hi}",
                               "less_than_equal")
    return value


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    lowered = raw.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise validation_error(["query", name], "Input should be a valid boolean, unable to "
                           "interpret input", "bool_parsing")
