"""The HTTP boundary (odyssey_sync._http): secrets, URL naming, header parsing."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import pytest
import requests

from odyssey_sync._http import (
    HttpClient,
    mask_secret_queries,
    origin,
    retry_after,
    strip_query,
    url_path,
    validate_id,
)
from odyssey_sync.errors import OdysseyConnectionError, OdysseyTimeoutError


def test_strip_query_and_origin() -> None:
    url = "https://h:8443/live/x/whep?token=s3cr3t#frag"
    assert strip_query(url) == "https://h:8443/live/x/whep"
    assert origin(url) == "https://h:8443"


def test_mask_secret_queries() -> None:
    line = '"POST /live/x/whep?token=abc%2Fdef&other=1 HTTP/1.1" 201 api_key=k1'
    assert mask_secret_queries(line) == (
        '"POST /live/x/whep?token=***&other=1 HTTP/1.1" 201 api_key=k1')
    assert mask_secret_queries("/c/s?access_token=x&session_token=y") == (
        "/c/s?access_token=***&session_token=***")


def test_mask_secrets_hides_current_values() -> None:
    secrets: list[str | None] = ["sk-abcdef", None, "abc"]  # 3 chars: too short to mask
    with HttpClient(secrets=lambda: secrets) as http:
        assert http.mask_secrets("key sk-abcdef echoed, abc kept") == "key *** echoed, abc kept"


def test_validate_id_and_url_path() -> None:
    assert validate_id("st-1", "stream_id") == "st-1"
    for bad in ("", " ", ".", "..", "a\x7fb"):
        with pytest.raises(ValueError, match="stream_id"):
            validate_id(bad, "stream_id")
    assert url_path("recordings", "a/b?c") == "/recordings/a%2Fb%3Fc"


class _Headers:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [("3", 3.0, 3.0), ("0", 0.05, 0.05), ("-4", 0.05, 0.05), ("in 30 s", 25.0, 31.0)],
)
def test_retry_after(value: str, low: float, high: float) -> None:
    if value == "in 30 s":  # an HTTP date, built now (collection may be long before)
        value = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = retry_after(_Headers({"Retry-After": value}))  # type: ignore[arg-type]
    assert seconds is not None and low <= seconds <= high


@pytest.mark.parametrize("value", ["", "soon", "nan"])
def test_retry_after_unusable(value: str) -> None:
    assert retry_after(_Headers({"Retry-After": value})) is None  # type: ignore[arg-type]


def test_unreachable_url_is_named_and_chained() -> None:
    with HttpClient() as http, pytest.raises(OdysseyConnectionError) as info:
        http.request("GET", "http://127.0.0.1:9/api/x?limit=5", what="listing", timeout=2,
                     ids={"stream_id": "st-1"})
    assert "cannot reach http://127.0.0.1:9/api/x" in str(info.value)
    assert "limit=5" not in str(info.value)  # the query never reaches a message
    assert info.value.stream_id == "st-1"
    assert isinstance(info.value.__cause__, requests.ConnectionError)


def test_a_url_with_a_secret_chains_nothing() -> None:
    with HttpClient() as http, pytest.raises(OdysseyConnectionError) as info:
        http.request("GET", "http://127.0.0.1:9/x?token=sekrit", what="offer", timeout=2)
    assert info.value.__cause__ is None and "sekrit" not in str(info.value)


def test_timeouts_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    def stall(*args: Any, **kwargs: Any) -> Any:
        raise requests.ReadTimeout("read timed out")

    with HttpClient() as http:
        monkeypatch.setattr(requests.Session, "request", stall)
        with pytest.raises(OdysseyTimeoutError, match=r"listing timed out after 1\.5 s"):
            http.request("GET", "http://h/x", what="listing", timeout=1.5)
