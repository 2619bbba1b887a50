"""Simulation script rules (PROTOCOL §9) and the submit body, checked client-side."""

from __future__ import annotations

import base64
import copy
import io
import warnings
from typing import Any

import numpy as np
import pytest
from PIL import Image

from odyssey_sync._scripts import build_simulation_body, validate_script
from odyssey_sync.config import MAX_PROMPT_CHARS, MAX_SCRIPT_MS, MAX_SCRIPTS_PER_BATCH


def S(ts: int = 0, prompt: str = "a cat", **extra: Any) -> dict[str, Any]:
    return {"timestamp_ms": ts, "start": {"prompt": prompt, **extra}}


def I(ts: int, prompt: str = "it jumps") -> dict[str, Any]:  # noqa: E743
    return {"timestamp_ms": ts, "interact": {"prompt": prompt}}


def E(ts: int) -> dict[str, Any]:
    return {"timestamp_ms": ts, "end": {}}


GOOD = [S(), I(3000), I(6000), E(9000)]


def test_good_script_round_trips() -> None:
    src = copy.deepcopy(GOOD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = validate_script(src, portrait=True)
    assert out == GOOD
    assert src == GOOD  # input untouched
    assert out[0] is not src[0]


def test_minimal_script_and_equal_timestamps() -> None:
    assert validate_script([S(), E(1)], portrait=True) == [S(), E(1)]
    # non-decreasing: an interaction at the same time as the end is allowed
    out = validate_script([S(), I(4000), E(4000)], portrait=True)
    assert out[-1] == E(4000)


def test_tuple_accepted() -> None:
    assert validate_script((S(), E(5)), portrait=True) == [S(), E(5)]


@pytest.mark.parametrize(
    ("script", "exc", "message"),
    [
        ("not a list", TypeError, "script must be a list"),
        ({"timestamp_ms": 0}, TypeError, "script must be a list"),
        ([], ValueError, "script is empty"),
        ([S(), "x", E(5)], TypeError, r"script\[1\]: entry must be a dict"),
        (
            [S(), {"start": {"prompt": "x"}, "interact": {"prompt": "y"}, "timestamp_ms": 1}, E(5)],
            ValueError,
            r"script\[1\]: entry has both 'start' and 'interact'",
        ),
        (
            [S(), I(3000), {"timestamp_ms": 4000, "interact": {"prompt": "p"}, "end": {}}],
            ValueError,
            r"script\[2\]: entry has both 'interact' and 'end'",
        ),
        ([S(), {"timestamp_ms": 10}, E(20)], ValueError, r"script\[1\]: entry has no action"),
        (
            [S(), {"interact": {"prompt": "p"}}, E(20)],
            ValueError,
            r"script\[1\]: missing 'timestamp_ms'",
        ),
        ([S(), {**I(10), "note": 1}, E(20)], ValueError, r"script\[1\]: unknown key 'note'"),
        (
            [S(), I(10), {"timestamp_ms": True, "end": {}}],
            TypeError,
            r"script\[2\]: 'timestamp_ms' must be an int",
        ),
        ([S(), I(10.5), E(20)], TypeError, r"script\[1\]: 'timestamp_ms' must be an int"),  # type: ignore[arg-type]
        ([S(), I("10"), E(20)], TypeError, r"script\[1\]: 'timestamp_ms' must be an int"),  # type: ignore[arg-type]
        ([S(), I(-1), E(20)], ValueError, r"script\[1\]: 'timestamp_ms' must be >= 0"),
        ([I(0), E(20)], ValueError, r"script\[0\]: first entry must be 'start' at timestamp_ms 0"),
        ([S(5), E(20)], ValueError, r"script\[0\]: first entry must be 'start' at timestamp_ms 0"),
        ([E(0)], ValueError, r"script\[0\]: first entry must be 'start'"),
        ([S()], ValueError, r"script\[0\]: last entry must be 'end'"),
        ([S(), I(3000)], ValueError, r"script\[1\]: last entry must be 'end'"),
        ([S(), S(10), E(20)], ValueError, r"script\[1\]: 'start' is only allowed as the first"),
        ([S(), E(10), E(20)], ValueError, r"script\[1\]: 'end' must be the last entry"),
        (
            [S(), I(5000), I(4000), E(9000)],
            ValueError,
            r"script\[2\]: timestamp_ms 4000 is earlier",
        ),
        ([S(), I(5000), E(4000)], ValueError, r"script\[2\]: timestamp_ms 4000 is earlier"),
        ([S(), E(0)], ValueError, r"script\[1\]: 'end' at timestamp_ms 0"),
        ([S(prompt=""), E(10)], ValueError, r"script\[0\]: start.prompt must not be empty"),
        ([S(prompt="   "), E(10)], ValueError, r"script\[0\]: start.prompt must not be empty"),
        (
            [{"timestamp_ms": 0, "start": {}}, E(10)],
            ValueError,
            r"script\[0\]: start.prompt is missing",
        ),
        (
            [{"timestamp_ms": 0, "start": {"prompt": 3}}, E(10)],
            TypeError,
            r"script\[0\]: start.prompt must be a str",
        ),
        (
            [S(), I(3000, ""), E(9000)],
            ValueError,
            r"script\[1\]: interact.prompt must not be empty",
        ),
        (
            [S(), {"timestamp_ms": 3000, "interact": {}}, E(9000)],
            ValueError,
            r"script\[1\]: interact.prompt is missing",
        ),
        (
            [S(), {"timestamp_ms": 3000, "interact": "go"}, E(9000)],
            TypeError,
            r"script\[1\]: 'interact' must be a dict",
        ),
        (
            [S(), {"timestamp_ms": 3000, "interact": {"prompt": "p", "image": "x"}}, E(9000)],
            ValueError,
            r"script\[1\]: unknown key interact.image",
        ),
        ([S(seed=3), E(10)], ValueError, r"script\[0\]: unknown key start.seed"),
        (
            [S(), {"timestamp_ms": 10, "end": {"reason": "x"}}],
            ValueError,
            r"script\[1\]: 'end' value must be \{\}",
        ),
        ([S(), {"timestamp_ms": 10, "end": None}], TypeError, r"script\[1\]: 'end' must be a dict"),
        (
            [S(image=b"not an image at all"), E(10)],
            ValueError,
            r"script\[0\]: start.image: unrecognised",
        ),
        ([S(image=42), E(10)], TypeError, r"script\[0\]: start.image: image must be"),
    ],
)
def test_rules(script: Any, exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        validate_script(script, portrait=True)


def test_batch_index_in_messages() -> None:
    with pytest.raises(
        ValueError, match=r"scripts\[1\]\[0\]: first entry must be 'start' at timestamp_ms 0"
    ):
        build_simulation_body(scripts=[GOOD, [I(0), E(10)]])


def test_close_interactions_warn_once_naming_entries() -> None:
    with pytest.warns(
        UserWarning, match=r"script\[2\], script\[3\]: interaction less than 3000 ms"
    ) as rec:
        out = validate_script([S(), I(3000), I(4000), I(5000), E(9000)], portrait=True)
    assert len(rec) == 1
    assert len(out) == 5


def test_interaction_close_to_start_warns() -> None:
    with pytest.warns(UserWarning, match=r"script\[1\]"):
        validate_script([S(), I(1000), E(9000)], portrait=True)


def test_start_image_encoded_for_orientation() -> None:
    arr = np.zeros((50, 80, 3), np.uint8)
    for portrait, size in ((True, (704, 1280)), (False, (1280, 704))):
        out = validate_script([S(image=arr), E(10)], portrait=portrait)
        url = out[0]["start"]["image"]
        assert url.startswith("data:image/jpeg;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert img.size == size


def test_start_image_none_is_dropped() -> None:
    out = validate_script([S(image=None), E(10)], portrait=True)
    assert out[0] == S()


# --- build_simulation_body ------------------------------------------------------


def test_body_script() -> None:
    body = build_simulation_body(script=GOOD)
    assert body == {"portrait": True, "output_video": True, "script": GOOD}


def test_body_scripts_and_bypass() -> None:
    body = build_simulation_body(
        scripts=[GOOD, GOOD], portrait=False, bypass_prompt_expansion=False
    )
    assert body["scripts"] == [GOOD, GOOD]
    assert body["portrait"] is False
    assert body["bypass_vlm_expansion"] is False
    assert "bypass_vlm_expansion" not in build_simulation_body(script=GOOD)


def test_body_script_url() -> None:
    body = build_simulation_body(script_url="https://example.com/s.json")
    assert body["script_url"] == "https://example.com/s.json"


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({}, ValueError, r"exactly one of script, scripts or script_url \(got none\)"),
        ({"script": GOOD, "script_url": "https://x/y"}, ValueError, "got script and script_url"),
        ({"script": GOOD, "scripts": [GOOD]}, ValueError, "got script and scripts"),
        ({"script": []}, ValueError, "script is empty"),
        ({"scripts": []}, ValueError, "scripts is empty"),
        ({"scripts": GOOD[0]}, TypeError, "scripts must be a list"),
        ({"scripts": [GOOD, "x"]}, TypeError, r"scripts\[1\] must be a list"),
        ({"script_url": "ftp://example.com/s.json"}, ValueError, "http"),
        ({"script_url": "/local/file.json"}, ValueError, "http"),
        ({"script_url": "https://"}, ValueError, "http"),
        ({"script_url": "https://x.com/a b"}, ValueError, "spaces"),
        ({"script_url": 5}, TypeError, "script_url must be a str"),
        ({"script": GOOD, "portrait": 1}, TypeError, "portrait must be a bool"),
        ({"script": GOOD, "bypass_prompt_expansion": "yes"}, TypeError, "bypass_prompt_expansion"),
    ],
)
def test_body_errors(kwargs: dict[str, Any], exc: type[Exception], message: str) -> None:
    with pytest.raises(exc, match=message):
        build_simulation_body(**kwargs)


# --------------------------------------------------------------------------- documented limits


def test_prompt_length_limit_named() -> None:
    at_limit = "x" * MAX_PROMPT_CHARS
    assert validate_script([S(prompt=at_limit), E(3000)], portrait=True)[0]["start"]["prompt"]
    with pytest.raises(ValueError, match=r"script\[1\]: interact.prompt .*MAX_PROMPT_CHARS"):
        validate_script([S(), I(3000, at_limit + "x"), E(6000)], portrait=True)
    with pytest.raises(ValueError, match=r"script\[0\]: start.prompt .*MAX_PROMPT_CHARS = 10000"):
        validate_script([S(prompt=at_limit + "x"), E(3000)], portrait=True)


def test_script_duration_limit_named() -> None:
    assert validate_script([S(), E(MAX_SCRIPT_MS)], portrait=True)[-1]["timestamp_ms"] == (
        MAX_SCRIPT_MS)
    with pytest.raises(ValueError, match=r"script\[1\]: .*MAX_SCRIPT_MS = 600000 ms \(10 min\)"):
        validate_script([S(), E(MAX_SCRIPT_MS + 1)], portrait=True)


def test_batch_size_limit_named() -> None:
    batch = [[S(), E(3000)]] * MAX_SCRIPTS_PER_BATCH
    assert len(build_simulation_body(scripts=batch)["scripts"]) == MAX_SCRIPTS_PER_BATCH
    with pytest.raises(ValueError, match="MAX_SCRIPTS_PER_BATCH = 16"):
        build_simulation_body(scripts=[*batch, [S(), E(3000)]])
