"""The protocol's error body: every HTTP error is FastAPI-shaped ``{"detail": ...}``.

Handlers raise :class:`ApiError` (or :func:`validation_error` for a 422 shaped
like FastAPI's request-validation errors); the error middleware
(:mod:`.middleware`) turns it into the JSON answer.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

__all__ = ["ApiError", "json_error", "validation_error"]


class ApiError(Exception):
    """An HTTP error answered as ``{"detail": detail}`` (FastAPI style)."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def validation_error(loc: list[Any], msg: str, type_: str = "value_error") -> ApiError:
    """A 422 whose body matches FastAPI's request-validation errors."""
    return ApiError(422, [{"type": type_, "loc": loc, "msg": msg}])


def json_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> web.Response:
    response = web.json_response({"detail": detail}, status=status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
