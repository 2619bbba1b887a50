"""The local server's real-time half: signaling WebSocket, streamer and WHEP routes.

:func:`setup_realtime` is the one entry point the HTTP half calls. It adds, on
the same aiohttp application (same host and port as the API):

* ``GET /sig/config`` and ``GET /config`` → ``{"iceServers": []}``: no STUN or
  TURN, host candidates only, so nothing ever waits on an unreachable internet
  server (PROTOCOL.md §4.1, §8.2);
* ``GET /sig/client/{session_id}?token=…`` — the signaling WebSocket (§4).
  The token and the allocation are checked *before* the upgrade: ``401`` for
  a missing/bad/expired/foreign token, ``404`` for an unknown or freed
  allocation, ``503`` while the ``refuse_signaling`` fault fires — both
  official clients retry and report only handshake failures promptly.
  After the upgrade the server sends exactly one ``offer``; it accepts
  ``answer``, trickled ``ice_candidate``, ``keepalive`` (ignored),
  ``interactive_stream_start`` (handled exactly like the data-channel one,
  up to 64 MiB per message) and ``client_disconnecting``. Protocol pings are
  answered (autoping) and the server pings every 20 s itself. When the socket
  ends for any reason the running stream is ended, the peer closed and
  ``StreamSink.session_closed`` called;
* the WHEP routes of :class:`~odyssey_sync.local.realtime.broadcast.BroadcastHub`.

A second signaling socket for the same allocation supersedes the first (its
peer is closed without freeing the allocation), as a client retry would need.

Service limits (PROTOCOL §17, ``ServerConfig``): a stream ends at
``stream_limit`` seconds with ``interactive_stream_error`` /
``session_timeout`` and then the server closes the connection (code 1000);
a connection is closed at ``connection_limit`` seconds. When the server
closes a connection, or the client said ``client_disconnecting``, the
allocation is freed at once; when the client vanished without it (socket
closed or lost by the client side), the allocation keeps its capacity slot
for ``stale_session_timeout`` seconds (a new signaling socket for it within
that time takes it back).

Faults honoured here: ``refuse_signaling``, ``signaling_error`` (an ``error``
message right after the offer), ``drop_signaling_after`` (close code 1011;
also for sockets already open when it is set).

Threads: everything runs on the server loop; JSON of large messages (images)
is parsed in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from ..context import ServerContext
from ..limits import JsonProblem, decode_json
from .broadcast import BroadcastHub
from .session import StreamerSession

__all__ = ["REALTIME_KEY", "RealtimeHub", "setup_realtime"]

log = logging.getLogger(__name__)

#: inbound WebSocket limit: the protocol needs 64 MiB (a 25 MiB image as base64
#: JSON is ≈ 34 MB); a little headroom above that
MAX_MESSAGE_BYTES = 64 * 1024 * 1024 + 4096
#: aiohttp sends a ping this often and drops the socket if no pong arrives
HEARTBEAT_SECONDS = 20.0
#: messages larger than this are parsed off the loop
_BIG_MESSAGE = 256 * 1024
#: how often a connection looks at the drop_signaling_after fault (no change event)
_FAULT_POLL = 0.05


def _decode_message(text: str) -> Any:
    """A signaling message (strings are checked by the fields that use them)."""
    return decode_json(text, unicode_text=False)


class _Connection:
    """One accepted signaling socket and its streamer (loop thread only)."""

    def __init__(self, hub: RealtimeHub, session_id: str, ws: web.WebSocketResponse) -> None:
        self.hub = hub
        self.session_id = session_id
        self.ws = ws
        self.streamer = StreamerSession(hub.ctx, session_id, hub.broadcasts,
                                        close_connection=self.request_close)
        self.superseded = False
        #: the client sent client_disconnecting
        self.said_goodbye = False
        #: the server ended the connection (a limit, a fault, shutdown): not stale
        self.closed_by_server = False
        self._watchers: list[asyncio.Task[None]] = []
        self._closer: asyncio.Task[None] | None = None

    async def run(self) -> None:
        ctx = self.hub.ctx
        ws = self.ws
        opened = time.monotonic()
        offer = await self.streamer.create_offer()
        await ws.send_str(json.dumps({"type": "offer", "sdp": offer}))
        reason = ctx.faults.signaling_error
        if reason:
            await ws.send_str(json.dumps({"type": "error", "reason": str(reason)}))
        self._watchers = [asyncio.ensure_future(self._watch_drop_fault(opened)),
                          asyncio.ensure_future(self._connection_limit(opened))]
        loop = asyncio.get_running_loop()
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                text: str = msg.data
            elif msg.type == aiohttp.WSMsgType.BINARY:
                try:
                    text = bytes(msg.data).decode("utf-8")
                except UnicodeDecodeError:
                    continue
            else:  # ERROR / CLOSE* end the iteration by themselves
                continue
            try:
                if len(text) > _BIG_MESSAGE:
                    message = await loop.run_in_executor(None, _decode_message, text)
                else:
                    message = decode_json(text, unicode_text=False)
            except JsonProblem as exc:
                log.info("session %s: ignoring signaling message: %s", self.session_id, exc.msg)
                continue
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                continue
            if not await self._dispatch(message):
                break

    async def _dispatch(self, message: dict[str, Any]) -> bool:
        """Handle one client message; False when the client is leaving."""
        kind = message["type"]
        if kind == "answer":
            sdp = message.get("sdp")
            if not isinstance(sdp, str):
                return True
            try:
                await self.streamer.accept_answer(sdp)
            except ValueError as exc:
                log.info("session %s: %s", self.session_id, exc)
                await self.ws.send_str(json.dumps({"type": "error", "reason": "invalid_answer"}))
        elif kind == "ice_candidate":
            self.streamer.trickle_candidate(message)
        elif kind == "interactive_stream_start":
            self.streamer.submit(message, via_websocket=True)
        elif kind == "client_disconnecting":
            self.said_goodbye = True
            return False
        # keepalive and unknown types: ignored
        return True

    async def _watch_drop_fault(self, opened: float) -> None:
        """``drop_signaling_after``: counted from the socket's opening when the fault
        was set by then, else from the moment this socket first sees it set."""
        faults = self.hub.ctx.faults
        armed_at: float | None = opened if faults.drop_signaling_after is not None else None
        while True:
            after = faults.drop_signaling_after
            if after is None:
                armed_at = None
                await asyncio.sleep(_FAULT_POLL)
                continue
            if armed_at is None:
                armed_at = time.monotonic()
            left = armed_at + float(after) - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(left, _FAULT_POLL))
        log.info("session %s: dropping signaling (fault)", self.session_id)
        self.closed_by_server = True
        await self.ws.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR, message=b"injected fault")

    async def _connection_limit(self, opened: float) -> None:
        limit = float(self.hub.ctx.config.connection_limit)
        await asyncio.sleep(max(0.0, opened + limit - time.monotonic()))
        log.info("session %s: connection limit (%g s) reached", self.session_id, limit)
        self.closed_by_server = True
        await self.ws.close(code=aiohttp.WSCloseCode.OK, message=b"connection limit reached")

    def request_close(self, reason: str) -> None:
        """Close the socket (code 1000) soon; the handler then cleans up. Loop thread."""
        if self._closer is not None or self.ws.closed:
            return
        self.closed_by_server = True

        async def close() -> None:
            log.info("session %s: closing the connection (%s)", self.session_id, reason)
            await self.ws.close(code=aiohttp.WSCloseCode.OK, message=reason.encode()[:120])

        self._closer = asyncio.ensure_future(close())

    async def close(self, code: int = aiohttp.WSCloseCode.OK) -> None:
        """Close socket and streamer. Idempotent."""
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.streamer.close()
        if not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.close(code=code)
        if self._closer is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._closer


class RealtimeHub:
    """The real-time half of one server: signaling connections and broadcasts.

    Created by :func:`setup_realtime`; loop thread only. :attr:`connections`
    maps allocation ids to their live signaling connection (tests use it to
    reach a session's :class:`StreamerSession`).
    """

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.broadcasts = BroadcastHub(ctx)
        self.connections: dict[str, _Connection] = {}
        self._closing = False

    def streamer(self, session_id: str) -> StreamerSession | None:
        """The streamer of an allocation's live signaling connection, if any."""
        conn = self.connections.get(session_id)
        return conn.streamer if conn is not None else None

    async def handle_config(self, request: web.Request) -> web.Response:
        """``GET /sig/config`` and ``GET /config``: no ICE servers (host candidates only)."""
        return web.json_response({"iceServers": []})

    async def handle_client(self, request: web.Request) -> web.StreamResponse:
        """``GET /sig/client/{session_id}?token=``: checks, upgrade, then the connection.

        Returns only when the socket has ended and everything behind it is
        closed (aiohttp keeps the handler running for the socket's lifetime).
        """
        ctx = self.ctx
        session_id = request.match_info["session_id"]
        if self._closing:
            return web.json_response({"detail": "server shutting down"}, status=503)
        if ctx.faults.take("refuse_signaling"):
            return web.json_response({"detail": "signaling unavailable"}, status=503)
        token = request.query.get("token", "")
        if not token or not ctx.sink.verify_session_token(token, session_id):
            return web.json_response({"detail": "invalid or expired session token"}, status=401)
        if ctx.sink.session_owner(session_id) is None:
            return web.json_response({"detail": "session not found"}, status=404)
        ws = web.WebSocketResponse(
            max_msg_size=MAX_MESSAGE_BYTES, heartbeat=HEARTBEAT_SECONDS, autoping=True
        )
        if not ws.can_prepare(request).ok:
            return web.json_response({"detail": "WebSocket upgrade required"}, status=426)
        await ws.prepare(request)

        conn = _Connection(self, session_id, ws)
        previous = self.connections.get(session_id)
        self.connections[session_id] = conn
        if previous is not None:
            previous.superseded = True
            await previous.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        try:
            await conn.run()
        except (ConnectionError, asyncio.CancelledError):
            pass  # socket gone or server stopping: fall through to cleanup
        except Exception:
            # Never a traceback to the peer: log it, tell the client the streamer
            # is gone (a reason both official clients know), then clean up.
            log.exception("session %s: signaling error", session_id)
            with contextlib.suppress(Exception):
                await ws.send_str(json.dumps({"type": "error", "reason": "streamer_disconnected"}))
        finally:
            if self.connections.get(session_id) is conn:
                del self.connections[session_id]
            await conn.close()
            if not conn.superseded:
                # A client that vanished without client_disconnecting keeps its
                # slot until the stale timeout (the service's behaviour, §17).
                vanished = not (conn.said_goodbye or conn.closed_by_server or self._closing)
                try:
                    ctx.sink.session_closed(session_id, vanished=vanished)
                except Exception:
                    log.exception("StreamSink.session_closed failed")
        return ws

    async def on_shutdown(self, app: web.Application) -> None:
        """Close every connection (1001) and broadcast, on the loop. Idempotent."""
        self._closing = True
        conns = list(self.connections.values())
        await asyncio.gather(
            *(c.close(code=aiohttp.WSCloseCode.GOING_AWAY) for c in conns),
            return_exceptions=True,
        )
        await self.broadcasts.close()


REALTIME_KEY = web.AppKey("odyssey_sync_realtime", RealtimeHub)


def setup_realtime(app: web.Application, ctx: ServerContext) -> RealtimeHub:
    """Register signaling, streamer and WHEP routes on ``app``; returns the hub.

    Non-blocking; call once while building the application (before it starts).
    The hub is also stored as ``app[REALTIME_KEY]``. Shutdown (closing every
    peer connection on the loop) is hooked into ``app.on_shutdown``.
    """
    hub = RealtimeHub(ctx)
    app[REALTIME_KEY] = hub
    app.router.add_get("/sig/config", hub.handle_config)
    app.router.add_get("/config", hub.handle_config)
    app.router.add_get("/sig/client/{session_id}", hub.handle_client)
    hub.broadcasts.add_routes(app)
    app.on_shutdown.append(hub.on_shutdown)
    return hub
