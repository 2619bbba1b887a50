"""WHEP over the HTTP boundary (odyssey_sync._whep), against a scripted server."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from odyssey_sync._deadline import Deadline
from odyssey_sync._http import HttpClient, install_log_redaction
from odyssey_sync._whep import (
    delete_resource,
    fetch_ice_servers,
    parse_ice_servers,
    post_offer,
    whep_endpoint,
)
from odyssey_sync.errors import OdysseyAuthError, OdysseyConnectionError, OdysseyTimeoutError

TOKEN = "spec/tok+en?&=secret"

# --------------------------------------------------------------------------- pure helpers


def test_whep_endpoint_escapes_every_reserved_character() -> None:
    url = whep_endpoint("http://h:1/live/st-1/", TOKEN)
    assert url == "http://h:1/live/st-1/whep?token=spec%2Ftok%2Ben%3F%26%3Dsecret"


def test_parse_ice_servers_keeps_turn_credentials_and_legacy_url() -> None:
    body = {
        "iceServers": [
            {"urls": "stun:a:3478"},
            {"urls": ["turn:b:3478", "turns:b:5349"], "username": "u", "credential": "c"},
            {"url": "stun:legacy:1"},
            {"urls": []},
            "junk",
            {"urls": 5},
        ]
    }
    assert parse_ice_servers(body) == [
        {"urls": ["stun:a:3478"]},
        {"urls": ["turn:b:3478", "turns:b:5349"], "username": "u", "credential": "c"},
        {"urls": ["stun:legacy:1"]},
    ]
    assert parse_ice_servers({"iceServers": []}) == []
    assert parse_ice_servers(["not", "a", "dict"]) == []


# --------------------------------------------------------------------------- HTTP side


class _Whep(http.server.BaseHTTPRequestHandler):
    """A scripted WHEP server: behaviour chosen by the path."""

    seen: list[tuple[str, str, dict[str, str], bytes]] = []  # noqa: RUF012

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n)

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, dict(self.headers), b""))
        if self.path == "/config":
            payload = (
                b'{"iceServers": [{"urls": "turn:x:3478", "username": "u", "credential": "c"}]}'
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = self._body()
        self.seen.append(("POST", self.path, dict(self.headers), body))
        if self.path.startswith("/live/bad-token/"):
            self.send_error(401)
        elif self.path.startswith("/live/missing/"):
            self.send_error(404)
        elif self.path.startswith("/live/broken/"):
            self.send_error(503)
        elif self.path.startswith("/live/not-sdp/"):
            self.send_response(201)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        else:
            answer = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
            self.send_response(201)
            self.send_header("Content-Type", "application/sdp")
            self.send_header("Location", "resource/abc")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    def do_DELETE(self) -> None:
        self.seen.append(("DELETE", self.path, dict(self.headers), b""))
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def whep_http() -> Iterator[str]:
    _Whep.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Whep)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="test-whep-http", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_ice_config_from_origin_keeps_credentials(whep_http: str) -> None:
    with HttpClient() as s:
        servers = fetch_ice_servers(s, whep_http + "/live/st-1", Deadline(5))
    assert servers == [{"urls": ["turn:x:3478"], "username": "u", "credential": "c"}]
    assert _Whep.seen[0][1] == "/config"  # the path of webrtc_url is dropped


def test_ice_config_failure_means_host_candidates_only() -> None:
    with HttpClient() as s:
        assert fetch_ice_servers(s, "http://127.0.0.1:9/live/x", Deadline(2)) == []


def test_post_offer_sends_sdp_and_resolves_location(whep_http: str) -> None:
    with HttpClient() as s:
        answer, resource = post_offer(s, whep_http + "/live/st-1", TOKEN, "v=0\r\n", Deadline(5))
        assert answer.startswith("v=0")
        method, path, headers, body = _Whep.seen[-1]
        assert (method, body) == ("POST", b"v=0\r\n")
        assert path == "/live/st-1/whep?token=spec%2Ftok%2Ben%3F%26%3Dsecret"
        assert headers["Content-Type"] == "application/sdp"
        assert "Authorization" not in headers
        # relative Location resolved against the POST URL
        assert resource == whep_http + "/live/st-1/resource/abc"
        assert delete_resource(s, resource, 2.0)
        assert _Whep.seen[-1][:2] == ("DELETE", "/live/st-1/resource/abc")
        assert "token" not in _Whep.seen[-1][1]


def test_post_offer_401_is_value_error_without_the_token(whep_http: str) -> None:
    with HttpClient() as s, pytest.raises(ValueError) as info:
        post_offer(s, whep_http + "/live/bad-token", TOKEN, "v=0\r\n", Deadline(5))
    assert isinstance(info.value, OdysseyAuthError)
    assert info.value.status == 401
    assert "secret" not in str(info.value) and "secret" not in repr(info.value)


def test_post_offer_404_is_connection_error(whep_http: str) -> None:
    with HttpClient() as s, pytest.raises(ConnectionError) as info:
        post_offer(s, whep_http + "/live/missing", TOKEN, "v=0\r\n", Deadline(5))
    assert isinstance(info.value, OdysseyConnectionError)
    assert info.value.status == 404
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(("path", "status"), [("/live/broken", 503), ("/live/not-sdp", 201)])
def test_post_offer_other_failures_are_connection_errors(
    whep_http: str, path: str, status: int
) -> None:
    with HttpClient() as s, pytest.raises(OdysseyConnectionError) as info:
        post_offer(s, whep_http + path, TOKEN, "v=0\r\n", Deadline(5))
    assert info.value.status == status


def test_post_offer_network_failure_hides_the_token() -> None:
    with HttpClient() as s, pytest.raises(OdysseyConnectionError) as info:
        post_offer(s, "http://127.0.0.1:9/live/x", TOKEN, "v=0\r\n", Deadline(5))
    assert "secret" not in str(info.value)
    assert info.value.__cause__ is None


def test_post_offer_respects_an_expired_deadline(whep_http: str) -> None:
    with HttpClient() as s, pytest.raises(OdysseyTimeoutError):
        post_offer(s, whep_http + "/live/st-1", TOKEN, "v=0\r\n", Deadline(0))




# --------------------------------------------------------------------------- secrets in logs


def _records_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_the_spectator_token_never_reaches_a_log_record(
    whep_http: str, caplog: pytest.LogCaptureFixture
) -> None:
    # issue 10 item 9: urllib3 logs '"POST /live/st-1/whep?token=... HTTP/1.1" 201' at DEBUG
    caplog.set_level(logging.DEBUG)
    with HttpClient() as s:
        _, resource = post_offer(s, whep_http + "/live/st-1", TOKEN, "v=0\r\n", Deadline(5))
        assert resource is not None
        delete_resource(s, resource, 2.0)
        with pytest.raises(OdysseyAuthError):
            post_offer(s, whep_http + "/live/bad-token", TOKEN, "v=0\r\n", Deadline(5))
    text = _records_text(caplog)
    assert "/whep?token=***" in text  # the request line was logged, with the value masked
    assert "secret" not in text


def test_the_log_filter_is_what_hides_the_token(
    whep_http: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the filter urllib3's record does carry the token (so the test above can fail)."""
    caplog.set_level(logging.DEBUG)
    with HttpClient() as s:
        pool_logger = logging.getLogger("urllib3.connectionpool")
        saved = list(pool_logger.filters)
        for f in saved:
            pool_logger.removeFilter(f)
        try:
            post_offer(s, whep_http + "/live/st-1", TOKEN, "v=0\r\n", Deadline(5))
        finally:
            for f in saved:
                pool_logger.addFilter(f)
    assert "secret" in _records_text(caplog)
    install_log_redaction()  # idempotent: still exactly one filter
    assert len(logging.getLogger("urllib3.connectionpool").filters) == len(saved)


def test_network_failure_message_names_the_url_without_the_token() -> None:
    with HttpClient() as s, pytest.raises(OdysseyConnectionError) as info:
        post_offer(s, "http://127.0.0.1:9/live/x", TOKEN, "v=0\r\n", Deadline(5))
    assert "http://127.0.0.1:9/live/x/whep" in str(info.value)
    assert "token" not in str(info.value) and "secret" not in str(info.value)
