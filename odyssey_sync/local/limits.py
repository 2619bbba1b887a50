"""The local server's documented limits, and the checks that enforce them.

One place for every bound a client can run into, so that the HTTP API and the
live (data channel / signaling) path refuse the same things the same way:

* :data:`MAX_PROMPT_CHARS`: the longest prompt (start, update, simulation
  scripts); :func:`prompt_problem` says why a prompt is refused;
* :func:`decode_json`: JSON we are willing to handle (nesting, integer range,
  Unicode text), used for HTTP bodies and signaling messages alike;
* frame sizes (:data:`MIN_FRAME_SIZE`, :data:`MAX_FRAME_SIZE`);
* the service limits of PROTOCOL §17 and their defaults
  (:data:`DEFAULT_STREAM_LIMIT`, :data:`DEFAULT_CONNECTION_LIMIT`,
  :data:`DEFAULT_STALE_SESSION_TIMEOUT`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from .render.stamp import stamp_region

__all__ = [
    "DEFAULT_CONNECTION_LIMIT",
    "DEFAULT_STALE_SESSION_TIMEOUT",
    "DEFAULT_STREAM_LIMIT",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_FRAME_SIDE",
    "MAX_JSON_DEPTH",
    "MAX_PROMPT_CHARS",
    "MIN_FRAME_SIDE",
    "MIN_FRAME_SIZE",
    "JsonProblem",
    "check_frame_size",
    "check_json_value",
    "check_seconds",
    "decode_json",
    "prompt_problem",
]

#: the service ends every stream after this many seconds (PROTOCOL §17)
DEFAULT_STREAM_LIMIT = 150.0
#: the service closes every connection after this many seconds (PROTOCOL §17)
DEFAULT_CONNECTION_LIMIT = 3600.0
#: a session whose client vanished without ``client_disconnecting`` keeps its
#: capacity slot this long (the service does not document its own value)
DEFAULT_STALE_SESSION_TIMEOUT = 30.0
#: smallest landscape frame (width, height): the machine-readable stamp must fit
#: (portrait streams use (height, width), which must carry it too)
MIN_FRAME_SIZE = (160, 96)
#: smallest and largest frame side
MIN_FRAME_SIDE, MAX_FRAME_SIDE = 96, 4096
#: signed 64-bit range: what SQLite stores as INTEGER
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: longest prompt accepted (characters), on the HTTP API (simulation scripts)
#: and on the live path (start and update): the SDK's own limit. Far below the
#: data channel's message size even when echoed back as ``applied_prompt``.
MAX_PROMPT_CHARS = 10_000
#: deepest nesting of arrays/objects accepted in a JSON document
MAX_JSON_DEPTH = 64


class JsonProblem(ValueError):
    """A JSON document we refuse; ``loc`` points into it, ``kind`` is the 422 type."""

    def __init__(self, loc: list[Any], msg: str, kind: str = "value_error") -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg
        self.kind = kind


def check_json_value(value: Any, *, unicode_text: bool = True) -> None:
    """Refuse deep nesting, out-of-range integers and (``unicode_text``) lone
    surrogates in ``value``.

    Iterative (no recursion, whatever the depth). Raises :class:`JsonProblem`.
    """
    stack: list[tuple[list[Any], Any]] = [([], value)]
    while stack:
        loc, item = stack.pop()
        if len(loc) > MAX_JSON_DEPTH:
            raise JsonProblem([], f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                              "json_invalid")
        if isinstance(item, str):
            if unicode_text:
                _check_text(loc, item)
        elif isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise JsonProblem(loc, "integer out of range (signed 64-bit)", "int_overflow")
        elif isinstance(item, dict):
            for key, child in item.items():
                if unicode_text:
                    _check_text([*loc, "<key>"], key)
                stack.append(([*loc, key], child))
        elif isinstance(item, list):
            stack.extend(([*loc, i], child) for i, child in enumerate(item))


def _check_text(loc: list[Any], text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonProblem(loc, "string is not valid Unicode text (lone surrogate)",
                          "string_unicode") from None


def decode_json(raw: bytes | str, *, unicode_text: bool = True) -> Any:
    """Parse a JSON document we are willing to handle; :class:`JsonProblem` otherwise.

    Non-blocking for small inputs, linear in the size (call it in an executor
    for megabytes). Refuses nesting deeper than :data:`MAX_JSON_DEPTH`,
    integers outside signed 64 bits (so also Python's 4300-digit literals)
    and, with ``unicode_text`` (the default), lone surrogates anywhere. The
    live path passes False and checks the fields it uses (a prompt with a
    lone surrogate then gets an error reply instead of no reply at all).
    """
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JsonProblem([getattr(exc, "pos", 0)], "JSON decode error", "json_invalid") \
            from None
    except RecursionError:
        raise JsonProblem([], f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                          "json_invalid") from None
    except ValueError:  # an integer literal beyond Python's 4300-digit limit
        raise JsonProblem([], "JSON number too long", "json_invalid") from None
    check_json_value(value, unicode_text=unicode_text)
    return value


def prompt_problem(prompt: str) -> str | None:
    """Why ``prompt`` is refused (a sentence naming the limit), or None when it is fine."""
    if len(prompt) > MAX_PROMPT_CHARS:
        return (f"prompt is {len(prompt)} characters; the limit is "
                f"{MAX_PROMPT_CHARS} characters")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        return "prompt is not valid Unicode text (lone surrogate)"
    return None


def check_frame_size(size: Any, name: str = "size") -> tuple[int, int]:
    """``size`` as a (width, height) tuple, or ``TypeError``/``ValueError`` naming the range.

    Both sides even and within ``MIN_FRAME_SIDE..MAX_FRAME_SIDE``, and both the
    landscape frame (width × height) and the portrait one (height × width)
    large enough for the frame stamp (at least 160×96 landscape).
    """
    if isinstance(size, list):
        size = tuple(size)
    if (not isinstance(size, tuple) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise TypeError(f"{name} must be a (width, height) tuple of ints")
    width, height = size
    allowed = (f"allowed: even sides within {MIN_FRAME_SIDE}..{MAX_FRAME_SIDE}, at least "
               f"{MIN_FRAME_SIZE[0]}x{MIN_FRAME_SIZE[1]} (landscape)")
    if not all(MIN_FRAME_SIDE <= v <= MAX_FRAME_SIDE and v % 2 == 0 for v in size):
        raise ValueError(f"{name} {width}x{height} is out of range ({allowed})")
    try:
        stamp_region(width, height)
        stamp_region(height, width)
    except ValueError:
        raise ValueError(f"{name} {width}x{height} is too small for the frame stamp "
                         f"({allowed})") from None
    return width, height


def check_seconds(value: Any, name: str) -> float:
    """A finite number of seconds > 0 (``ValueError`` naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return float(value)
