"""Unit tests of the client's pure parts: config, status machine, reply FIFO, URLs, RTC helpers."""

from __future__ import annotations

import pytest

from odyssey_sync._rtc import (
    DATA_CHANNEL_FALLBACK_BYTES,
    ice_servers_from_config,
    max_message_size_from_sdp,
)
from odyssey_sync._signaling import client_socket_url, config_url, normalize_signaling_url
from odyssey_sync._whep import parse_ice_servers
from odyssey_sync.client import Odyssey
from odyssey_sync.config import DEFAULT_API_URL, ClientConfig

# ------------------------------------------------------------------ config


def test_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ODYSSEY_API_URL", raising=False)
    c = ClientConfig()
    assert c.api_url == DEFAULT_API_URL
    assert (c.connect_timeout, c.request_timeout, c.stream_timeout) == (60, 10, 30)
    assert (c.max_retries, c.initial_retry_delay, c.max_retry_delay) == (5, 1.0, 2.0)
    assert c.queue_timeout == 30 and c.ring_size == 4 and c.frame_format == "rgb24"
    assert c.low_latency is True and c.enable_telemetry is False
    assert [c.retry_delay(n) for n in range(5)] == [1.0, 2.0, 2.0, 2.0, 2.0]


def test_config_reads_env_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODYSSEY_API_URL", "http://127.0.0.1:9")
    assert ClientConfig().api_url == "http://127.0.0.1:9"
    assert ClientConfig(api_url="https://x.example").api_url == "https://x.example"


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"connect_timeout": 0}, ValueError),
        ({"stream_timeout": -1}, ValueError),
        ({"request_timeout": "10"}, TypeError),
        ({"queue_timeout": float("nan")}, ValueError),
        ({"max_retries": -1}, ValueError),
        ({"max_retries": 1.5}, TypeError),
        ({"ring_size": 1}, ValueError),
        ({"frame_format": "yuv"}, ValueError),
        ({"callback_workers": 0}, ValueError),
        ({"callback_workers": 3}, ValueError),
        ({"low_latency": 1}, TypeError),
        ({"api_url": "ftp://x"}, ValueError),
        ({"api_url": ""}, TypeError),
        ({"retry_backoff_multiplier": 0.5}, ValueError),
    ],
)
def test_config_validation(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        ClientConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="connect_timout"):
        Odyssey("ody_x", connect_timout=5)
    with pytest.raises(TypeError):
        Odyssey(123)  # type: ignore[arg-type]


def test_repr_never_shows_the_key() -> None:
    c = Odyssey("ody_secret_key_value", api_url="http://127.0.0.1:9")
    try:
        assert "secret" not in repr(c) and "ody_…" in repr(c)
        assert "disconnected" in repr(c)
    finally:
        c.close()


# ------------------------------------------------------------ status machine


# -------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("wss://sig.example/", "wss://sig.example"),
        ("ws://h:1/p//", "ws://h:1/p"),
        ("https://sig.example", "wss://sig.example"),
        ("http://127.0.0.1:8/sig", "ws://127.0.0.1:8/sig"),
        ("sig.example:9", "ws://sig.example:9"),
    ],
)
def test_normalize_signaling_url(raw: str, normalised: str) -> None:
    assert normalize_signaling_url(raw) == normalised


def test_client_socket_url_escapes_id_and_token() -> None:
    url = client_socket_url("https://sig/", "a/b c", "x+y/z=")
    assert url == "wss://sig/client/a%2Fb%20c?token=x%2By%2Fz%3D"
    with pytest.raises(ValueError):
        client_socket_url("ws://sig", "", "t")
    with pytest.raises(ValueError):
        normalize_signaling_url(" ")


def test_config_url() -> None:
    assert config_url("wss://sig.example/r1") == "https://sig.example/r1/config"
    assert config_url("ws://h:1") == "http://h:1/config"


# ------------------------------------------------------------- RTC helpers


def test_ice_servers_keep_turn_credentials_and_empty_means_none() -> None:
    parsed = parse_ice_servers({"iceServers": [
        {"urls": "turn:t.example:3478", "username": "u", "credential": "c"},
        {"urls": ["stun:s.example"]},
        {"urls": 5},
        "junk",
    ]})
    servers = ice_servers_from_config(parsed)
    assert len(servers) == 2
    assert (servers[0].username, servers[0].credential) == ("u", "c")
    assert servers[1].urls == ["stun:s.example"]
    assert ice_servers_from_config([]) == []


def test_max_message_size_from_sdp() -> None:
    sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=max-message-size:262144\r\n"
    assert max_message_size_from_sdp(sdp) == 262144
    assert max_message_size_from_sdp("v=0\r\n") == DATA_CHANNEL_FALLBACK_BYTES
    assert max_message_size_from_sdp("a=max-message-size:0\r\n") == DATA_CHANNEL_FALLBACK_BYTES


def test_remote_candidates_parsed_and_filtered() -> None:
    import asyncio
    from typing import Any

    from odyssey_sync._rtc import RtcPeer

    added: list[Any] = []

    class NoEvents:
        def frame_written(self, seq: int) -> None:
            raise AssertionError("no frames in this test")

    class FakePc:
        async def addIceCandidate(self, candidate: Any) -> None:
            added.append(candidate)

    async def scenario() -> None:
        peer = RtcPeer(ice_servers=[], sink=None, events=NoEvents())  # type: ignore[arg-type]
        real = peer._pc
        peer._pc = FakePc()  # type: ignore[assignment]
        host = "1 1 udp 2130706431 192.0.2.7 50000 typ host"
        await peer.add_remote_candidate({"candidate": "", "sdpMid": "0"})  # end-of-candidates
        await peer.add_remote_candidate({"candidate": "candidate:" + host})  # no mid/index
        await peer.add_remote_candidate({"candidate": "garbage", "sdpMid": "0"})
        await peer.add_remote_candidate({"candidate": "candidate:" + host, "sdpMid": "0",
                                         "sdpMLineIndex": 0})
        await peer.add_remote_candidate({"candidate": host, "sdpMLineIndex": 1})  # no prefix
        peer._pc = real
        await peer.close()

    asyncio.run(scenario())
    assert [(c.ip, c.port, c.sdpMid, c.sdpMLineIndex) for c in added] == [
        ("192.0.2.7", 50000, "0", 0),
        ("192.0.2.7", 50000, None, 1),
    ]
