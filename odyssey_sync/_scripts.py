"""Simulation scripts: client-side validation and the submit body (PROTOCOL §9, §3.9).

The service enforces the script rules itself, but only after an upload and a
queue wait; the official clients check almost nothing (PROTOCOL §15.25). Here
every documented rule is checked before any network call, and each message
names the offending entry and key (``script[2]: …``, ``scripts[1][0]: …``) so
a long batch can be fixed without guessing.

Pure functions on the caller's thread; no network, no threads.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from ._images import encode_image
from .config import MAX_PROMPT_CHARS, MAX_SCRIPT_MS, MAX_SCRIPTS_PER_BATCH

__all__ = [
    "ACTIONS",
    "MIN_INTERACTION_GAP_MS",
    "build_simulation_body",
    "validate_script",
]

#: The action keys; each entry carries exactly one of them.
ACTIONS = ("start", "interact", "end")
#: The service documentation recommends at least this gap between interactions.
MIN_INTERACTION_GAP_MS = 3000

_ENTRY_KEYS = frozenset({"timestamp_ms", *ACTIONS})
_START_KEYS = frozenset({"prompt", "image"})


def validate_script(
    script: Any, *, portrait: bool, index: int | None = None
) -> list[dict[str, Any]]:
    """Check one script against every rule of PROTOCOL §9 and return a clean copy.

    Non-blocking apart from encoding a ``start.image`` (CPU only); runs on the
    calling thread.

    Rules: a non-empty list of dicts; each dict has an int ``timestamp_ms`` ≥ 0
    (``bool`` refused) and exactly one of ``start`` / ``interact`` / ``end``,
    and no other key; the first entry is ``start`` at ``timestamp_ms`` 0 and is
    the only ``start``; the last is ``end`` (value ``{}``, after 0) and the only
    ``end``; timestamps never decrease and stay within ``MAX_SCRIPT_MS``
    (10 min); prompts are non-empty strings of at most ``MAX_PROMPT_CHARS``
    characters (limits in :mod:`odyssey_sync.config`).
    ``start`` may carry ``image`` (any input :func:`~odyssey_sync._images.encode_image`
    accepts, or ``None``), which is encoded for the ``portrait`` orientation.
    Interactions closer than 3000 ms to the previous action only warn
    (:class:`UserWarning`), as the service merely recommends the gap.

    Args:
        script: the entries.
        portrait: orientation the start image is fitted to.
        index: position in a batch (``scripts=``); changes message prefixes
            from ``script[i]`` to ``scripts[index][i]``.

    Returns:
        New entry dicts holding only ``timestamp_ms`` and the action (the input
        is not modified).

    Raises:
        TypeError: a value has the wrong type (script not a list, an entry not a
            dict, a non-int timestamp, a non-str prompt, an unsupported image type).
        ValueError: a rule is broken, or the start image is invalid.
    """
    name = "script" if index is None else f"scripts[{index}]"
    if isinstance(script, (str, bytes)) or not isinstance(script, Sequence):
        raise TypeError(f"{name} must be a list of entries, not {type(script).__name__}")
    if not script:
        raise ValueError(f"{name} is empty; it needs at least a 'start' and an 'end' entry")

    out: list[dict[str, Any]] = []
    last = len(script) - 1
    prev_ts = 0
    prev_action_ts: int | None = None
    close_gaps: list[int] = []
    for i, entry in enumerate(script):
        where = f"{name}[{i}]"
        ts, action, value = _entry_parts(entry, where)
        if i == 0 and (action != "start" or ts != 0):
            raise ValueError(f"{where}: first entry must be 'start' at timestamp_ms 0")
        if action == "start" and i != 0:
            raise ValueError(f"{where}: 'start' is only allowed as the first entry")
        if action == "end" and i != last:
            raise ValueError(f"{where}: 'end' must be the last entry")
        if i == last and action != "end":
            raise ValueError(f"{where}: last entry must be 'end'")
        if ts < prev_ts:
            raise ValueError(
                f"{where}: timestamp_ms {ts} is earlier than the previous entry's "
                f"{prev_ts}; entries must be in chronological order"
            )
        if action == "end" and ts == 0:
            raise ValueError(f"{where}: 'end' at timestamp_ms 0 would make an empty video")
        if action == "interact":
            if prev_action_ts is not None and ts - prev_action_ts < MIN_INTERACTION_GAP_MS:
                close_gaps.append(i)
            prev_action_ts = ts
        elif action == "start":
            prev_action_ts = ts
        prev_ts = ts
        out.append({"timestamp_ms": ts, action: _action_value(action, value, where, portrait)})

    if close_gaps:
        listed = ", ".join(f"{name}[{i}]" for i in close_gaps)
        warnings.warn(
            f"{listed}: interaction less than {MIN_INTERACTION_GAP_MS} ms after the previous "
            "one; the service recommends at least 3 s between interactions",
            UserWarning,
            stacklevel=2,
        )
    return out


def build_simulation_body(
    script: Any = None,
    scripts: Any = None,
    script_url: Any = None,
    portrait: bool = True,
    bypass_prompt_expansion: bool | None = None,
) -> dict[str, Any]:
    """Validate the arguments of ``simulate()`` and build the ``POST /simulation-jobs`` body.

    Non-blocking apart from image encoding (CPU only); runs on the calling thread.

    Exactly one of ``script`` (one script), ``scripts`` (a non-empty batch of
    scripts, one output stream each, at most ``MAX_SCRIPTS_PER_BATCH``) and
    ``script_url`` (an ``http(s)`` URL
    of a JSON script, fetched by the service) must be given (not ``None``).

    Returns:
        ``{"portrait", "output_video": True, <source>, ["bypass_vlm_expansion"]}``.

    Raises:
        TypeError: wrong argument types (see :func:`validate_script`).
        ValueError: zero or several sources, a bad URL, or a script rule broken.
    """
    if not isinstance(portrait, bool):
        raise TypeError(f"portrait must be a bool, not {type(portrait).__name__}")
    if bypass_prompt_expansion is not None and not isinstance(bypass_prompt_expansion, bool):
        raise TypeError("bypass_prompt_expansion must be a bool or None")
    given = [n for n, v in (("script", script), ("scripts", scripts), ("script_url", script_url))
             if v is not None]
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise ValueError(f"pass exactly one of script, scripts or script_url (got {what})")

    body: dict[str, Any] = {"portrait": portrait, "output_video": True}
    if script is not None:
        body["script"] = validate_script(script, portrait=portrait)
    elif scripts is not None:
        if isinstance(scripts, (str, bytes)) or not isinstance(scripts, Sequence):
            raise TypeError(f"scripts must be a list of scripts, not {type(scripts).__name__}")
        if not scripts:
            raise ValueError("scripts is empty; pass at least one script")
        if len(scripts) > MAX_SCRIPTS_PER_BATCH:
            raise ValueError(
                f"scripts holds {len(scripts)} scripts, over the limit "
                f"MAX_SCRIPTS_PER_BATCH = {MAX_SCRIPTS_PER_BATCH} per job; split the batch"
            )
        body["scripts"] = [validate_script(s, portrait=portrait, index=i)
                           for i, s in enumerate(scripts)]
    else:
        body["script_url"] = _check_url(script_url)
    if bypass_prompt_expansion is not None:
        body["bypass_vlm_expansion"] = bypass_prompt_expansion
    return body


# --------------------------------------------------------------------------


def _entry_parts(entry: Any, where: str) -> tuple[int, str, Any]:
    if not isinstance(entry, dict):
        raise TypeError(f"{where}: entry must be a dict, not {type(entry).__name__}")
    unknown = [k for k in entry if k not in _ENTRY_KEYS]
    if unknown:
        raise ValueError(
            f"{where}: unknown key {unknown[0]!r} (allowed: 'timestamp_ms', 'start', "
            "'interact', 'end')"
        )
    if "timestamp_ms" not in entry:
        raise ValueError(f"{where}: missing 'timestamp_ms'")
    ts = entry["timestamp_ms"]
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise TypeError(f"{where}: 'timestamp_ms' must be an int, not {type(ts).__name__}")
    if ts < 0:
        raise ValueError(f"{where}: 'timestamp_ms' must be >= 0, not {ts}")
    if ts > MAX_SCRIPT_MS:
        raise ValueError(
            f"{where}: 'timestamp_ms' {ts} exceeds the longest script, "
            f"MAX_SCRIPT_MS = {MAX_SCRIPT_MS} ms ({MAX_SCRIPT_MS // 60_000} min)"
        )
    actions = [a for a in ACTIONS if a in entry]
    if not actions:
        raise ValueError(f"{where}: entry has no action (one of 'start', 'interact', 'end')")
    if len(actions) > 1:
        raise ValueError(f"{where}: entry has both {actions[0]!r} and {actions[1]!r}")
    return ts, actions[0], entry[actions[0]]


def _action_value(action: str, value: Any, where: str, portrait: bool) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{where}: {action!r} must be a dict, not {type(value).__name__}")
    if action == "end":
        if value:
            raise ValueError(f"{where}: 'end' value must be {{}} (got keys {sorted(value)})")
        return {}
    allowed = _START_KEYS if action == "start" else frozenset({"prompt"})
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown key {action}.{unknown[0]}")
    prompt = value.get("prompt")
    if prompt is None:
        raise ValueError(f"{where}: {action}.prompt is missing")
    if not isinstance(prompt, str):
        raise TypeError(f"{where}: {action}.prompt must be a str, not {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{where}: {action}.prompt must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{where}: {action}.prompt is {len(prompt)} characters, over the limit "
            f"MAX_PROMPT_CHARS = {MAX_PROMPT_CHARS}"
        )
    out: dict[str, Any] = {"prompt": prompt}
    image = value.get("image")
    if action == "start" and image is not None:
        try:
            out["image"] = encode_image(image, portrait=portrait)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}: start.image: {exc}") from exc
    return out


def _check_url(url: Any) -> str:
    if not isinstance(url, str):
        raise TypeError(f"script_url must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("script_url must be an absolute http:// or https:// URL")
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise ValueError("script_url must not contain spaces or control characters")
    return url
