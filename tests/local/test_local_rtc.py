"""The local server's signaling WebSocket and WebRTC streamer, against an independent peer.

Every test serves the real-time half on 127.0.0.1 (tests/local/rtc_peer.py) at
320×176 and drives it with a plain aiortc answerer, as the official Python
client would. No timing assertions: counts, orders and contents only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import Image

from odyssey_sync.local.realtime.encoder import codec_preferences, negotiated_video_codec
from tests.local.rtc_peer import (
    RealtimeServer,
    TestPeer,
    run_scenario,
    stream_frames,
)


@contextlib.asynccontextmanager
async def connected(server: RealtimeServer, **kwargs: Any) -> AsyncIterator[TestPeer]:
    """A test peer connected to a new session of *server* (``add_session(**kwargs)``),
    closed on exit."""
    session_id, token = server.add_session(**kwargs)
    peer = TestPeer()
    try:
        await peer.connect(server.base_url, session_id, token)
        yield peer
    finally:
        await peer.close()


def tail_from_zero(frames: list[int]) -> list[int]:
    """The frames from the stream's frame 0 on (skips idle frames still in flight)."""
    zeros = [i for i, f in enumerate(frames[:6]) if f == 0]
    assert zeros, f"stream frame 0 not among the first frames: {frames[:10]}"
    return frames[zeros[-1]:]


def assert_consecutive(frames: list[int]) -> None:
    assert frames == list(range(frames[0], frames[0] + len(frames))), frames


def png_data_url(width: int = 64, height: int = 48) -> tuple[str, bytes]:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buf, format="PNG")
    data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode(), data


# --- signaling ---------------------------------------------------------------


def test_ice_config_endpoints_have_no_servers() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with aiohttp.ClientSession() as http:
            for path in ("/sig/config", "/config"):
                async with http.get(server.base_url + path) as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"iceServers": []}

    run_scenario(scenario)


@pytest.mark.parametrize(
    ("session_id", "token", "status"),
    [
        ("sess-1", "wrong", 401),  # bad / expired token
        ("sess-1", "", 401),  # missing token
        ("sess-1", "tok-2", 401),  # a valid token of another allocation
        ("sess-unknown", "tok-1", 401),
    ],
)
def test_bad_tokens_are_rejected_before_the_upgrade(
    session_id: str, token: str, status: int
) -> None:
    async def scenario(server: RealtimeServer) -> None:
        server.add_session("sess-1", "tok-1")
        server.add_session("sess-2", "tok-2")
        async with aiohttp.ClientSession() as http:
            url = server.base_url.replace("http", "ws") + f"/sig/client/{session_id}"
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(url, params={"token": token} if token else None)
            assert info.value.status == status
        assert "session_closed" not in server.sink.names()

    run_scenario(scenario)


def test_freed_allocation_is_404_at_the_upgrade() -> None:
    async def scenario(server: RealtimeServer) -> None:
        server.add_session("sess-1", "tok-1")
        server.sink.session_owner = lambda session_id: None  # type: ignore[method-assign]
        async with aiohttp.ClientSession() as http:
            url = server.base_url.replace("http", "ws") + "/sig/client/sess-1"
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(url, params={"token": "tok-1"})
            assert info.value.status == 404

    run_scenario(scenario)


def test_offer_has_video_and_channels_but_no_audio() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            sdp = peer.offer_sdp
            assert sdp.count("m=video") == 1
            assert "m=audio" not in sdp
            assert "m=application" in sdp
            assert "a=sendonly" in sdp
            assert "a=candidate:" in sdp  # candidates in the offer, nothing trickled
            assert set(peer.channels) == {"clientToStreamer", "streamerToClient"}
            for channel in peer.channels.values():
                assert channel.ordered
                assert channel.maxRetransmits is None and channel.maxPacketLifeTime is None
            # exactly one offer: nothing else arrives on the socket
            await peer.send_ws({"type": "keepalive"})
            with pytest.raises(asyncio.TimeoutError):
                await peer.expect_signal(timeout=0.3)

    run_scenario(scenario)


# --- stream lifecycle -------------------------------------------------------


def test_rapid_updates_are_acknowledged_and_applied_in_arrival_order() -> None:
    """Scenes are prepared off the loop; order and the reported frames stay exact."""
    from odyssey_sync.local.render.world import applied_prompt

    prompts = [f"scene {i}" for i in range(5)]

    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            await peer.send({"type": "interactive_stream_start", "prompt": "a quay",
                             "portrait": False})
            await peer.expect("stream_started")
            await peer.wait_frames(2)
            for prompt in prompts:  # back to back, no waiting for acks
                await peer.send({"type": "update", "prompt": prompt})
            acks = [await peer.expect("update_acknowledged") for _ in prompts]
            assert [a["prompt"] for a in acks] == [applied_prompt(p) for p in prompts]
            for _ in range(100):  # every prepared scene installed (no end-of-stream flush)
                if len(server.sink.names()) > len(prompts):
                    break
                await peer.wait_frames(1)
            await peer.send({"type": "interactive_stream_end"})
            await peer.expect("stream_ended")
        interacted = [c for n, c in server.sink.calls if n == "stream_interacted"]
        assert [c[2] for c in interacted] == prompts
        frames = [c[1] for c in interacted]
        assert frames == sorted(frames)

    run_scenario(scenario)


def test_full_lifecycle_two_streams_on_one_connection() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            # idle picture before any stream: the track is live
            await peer.wait_frames(3)

            await peer.send({"type": "interactive_stream_start", "prompt": "a cat",
                             "portrait": False, "input_image_base64": None})
            started = await peer.expect("stream_started")
            assert started["stream_id"].startswith("st-")
            assert isinstance(started["applied_prompt"], str) and started["applied_prompt"]
            mark = len(peer.stamps)
            await peer.wait_frames(30)
            frames = tail_from_zero(stream_frames(peer, mark))
            assert len(frames) >= 20
            assert_consecutive(frames)
            assert peer.frame_size == [320, 176]

            await peer.send({"type": "update", "prompt": "a dog"})
            ack = await peer.expect("update_acknowledged")
            assert isinstance(ack["prompt"], str) and ack["prompt"]
            await peer.wait_frames(3)
            await peer.send({"type": "interactive_stream_end"})
            await peer.expect("stream_ended")

            # second stream: over the WebSocket, with an image, portrait
            url, image = png_data_url()
            await peer.send_ws({"type": "interactive_stream_start", "prompt": "a beach",
                                "portrait": True, "input_image_base64": url})
            second = await peer.expect("stream_started")
            assert second["stream_id"] != started["stream_id"]
            mark = len(peer.stamps)
            await peer.wait_frames(15)
            frames = tail_from_zero(stream_frames(peer, mark))
            assert_consecutive(frames)
            assert peer.frame_size == [176, 320]
            await peer.send({"type": "interactive_stream_end"})
            await peer.expect("stream_ended")
        await asyncio.sleep(0)  # let the server run its socket-close cleanup
        for _ in range(100):
            if "session_closed" in server.sink.names():
                break
            await asyncio.sleep(0.02)

        calls = server.sink.calls
        names = server.sink.names()
        assert names == ["stream_started", "stream_interacted", "stream_ended",
                         "stream_started", "stream_ended", "session_closed"]
        first = calls[0][1]
        assert first["stream_id"] == started["stream_id"]
        assert (first["width"], first["height"], first["portrait"]) == (320, 176, False)
        assert first["image"] is None and first["prompt"] == "a cat"
        interacted = calls[1][1]
        assert interacted[0] == started["stream_id"] and interacted[2] == "a dog"
        assert interacted[1] > 0
        assert calls[2][1][0] == started["stream_id"] and calls[2][1][1] >= 30
        second_call = calls[3][1]
        assert second_call["image"] == image
        assert (second_call["width"], second_call["height"]) == (176, 320)

    run_scenario(scenario)


def test_client_disconnecting_ends_the_running_stream() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            started = await peer.start_stream("x")
            await peer.close()  # client_disconnecting + close 1000, no stream end
        for _ in range(200):
            if "session_closed" in server.sink.names():
                break
            await asyncio.sleep(0.02)
        assert server.sink.names()[-2:] == ["stream_ended", "session_closed"]
        assert server.sink.calls[-2][1][0] == started["stream_id"]
        assert not server.hub.connections

    run_scenario(scenario)


def test_bad_input_is_ignored_or_answered() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            assert peer.ws is not None
            await peer.ws.send_str("this is not json")
            await peer.ws.send_str("[1, 2, 3]")
            await peer.send_ws({"type": "no_such_type"})
            await peer.send_ws({"no": "type"})
            peer.channels["clientToStreamer"].send("{broken")
            await peer.send({"type": "mystery"})

            await peer.send({"type": "update", "prompt": "x"})
            err = await peer.expect("interactive_stream_error")
            assert err["reason"] == "no_active_stream"
            await peer.send({"type": "interactive_stream_end"})
            await peer.expect("stream_ended")  # replied even without a stream
            await peer.send({"type": "interactive_stream_start", "prompt": 5})
            assert (await peer.expect("interactive_stream_error"))["reason"] == "invalid_request"
            await peer.send_ws({"type": "interactive_stream_start",
                                "input_image_base64": "data:image/png;base64,AAAA"})
            assert (await peer.expect("interactive_stream_error"))["reason"] == "invalid_image"
            await peer.send_ws({"type": "interactive_stream_start",
                                "input_image_base64": "not a data url"})
            assert (await peer.expect("interactive_stream_error"))["reason"] == "invalid_image"

            # missing fields take the protocol defaults: prompt "", portrait true
            await peer.send({"type": "interactive_stream_start"})
            await peer.expect("stream_started")
            await peer.send({"type": "update"})
            assert (await peer.expect("interactive_stream_error"))["reason"] == "invalid_request"
            await peer.send({"type": "interactive_stream_end"})
            await peer.expect("stream_ended")
        started = [c for n, c in server.sink.calls if n == "stream_started"]
        assert started[0]["portrait"] is True and started[0]["prompt"] == ""
        # the recording's stamp origin: frame 0's slot on the monotonic clock
        origin = started[0]["stamp_origin"]
        assert isinstance(origin, float) and 0 < origin <= time.monotonic() + 1.0

    run_scenario(scenario)


def test_bypass_requires_privilege() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            await peer.send({"type": "interactive_stream_start", "prompt": "x",
                             "bypass_vlm_expansion": True})
            err = await peer.expect("interactive_stream_error")
            assert err["reason"] == "bypass_not_allowed"
            await peer.send({"type": "interactive_stream_start", "prompt": "x",
                             "bypass_vlm_expansion": False})
            await peer.expect("stream_started")

    run_scenario(scenario, bypass_privileged=False)


def test_stream_limit_ends_the_stream_then_the_connection() -> None:
    """PROTOCOL §17: at the stream limit the service's error, then the server closes
    the connection (signaling socket and peer) and frees the slot at once."""
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            started = await peer.start_stream("x")
            err = await peer.expect("interactive_stream_error", timeout=5)
            assert err == {"type": "interactive_stream_error", "reason": "session_timeout",
                           "message": "Stream ended: credit lease expired"}
            closed = await peer.expect_signal(timeout=5)
            assert closed == {"type": "_closed", "code": 1000}
            deadline = time.monotonic() + 5
            while "session_closed" not in server.sink.names():  # the handler's cleanup
                assert time.monotonic() < deadline, server.sink.names()
                await asyncio.sleep(0.02)
            names = server.sink.names()
            assert names[-2:] == ["stream_ended", "session_closed"], names
            assert server.sink.calls[-2][1][0] == started["stream_id"]
            assert server.sink.vanished == {"sess-1": False}  # the server closed it
            while peer.pc is not None and peer.pc.connectionState not in ("closed", "failed"):
                assert time.monotonic() < deadline, peer.pc.connectionState
                await asyncio.sleep(0.05)

    run_scenario(scenario, stream_limit=0.5)


def test_large_start_message_over_websocket() -> None:
    """A multi-megabyte start (image as data URL) goes through the WebSocket."""

    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            buf = io.BytesIO()
            noise = Image.effect_noise((1600, 1200), 100).convert("RGB")
            noise.save(buf, format="PNG")
            data = buf.getvalue()
            url = "data:image/png;base64," + base64.b64encode(data).decode()
            assert len(url) > 1_500_000
            await peer.send_ws({"type": "interactive_stream_start", "prompt": "noise",
                                "portrait": False, "input_image_base64": url})
            await peer.expect("stream_started", timeout=20)
        started = [c for n, c in server.sink.calls if n == "stream_started"]
        assert started[0]["image"] == data

    run_scenario(scenario)


# --- codecs -----------------------------------------------------------------


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_codec_is_negotiated_and_decodable(codec: str) -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            rtpmap = [line for line in peer.answer_sdp.splitlines() if "a=rtpmap:" in line]
            names = {line.split()[1].split("/")[0].upper() for line in rtpmap}
            assert names - {"RTX"} == {codec.upper()}
            if codec == "h264":
                assert "packetization-mode=1" in peer.answer_sdp
            await peer.start_stream("codec")
            mark = len(peer.stamps)
            await peer.wait_frames(20)
            frames = tail_from_zero(stream_frames(peer, mark))
            assert len(frames) >= 12
            assert_consecutive(frames)

    run_scenario(scenario, codec=codec)


def test_codec_any_lets_the_peer_pick_and_encodes_what_it_picked() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            offered = [line.split()[1].split("/")[0].upper()
                       for line in peer.offer_sdp.splitlines() if line.startswith("a=rtpmap:")]
            assert offered[0] == "VP8" and "H264" in offered
            streamer = server.hub.streamer("sess-1")
            assert streamer is not None
            assert streamer.track.codec == negotiated_video_codec(peer.answer_sdp)
            await peer.start_stream("any")
            mark = len(peer.stamps)
            await peer.wait_frames(10)
            assert_consecutive(tail_from_zero(stream_frames(peer, mark)))

    run_scenario(scenario, codec="any")


def test_codec_any_offers_vp8_then_h264() -> None:
    names = [c.mimeType for c in codec_preferences("any")]
    assert names[0] == "video/VP8" and "video/H264" in names and "video/rtx" in names
    with pytest.raises(ValueError):
        codec_preferences("av1")


# --- faults -----------------------------------------------------------------


def test_fault_never_ack() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            server.ctx.faults.set(never_ack=True)
            await peer.send({"type": "interactive_stream_start", "prompt": "x"})
            with pytest.raises(asyncio.TimeoutError):
                await peer.expect("stream_started", timeout=0.5)
            server.ctx.faults.clear()
            await peer.send({"type": "interactive_stream_end"})
            await peer.expect("stream_ended")

    run_scenario(scenario)


def test_fault_ack_delay_keeps_order() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            server.ctx.faults.set(ack_delay=0.3)
            await peer.send({"type": "interactive_stream_start", "prompt": "x"})
            await peer.send({"type": "update", "prompt": "y"})
            await peer.send({"type": "interactive_stream_end"})
            with pytest.raises(asyncio.TimeoutError):
                await peer.expect("stream_started", timeout=0.1)
            await peer.expect("stream_started")
            await peer.expect("update_acknowledged")
            await peer.expect("stream_ended")

    run_scenario(scenario)


@pytest.mark.parametrize(
    "reason", ["quota_exceeded", "concurrent_limit_exceeded", "lease_denied", "session_timeout"]
)
def test_fault_stream_error_fires_once(reason: str) -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            server.ctx.faults.set(stream_error=reason, stream_error_message="no luck")
            await peer.send({"type": "interactive_stream_start", "prompt": "x"})
            err = await peer.expect("interactive_stream_error")
            assert err == {"type": "interactive_stream_error", "reason": reason,
                           "message": "no luck"}
            await peer.start_stream("x")
        assert server.sink.names().count("stream_started") == 1

    run_scenario(scenario)


def test_fault_refuse_signaling_is_503_then_recovers() -> None:
    async def scenario(server: RealtimeServer) -> None:
        session_id, token = server.add_session()
        server.ctx.faults.set(refuse_signaling=2)
        async with aiohttp.ClientSession() as http:
            url = server.base_url.replace("http", "ws") + f"/sig/client/{session_id}"
            for _ in range(2):
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await http.ws_connect(url, params={"token": token})
                assert info.value.status == 503
        peer = TestPeer()
        try:
            await peer.connect(server.base_url, session_id, token)
        finally:
            await peer.close()

    run_scenario(scenario)


def test_fault_signaling_error_follows_the_offer() -> None:
    async def scenario(server: RealtimeServer) -> None:
        server.ctx.faults.set(signaling_error="streamer_not_available")
        async with connected(server) as peer:
            message = await peer.expect_signal()
            assert message == {"type": "error", "reason": "streamer_not_available"}

    run_scenario(scenario)


def test_fault_drop_signaling_closes_with_1011_and_ends_stream() -> None:
    async def scenario(server: RealtimeServer) -> None:
        server.ctx.faults.set(drop_signaling_after=0.5)
        async with connected(server) as peer:
            await peer.start_stream("x")
            message = await peer.expect_signal(timeout=5)
            assert message == {"type": "_closed", "code": 1011}
        for _ in range(100):
            if "session_closed" in server.sink.names():
                break
            await asyncio.sleep(0.02)
        assert server.sink.names()[-2:] == ["stream_ended", "session_closed"]

    run_scenario(scenario)


def test_fault_stop_video_pauses_frames_then_resumes() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            await peer.start_stream("x")
            await peer.wait_frames(5)
            server.ctx.faults.set(stop_video=True)
            await asyncio.sleep(0.2)  # frames already in flight land
            paused = len(peer.stamps)
            await asyncio.sleep(0.5)  # a negative check: nothing may arrive meanwhile
            assert len(peer.stamps) <= paused + 1
            # the data channel still works while video is stopped
            await peer.send({"type": "update", "prompt": "y"})
            await peer.expect("update_acknowledged")
            server.ctx.faults.set(stop_video=False)
            await peer.wait_frames(5)

    run_scenario(scenario)


@pytest.mark.parametrize("fault", [{"drop_every": 5}, {"reorder_every": 4},
                                   {"drop_every": 7, "reorder_every": 3}])
def test_fault_rtp_loss_and_reorder_stay_decodable(fault: dict[str, int]) -> None:
    async def scenario(server: RealtimeServer) -> None:
        server.ctx.faults.set(**fault)
        async with connected(server) as peer:
            await peer.start_stream("lossy")
            mark = len(peer.stamps)
            await peer.wait_frames(40)
            frames = stream_frames(peer, mark)
            if 0 in frames[:6]:  # skip idle frames still in flight
                frames = tail_from_zero(frames)
            # NACK/RTX and PLI repair the deterministic loss: most frames decode,
            # in order, and the stream keeps going.
            assert len(frames) >= 30
            assert frames == sorted(frames)
            streamer = server.hub.streamer("sess-1")
            assert streamer is not None and streamer.rtp_seam is not None
            seam = streamer.rtp_seam
            if fault.get("drop_every"):
                assert seam.dropped > 0
            if fault.get("reorder_every"):
                assert seam.swapped > 0

    run_scenario(scenario)


def test_trickled_candidates_are_tolerated() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            assert peer.ws is not None
            host = "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"
            for message in (
                {"type": "ice_candidate", "candidate": "", "sdpMid": "0", "sdpMLineIndex": 0},
                {"type": "ice_candidate", "candidate": host, "sdpMid": "0", "sdpMLineIndex": 0},
                {"type": "ice_candidate", "candidate": host[len("candidate:"):],
                 "sdpMid": None, "sdpMLineIndex": 0},
                {"type": "ice_candidate", "sdpMid": "0"},
                {"type": "ice_candidate", "candidate": "garbage", "sdpMid": "0"},
                {"type": "ice_candidate", "sdpMid": "0", "sdpMLineIndex": 0,
                 "candidate": "candidate:2 1 udp 2130706431 "
                              "3f1c5a8e-0000-4000-8000-000000000000.local 50000 typ host"},
            ):
                await peer.ws.send_str(json.dumps(message))
            await peer.start_stream("x")

    run_scenario(scenario)


# --- end to end through LocalOdyssey (HTTP half + real-time half) -----------


async def _allocate(http: aiohttp.ClientSession, url: str, api_key: str) -> dict[str, Any]:
    async with http.post(url + "/auth/token", json={"api_key": api_key}) as resp:
        assert resp.status == 200
        bearer = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
    async with http.post(url + "/sessions/request", json={}, headers=bearer) as resp:
        assert resp.status == 200, await resp.text()
        allocation: dict[str, Any] = await resp.json()
    async with http.post(url + "/sessions/token", headers=bearer,
                         json={"session_id": allocation["session_id"]}) as resp:
        assert resp.status == 200
        allocation["session_token"] = (await resp.json())["session_token"]
    return allocation


@pytest.mark.e2e
def test_end_to_end_through_local_odyssey(tmp_path: Any) -> None:
    from odyssey_sync.local.server import LocalOdyssey

    with LocalOdyssey(size=(320, 176), data_dir=tmp_path, recordings=False) as server:
        async def main() -> None:
            async with aiohttp.ClientSession() as http:
                allocation = await _allocate(http, server.url, server.api_key)
                sig = allocation["signalling_url"]
                async with http.get(sig.replace("ws", "http", 1) + "/config") as resp:
                    assert await resp.json() == {"iceServers": []}
                # a token of this allocation, but a tampered one: 401 at the upgrade
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await http.ws_connect(f"{sig}/client/{allocation['session_id']}",
                                          params={"token": allocation["session_token"] + "x"})
                assert info.value.status in (401, 403)

                peer = TestPeer()
                try:
                    await peer.connect(server.url, allocation["session_id"],
                                       allocation["session_token"], signaling_url=sig)
                    await peer.send({"type": "interactive_stream_start", "prompt": "e2e",
                                     "portrait": False})
                    started = await peer.expect("stream_started")
                    mark = len(peer.stamps)
                    await peer.wait_frames(15)
                    assert_consecutive(tail_from_zero(stream_frames(peer, mark)))
                    await peer.send({"type": "update", "prompt": "later"})
                    await peer.expect("update_acknowledged")
                    await peer.send({"type": "interactive_stream_end"})
                    await peer.expect("stream_ended")
                finally:
                    await peer.close()
                assert started["stream_id"].startswith("st-")
                # leaving freed the single streamer slot: a new allocation succeeds
                for _ in range(100):
                    try:
                        await _allocate(http, server.url, server.api_key)
                        break
                    except AssertionError:
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError("allocation was not freed after the client left")

        asyncio.run(asyncio.wait_for(main(), 40))


# --- the RTP seams, packet by packet ----------------------------------------


class _FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)


class _FakeSender:
    def __init__(self) -> None:
        self._ssrc = 0x01020304
        self.transport = _FakeTransport()
        self.rtcp: list[Any] = []

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        self.rtcp.append(packet)


def _rtp(seq: int, ssrc: int = 0x01020304) -> bytes:
    return bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big")


def _seqs(packets: list[bytes]) -> list[int]:
    return [int.from_bytes(p[2:4], "big") for p in packets]


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ({}, list(range(12))),
        ({"drop_every": 4}, [0, 1, 2, 4, 5, 6, 8, 9, 10]),
        ({"reorder_every": 4}, [0, 1, 3, 2, 4, 5, 7, 6, 8, 9, 11, 10]),
        ({"reorder_every": 1}, [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10]),
        ({"drop_every": 3, "reorder_every": 5}, [0, 1, 4, 3, 6, 7, 9, 10]),
    ],
)
def test_rtp_fault_seam_patterns_are_deterministic(
    faults: dict[str, int], expected: list[int]
) -> None:
    from odyssey_sync.local.faults import Faults
    from odyssey_sync.local.realtime.rtp import RtpFaultSeam

    async def main() -> list[int]:
        sender = _FakeSender()
        transport = sender.transport
        fault_switches = Faults()
        fault_switches.set(**faults)
        seam = RtpFaultSeam(fault_switches, sender)
        seam.install()
        seam.install()  # idempotent
        for seq in range(12):
            await transport._send_rtp(_rtp(seq))
        # RTCP and other SSRCs (RTX retransmissions) always pass untouched
        await transport._send_rtp(bytes([0x80, 200]) + bytes(10))
        await transport._send_rtp(_rtp(99, ssrc=0x0A0B0C0D))
        seam.close()
        assert len(transport.sent[-2]) == 12 and transport.sent[-2][1] == 200
        assert _seqs(transport.sent[-1:]) == [99]
        return _seqs(transport.sent[:-2])

    assert asyncio.run(main()) == expected


def test_route_feedback_drops_remb_and_turns_pli_into_keyframe_requests() -> None:
    from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

    from odyssey_sync.local.realtime.rtp import route_feedback

    requests: list[int] = []

    async def main() -> list[Any]:
        sender = _FakeSender()
        route_feedback(sender, lambda: requests.append(1))
        for fmt in (RTCP_PSFB_APP, RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            await sender._handle_rtcp_packet(
                RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=sender._ssrc, fci=b"")
            )
        return sender.rtcp

    assert [p.fmt for p in asyncio.run(main())] == [RTCP_PSFB_PLI, RTCP_PSFB_FIR]
    assert len(requests) == 2


def test_pli_from_the_peer_produces_a_key_frame() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            await peer.start_stream("x")
            await peer.wait_frames(5)
            streamer = server.hub.streamer("sess-1")
            assert streamer is not None
            encoder = streamer.track.encoder
            before = encoder.keyframes
            assert peer.pc is not None
            receiver = next(t.receiver for t in peer.pc.getTransceivers() if t.kind == "video")
            media_ssrc = next(iter(receiver._RTCRtpReceiver__remote_streams))  # type: ignore[attr-defined]
            await receiver._send_rtcp_pli(media_ssrc)  # what aiortc sends on decode errors
            for _ in range(100):
                if encoder.keyframes > before:
                    break
                await asyncio.sleep(0.02)
            assert encoder.keyframes > before
            await peer.wait_frames(5)

    run_scenario(scenario)


def test_second_socket_supersedes_the_first_without_freeing() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as first:
            second = TestPeer()
            try:
                await second.connect(server.base_url, "sess-1", "tok-1")
                closed = await first.expect_signal(timeout=5)
                assert closed == {"type": "_closed", "code": 1001}
                assert "session_closed" not in server.sink.names()
                await second.start_stream("again")
            finally:
                await second.close()

    run_scenario(scenario)


@pytest.mark.e2e
def test_server_stop_with_a_connected_client_closes_everything(tmp_path: Any) -> None:
    from odyssey_sync.local.server import LocalOdyssey

    server = LocalOdyssey(size=(320, 176), data_dir=tmp_path, recordings=False).start()
    try:
        async def main() -> None:
            async with aiohttp.ClientSession() as http:
                allocation = await _allocate(http, server.url, server.api_key)
            peer = TestPeer()
            try:
                await peer.connect(server.url, allocation["session_id"],
                                   allocation["session_token"],
                                   signaling_url=allocation["signalling_url"])
                await peer.start_stream("bye")
                await peer.wait_frames(3)
                # stop the server from another thread while the client is connected
                await asyncio.get_running_loop().run_in_executor(None, server.stop)
                closed = await peer.expect_signal(timeout=10)
                assert closed == {"type": "_closed", "code": 1001}
            finally:
                await peer.close()

        asyncio.run(asyncio.wait_for(main(), 40))
    finally:
        server.stop()


def test_streamer_failure_is_reported_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from odyssey_sync.local.realtime import session as streamer_mod

    async def broken(self: Any) -> str:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(streamer_mod.StreamerSession, "create_offer", broken)

    async def scenario(server: RealtimeServer) -> None:
        session_id, token = server.add_session()
        async with aiohttp.ClientSession() as http:
            url = server.base_url.replace("http", "ws") + f"/sig/client/{session_id}"
            async with http.ws_connect(url, params={"token": token}) as ws:
                message = await asyncio.wait_for(ws.receive(), 5)
                assert json.loads(message.data) == {"type": "error",
                                                    "reason": "streamer_disconnected"}
                closing = await asyncio.wait_for(ws.receive(), 5)
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert server.sink.names() == ["session_closed"]

    run_scenario(scenario)


def test_slow_candidate_does_not_hold_up_signaling(monkeypatch: pytest.MonkeyPatch) -> None:
    """A candidate whose resolution never finishes (a browser's mDNS name) must not
    delay later signaling messages: an image start over the WebSocket still gets
    its stream_started, and closing cancels the pending candidate."""
    from odyssey_sync.local.realtime import session as streamer_module

    never = asyncio.Event()
    pending: list[dict[str, Any]] = []

    async def unresolvable(self: Any, message: dict[str, Any]) -> None:
        pending.append(message)
        await never.wait()

    monkeypatch.setattr(streamer_module.StreamerSession, "add_remote_candidate", unresolvable)

    async def scenario(server: RealtimeServer) -> None:
        async with connected(server) as peer:
            await peer.send_ws({"type": "ice_candidate", "sdpMid": "0", "sdpMLineIndex": 0,
                                "candidate": "candidate:1 1 udp 2122260223 "
                                "4f6b1c0e-0000-4000-8000-000000000000.local 54321 typ host"})
            url, _ = png_data_url()
            await peer.send_ws({"type": "interactive_stream_start", "prompt": "a harbour",
                                "portrait": False, "input_image_base64": url})
            started = await peer.expect("stream_started")
            assert started["stream_id"]
            assert len(pending) == 1  # the candidate was handed over and is still pending

    run_scenario(scenario)
