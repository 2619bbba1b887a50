"""Broadcast streams and WHEP spectators of the local server (PROTOCOL.md §8).

The producer is the independent peer of tests/local/rtc_peer.py; the spectator is a
plain aiortc WHEP client written here (offerer, recvonly video + audio,
non-trickle), as the official Python client's ``connect_to_stream`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from odyssey_sync.local.render.stamp import FrameStamp
from tests.local.rtc_peer import (
    RealtimeServer,
    TestPeer,
    drain_video,
    run_scenario,
    stream_frames,
)


@dataclass
class Spectator:
    pc: RTCPeerConnection
    location: str
    answer: str
    stamps: list[tuple[FrameStamp | None, float]] = field(default_factory=list)
    size: list[Any] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def wait_frames(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.stamps) < count:
            assert time.monotonic() < deadline, f"only {len(self.stamps)} spectator frames"
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def whep_post(
    http: aiohttp.ClientSession, url: str, sdp: str, *, token: str | None = None,
    bearer: str | None = None,
) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/sdp"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    params = {"token": token} if token is not None else None
    return await http.post(url + "/whep", params=params, data=sdp, headers=headers)


async def offer_sdp(pc: RTCPeerConnection) -> str:
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers fully: non-trickle
    return str(pc.localDescription.sdp)


async def spectate(
    http: aiohttp.ClientSession, webrtc_url: str, *, token: str | None = None,
    bearer: str | None = None,
) -> Spectator:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tasks: list[asyncio.Task[None]] = []
    stamps: list[tuple[FrameStamp | None, float]] = []
    size: list[Any] = []

    @pc.on("track")
    def _on_track(track: Any) -> None:
        # Drain audio too, if any (PITFALLS: unconsumed remote tracks grow without bound).
        tasks.append(asyncio.ensure_future(
            drain_video(track, stamps if track.kind == "video" else [], size)
        ))

    try:
        sdp = await offer_sdp(pc)
        async with await whep_post(http, webrtc_url, sdp, token=token, bearer=bearer) as resp:
            assert resp.status == 201, await resp.text()
            assert resp.content_type == "application/sdp"
            location = resp.headers["Location"]
            answer = await resp.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    except BaseException:
        await pc.close()
        raise
    spectator = Spectator(pc, urljoin(webrtc_url + "/whep", location), answer, stamps, size)
    spectator.tasks = tasks
    return spectator


async def producer(
    server: RealtimeServer, *, broadcast: bool = True
) -> tuple[TestPeer, dict[str, Any]]:
    session_id, token = server.add_session()
    peer = TestPeer()
    try:
        await peer.connect(server.base_url, session_id, token)
        await peer.send({"type": "interactive_stream_start", "prompt": "a show",
                         "portrait": False, "broadcast": broadcast})
        started = await peer.expect("stream_started")
    except BaseException:
        await peer.close()
        raise
    return peer, started



@dataclass
class WatchedBroadcast:
    peer: TestPeer
    started: dict[str, Any]  # the producer's stream_started
    ready: dict[str, Any]  # its broadcast_ready
    http: aiohttp.ClientSession
    spectator: Spectator


@contextlib.asynccontextmanager
async def watched_broadcast(
    server: RealtimeServer, *, bearer: bool = False
) -> AsyncIterator[WatchedBroadcast]:
    """A broadcasting producer and one WHEP spectator of it, who shows the spectator
    token in the query or (``bearer``) in an Authorization header; both closed on exit."""
    peer, started = await producer(server)
    spectator: Spectator | None = None
    try:
        ready = await peer.expect("broadcast_ready")
        token = ready["spectator_token"]
        async with aiohttp.ClientSession() as http:
            spectator = await spectate(http, ready["webrtc_url"],
                                       token=None if bearer else token,
                                       bearer=token if bearer else None)
            yield WatchedBroadcast(peer, started, ready, http, spectator)
    finally:
        if spectator is not None:
            await spectator.close()
        await peer.close()

def test_broadcast_ready_follows_stream_started() -> None:
    async def scenario(server: RealtimeServer) -> None:
        peer, started = await producer(server)
        try:
            ready = await peer.expect("broadcast_ready")
            stream_id = started["stream_id"]
            assert ready["webrtc_url"] == f"{server.base_url}/live/{stream_id}"
            assert ready["broadcast_url"] is None  # no HLS locally
            token = ready["spectator_token"]
            assert isinstance(token, str) and len(token) >= 40
            assert server.hub.broadcasts.check_token(token, stream_id)
            assert not server.hub.broadcasts.check_token(token, "st-other")
            started_call = next(c for n, c in server.sink.calls if n == "stream_started")
            assert started_call["broadcast"] is True
        finally:
            await peer.close()

    run_scenario(scenario)


def test_no_broadcast_ready_without_broadcast() -> None:
    async def scenario(server: RealtimeServer) -> None:
        peer, _ = await producer(server, broadcast=False)
        try:
            await peer.wait_frames(10)
            await peer.send({"type": "interactive_stream_end"})
            await peer.expect("stream_ended")  # not preceded by broadcast_ready
        finally:
            await peer.close()

    run_scenario(scenario)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
def test_whep_spectator_sees_the_stream_and_is_dropped_at_the_end(codec: str) -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with watched_broadcast(server) as watched:
            peer, ready, spectator = watched.peer, watched.ready, watched.spectator
            stream_id = watched.started["stream_id"]
            assert spectator.location.startswith(ready["webrtc_url"] + "/whep/")
            video = spectator.answer.split("m=video", 1)[1].split("m=", 1)[0]
            names = {line.split()[1].split("/")[0].upper()
                     for line in video.splitlines() if line.startswith("a=rtpmap:")}
            assert names - {"RTX"} == {codec.upper()}  # the producer's codec only
            audio = spectator.answer.split("m=audio", 1)[1]
            assert "a=inactive" in audio.split("m=", 1)[0]
            await spectator.wait_frames(20)
            frames = [s.frame for s, _ in spectator.stamps if s is not None]
            assert len(frames) >= 15
            assert frames == sorted(frames)
            # the same numbering as the producer's stream (same relay, same frames)
            assert max(frames) <= max(stream_frames(peer)) + 5
            assert server.hub.broadcasts.viewer_count(stream_id) == 1

            await peer.send({"type": "interactive_stream_end"})
            await peer.expect("stream_ended")
            assert server.hub.broadcasts.viewer_count(stream_id) == 0
            # the viewer's video ends when the server drops it
            await asyncio.wait_for(asyncio.gather(*spectator.tasks), 15)
            # ended stream: 404, and the old resource is gone
            async with await whep_post(watched.http, ready["webrtc_url"], "v=0\r\nm=video",
                                       token=ready["spectator_token"]) as resp:
                assert resp.status == 404
            async with watched.http.delete(spectator.location) as resp:
                assert resp.status == 404

    run_scenario(scenario, codec=codec)


def test_whep_bearer_token_and_delete() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with watched_broadcast(server, bearer=True) as watched:
            await watched.spectator.wait_frames(5)
            async with watched.http.delete(watched.spectator.location) as resp:  # no auth
                assert resp.status == 204
            async with watched.http.delete(watched.spectator.location) as resp:
                assert resp.status == 404

    run_scenario(scenario)


def test_whep_rejects_bad_tokens_and_unknown_streams() -> None:
    async def scenario(server: RealtimeServer) -> None:
        peer, started = await producer(server)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            ready = await peer.expect("broadcast_ready")
            url = ready["webrtc_url"]
            sdp = await offer_sdp(pc)
            foreign = server.hub.broadcasts.mint_token("st-someone-else")
            async with aiohttp.ClientSession() as http:
                for kwargs in ({}, {"token": "spt_nope.deadbeef"}, {"token": foreign},
                               {"bearer": "garbage"}):
                    async with await whep_post(http, url, sdp, **kwargs) as resp:
                        assert resp.status == 401, kwargs
                async with await whep_post(http, f"{server.base_url}/live/st-unknown", sdp,
                                           token=ready["spectator_token"]) as resp:
                    assert resp.status == 404
            assert server.hub.broadcasts.viewer_count(started["stream_id"]) == 0
        finally:
            await pc.close()
            await peer.close()

    run_scenario(scenario)


def test_closing_the_producer_drops_spectators() -> None:
    async def scenario(server: RealtimeServer) -> None:
        async with watched_broadcast(server) as watched:
            await watched.spectator.wait_frames(3)
            await watched.peer.close()  # leaves without ending the stream
            await asyncio.wait_for(asyncio.gather(*watched.spectator.tasks), 15)

    run_scenario(scenario)


def test_slow_spectator_resynchronises_on_a_key_frame() -> None:
    import av

    from odyssey_sync.local.context import ServerConfig, ServerContext
    from odyssey_sync.local.realtime.tracks import SPECTATOR_BACKLOG, WorldTrack
    from tests.local.rtc_peer import StubSink

    def packet(key: bool) -> av.Packet[Any]:
        p: av.Packet[Any] = av.Packet(b"\x00" * 8)
        p.is_keyframe = key
        return p

    async def main() -> None:
        source = WorldTrack(ServerContext(config=ServerConfig(), sink=StubSink()))
        spectator = source.tee()
        assert source.encoder._keyframe.is_set()  # a new viewer asks for a key frame
        source.encoder._keyframe.clear()
        spectator.push(packet(False))  # no reference yet: skipped
        spectator.push(packet(True))
        for _ in range(SPECTATOR_BACKLOG - 1):
            spectator.push(packet(False))
        assert (await spectator.recv()).is_keyframe
        spectator.push(packet(False))
        spectator.push(packet(False))  # backlog full: dropped, key frame requested
        assert source.encoder._keyframe.is_set()
        spectator.push(packet(False))  # still waiting for the key frame
        spectator.push(packet(True))
        assert (await spectator.recv()).is_keyframe
        assert spectator.skipped == 1 + (SPECTATOR_BACKLOG + 1) + 1
        source.stop()  # the producer ends: the viewer's track ends too
        with pytest.raises(MediaStreamError):
            await spectator.recv()

    asyncio.run(main())
