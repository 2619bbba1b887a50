"""An independent WebRTC test peer for the local server (plain aiortc + aiohttp).

Deliberately *not* the SDK client: it speaks PROTOCOL.md §4–§6 directly, the
way the official Python client does (answerer, no trickle, both data channels
created by the server), so the server is tested against the spec rather than
against our own client's assumptions. Reusable by other test modules.

Also here: :class:`StubSink` (a StreamSink recording every call, accepting the
tokens it was told about) and :func:`realtime_server`, an async context manager
serving only the real-time half on 127.0.0.1 — enough for the streamer tests
without the HTTP half — and :func:`run_scenario`, which runs one async test
scenario against such a server.

Everything is asyncio; tests drive it with ``asyncio.run``. Every peer
connection is closed on exit so aiortc's decoder threads stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from odyssey_sync.local.context import ServerConfig, ServerContext
from odyssey_sync.local.realtime.signaling import RealtimeHub, setup_realtime
from odyssey_sync.local.render.stamp import FrameStamp, decode_stamp


@dataclass
class StubSink:
    """StreamSink for tests: known sessions, fixed tokens, every call recorded."""

    #: session id → the one token accepted for it
    sessions: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    #: session id → the ``vanished`` flag of its session_closed call
    vanished: dict[str, bool] = field(default_factory=dict)

    def session_owner(self, session_id: str) -> str | None:
        return "key-1" if session_id in self.sessions else None

    def verify_session_token(self, token: str, session_id: str) -> bool:
        return self.sessions.get(session_id) == token

    def stream_started(self, **kwargs: Any) -> None:
        self.calls.append(("stream_started", kwargs))

    def stream_interacted(self, stream_id: str, frame: int, prompt: str) -> None:
        self.calls.append(("stream_interacted", (stream_id, frame, prompt)))

    def stream_ended(self, stream_id: str, frame_count: int) -> None:
        self.calls.append(("stream_ended", (stream_id, frame_count)))

    def session_closed(self, session_id: str, *, vanished: bool = False) -> None:
        self.calls.append(("session_closed", session_id))
        self.vanished[session_id] = vanished
        self.sessions.pop(session_id, None)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@dataclass
class RealtimeServer:
    ctx: ServerContext
    sink: StubSink
    hub: RealtimeHub

    @property
    def base_url(self) -> str:
        return self.ctx.base_url

    def add_session(self, session_id: str = "sess-1", token: str = "tok-1") -> tuple[str, str]:
        self.sink.sessions[session_id] = token
        return session_id, token


@contextlib.asynccontextmanager
async def realtime_server(**config: Any) -> AsyncIterator[RealtimeServer]:
    """Serve only the real-time half on 127.0.0.1:<free port> (small frames by default)."""
    config.setdefault("size", (320, 176))
    config.setdefault("fps", 30.0)
    sink = StubSink()
    ctx = ServerContext(config=ServerConfig(**config), sink=sink, secret=b"test-secret")
    app = web.Application()
    hub = setup_realtime(app, ctx)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ctx.base_url = f"http://127.0.0.1:{port}"
    try:
        yield RealtimeServer(ctx, sink, hub)
    finally:
        await runner.cleanup()



Scenario = Callable[[RealtimeServer], Awaitable[None]]


def run_scenario(scenario: Scenario, *, timeout: float = 40.0, **config: Any) -> None:
    """Run *scenario* against a fresh :func:`realtime_server` (``**config``) on a new
    event loop; blocks, and raises ``TimeoutError`` after *timeout* seconds."""

    async def main() -> None:
        async with realtime_server(**config) as server:
            await scenario(server)

    asyncio.run(asyncio.wait_for(main(), timeout))

async def drain_video(
    track: MediaStreamTrack, stamps: list[tuple[FrameStamp | None, float]], size: list[Any]
) -> None:
    """Read every frame of ``track`` (PITFALLS: never leave a remote track undrained)."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.monotonic()
        if not isinstance(frame, av.VideoFrame):
            continue  # audio (spectators drain it too)
        rgb = frame.to_ndarray(format="rgb24")
        size[:] = [frame.width, frame.height]
        stamps.append((decode_stamp(rgb, now=now), now))


class TestPeer:
    """The client side of one signaling connection (answerer), for tests."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self.pc: RTCPeerConnection | None = None
        self.channels: dict[str, RTCDataChannel] = {}
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.signals: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        #: (stamp or None, receive time) of every decoded frame
        self.stamps: list[tuple[FrameStamp | None, float]] = []
        self.frame_size: list[int] = []
        self.offer_sdp = ""
        self.answer_sdp = ""
        self.close_code: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._video = asyncio.Event()
        self._c2s_open = asyncio.Event()

    async def connect(
        self, base_url: str, session_id: str, token: str, *, timeout: float = 10.0,
        signaling_url: str | None = None,
    ) -> None:
        """Signaling + offer/answer, until the video track exists and clientToStreamer is open.

        ``signaling_url`` is the advertised ``signalling_url`` (default:
        ``ws://<base_url host>/sig``).
        """
        self.http = aiohttp.ClientSession()
        sig = signaling_url or f"{base_url.replace('http', 'ws', 1)}/sig"
        url = f"{sig.rstrip('/')}/client/{session_id}"
        self.ws = await self.http.ws_connect(url, params={"token": token}, max_msg_size=0)
        ws = self.ws
        first = await asyncio.wait_for(ws.receive(), timeout)
        offer = json.loads(first.data)
        assert offer["type"] == "offer", offer
        self.offer_sdp = offer["sdp"]
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("datachannel")
        def _on_channel(channel: RTCDataChannel) -> None:
            self.channels[channel.label] = channel
            if channel.label == "streamerToClient":
                channel.on("message", self._on_message)
            if channel.label == "clientToStreamer":
                if channel.readyState == "open":
                    self._c2s_open.set()
                channel.on("open", self._c2s_open.set)

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._video.set()
            self._tasks.append(
                asyncio.ensure_future(drain_video(track, self.stamps, self.frame_size))
            )

        await pc.setRemoteDescription(RTCSessionDescription(sdp=self.offer_sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        self.answer_sdp = pc.localDescription.sdp
        await ws.send_json({"type": "answer", "sdp": self.answer_sdp})
        self._tasks.append(asyncio.ensure_future(self._read_signals()))
        await asyncio.wait_for(self._video.wait(), timeout)
        await asyncio.wait_for(self._c2s_open.wait(), timeout)

    def _on_message(self, data: Any) -> None:
        assert isinstance(data, str), "streamer must send text messages"
        self.inbox.put_nowait(json.loads(data))

    async def _read_signals(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.signals.put_nowait(json.loads(msg.data))
        self.close_code = self.ws.close_code
        self.signals.put_nowait({"type": "_closed", "code": self.ws.close_code})

    async def send(self, message: dict[str, Any]) -> None:
        """Send on clientToStreamer."""
        self.channels["clientToStreamer"].send(json.dumps(message))

    async def send_ws(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def send_ws_raw(self, text: str) -> None:
        """Send ``text`` as-is over the signaling socket (hostile-input tests)."""
        assert self.ws is not None
        await self.ws.send_str(text)

    async def expect(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """Next streamerToClient message; asserts its type."""
        message = await asyncio.wait_for(self.inbox.get(), timeout)
        assert message.get("type") == kind, message
        return message

    async def start_stream(self, prompt: str) -> dict[str, Any]:
        """Start a stream with *prompt*; returns the server's stream_started message."""
        await self.send({"type": "interactive_stream_start", "prompt": prompt})
        return await self.expect("stream_started")

    async def expect_signal(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.signals.get(), timeout)

    async def wait_frames(self, count: int, timeout: float = 15.0) -> None:
        """Wait until ``count`` more frames were decoded."""
        target = len(self.stamps) + count
        deadline = time.monotonic() + timeout
        while len(self.stamps) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.stamps)} of {target} frames")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.send_json({"type": "client_disconnecting"})
                await self.ws.close()
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.http is not None:
            await self.http.close()


def stream_frames(peer: TestPeer, since: int = 0) -> list[int]:
    """Frame numbers of decodable stamps received after index ``since``."""
    return [s.frame for s, _ in peer.stamps[since:] if s is not None]
