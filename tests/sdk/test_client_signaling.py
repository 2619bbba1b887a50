"""SignalingChannel over a real socket pair: a scriptable aiohttp WebSocket peer."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from odyssey_sync._loop import LoopThread
from odyssey_sync._signaling import SignalingChannel, SignalingHandshakeError


class Peer:
    """A WebSocket server whose behaviour each test scripts with ``script``."""

    def __init__(self) -> None:
        self.loop = LoopThread("test-sig-peer")
        self.loop.start()
        self.received: list[Any] = []
        self.close_code: int | None = None
        self.pong = threading.Event()
        self.script: Callable[[web.WebSocketResponse], Any] | None = None
        self.status = 0  # refuse the upgrade with this HTTP status when set
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.loop.submit(self._start(), 10)

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        if self.status:
            return web.Response(status=self.status)
        ws = web.WebSocketResponse(autoping=False, max_msg_size=0)
        await ws.prepare(request)
        if self.script is not None:
            task = asyncio.get_running_loop().create_task(self.script(ws))
        else:
            task = None
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.received.append(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.PONG:
                self.pong.set()
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                break
        self.close_code = ws.close_code
        if task is not None:
            task.cancel()
        return ws

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/client/{sid}", self._handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/client/s1?token=secret-token"

    def stop(self) -> None:
        assert self.runner is not None
        self.loop.submit(self.runner.cleanup(), 10)
        self.loop.stop()


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    yield p
    p.stop()


class Sink:
    """Stands in for the client's loop: records what the channel posts."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.closes: list[tuple[int | None, str, bool]] = []
        self.closed = threading.Event()
        self.got_message = threading.Event()

    def post(self, fn: Callable[..., None], *args: Any) -> bool:
        fn(*args)
        return True

    def on_message(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)
        self.got_message.set()

    def on_close(self, code: int | None, reason: str, abnormal: bool) -> None:
        self.closes.append((code, reason, abnormal))
        self.closed.set()

    def channel(self, url: str, **kw: Any) -> SignalingChannel:
        return SignalingChannel(
            url, on_message=self.on_message, on_close=self.on_close, post=self.post,
            name="test-sig", **kw,
        )


def test_messages_keepalive_and_client_close(peer: Peer) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_str("not json")
        await ws.send_str(json.dumps({"no": "type"}))
        await ws.send_str(json.dumps({"type": "offer", "sdp": "v=0"}))
        await ws.ping(b"are you there")

    peer.script = script
    sink = Sink()
    ch = sink.channel(peer.url, keepalive_interval=0.1)
    ch.open(timeout=5)
    assert sink.got_message.wait(5)
    assert sink.messages == [{"type": "offer", "sdp": "v=0"}]
    ch.send({"type": "answer", "sdp": "x"}, timeout=5)
    assert peer.pong.wait(5), "protocol ping not answered"
    threading.Event().wait(0.35)  # three keepalive periods (no event to await)
    ch.close()
    types = [m["type"] for m in peer.received]
    assert "answer" in types and "keepalive" in types
    assert types[-1] == "client_disconnecting"
    assert not sink.closes, "a client-initiated close is not reported"
    assert "secret-token" not in repr(ch)
    ch.close()  # idempotent


@pytest.mark.parametrize(("code", "abnormal"), [(1000, False), (1001, False), (1011, True)])
def test_server_close_is_noticed(peer: Peer, code: int, abnormal: bool) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await ws.close(code=code, message=b"bye")

    peer.script = script
    sink = Sink()
    ch = sink.channel(peer.url)
    ch.open(timeout=5)
    assert sink.closed.wait(5)
    assert sink.closes == [(code, "bye", abnormal)]
    ch.close()


def test_dropped_tcp_connection_is_abnormal(peer: Peer) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        transport = ws._req.transport if ws._req is not None else None  # type: ignore[attr-defined]
        assert transport is not None
        transport.abort()

    peer.script = script
    sink = Sink()
    ch = sink.channel(peer.url)
    ch.open(timeout=5)
    assert sink.closed.wait(5)
    assert sink.closes[0][0] is None and sink.closes[0][2] is True
    with pytest.raises(ConnectionError):
        ch.send({"type": "answer"}, timeout=1)
    ch.close()


def test_oversized_message_closes_with_1009(peer: Peer) -> None:
    async def script(ws: web.WebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": "offer", "sdp": "x" * 5000}))

    peer.script = script
    sink = Sink()
    ch = sink.channel(peer.url, max_message_bytes=1000)
    ch.open(timeout=5)
    assert sink.closed.wait(5)
    assert sink.closes[0][0] == 1009 and sink.closes[0][2] is True
    assert not sink.messages
    ch.close()


def test_refused_handshake_carries_status_not_token(peer: Peer) -> None:
    peer.status = 401
    sink = Sink()
    ch = sink.channel(peer.url)
    with pytest.raises(SignalingHandshakeError) as info:
        ch.open(timeout=5)
    assert info.value.status == 401
    assert "secret-token" not in str(info.value) and "secret-token" not in repr(info.value)
    ch.close()


def test_unreachable_host() -> None:
    sink = Sink()
    ch = sink.channel("ws://127.0.0.1:9/client/x?token=t")
    with pytest.raises(SignalingHandshakeError):
        ch.open(timeout=2)
