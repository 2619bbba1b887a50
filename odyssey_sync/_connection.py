"""One live connection to a streamer: allocation, signaling, the peer, teardown.

A :class:`Connection` is everything one ``connect()`` creates, torn down as
a unit: its own loop thread (asyncio + aiortc), its signaling socket, its
answering peer and its :class:`~odyssey_sync._protocol.ReplyBook`. A fresh
object per connection (and a fresh token per signaling attempt) means a late
event from an old socket or peer can never act on a newer connection.

It knows the protocol, not the user: what it learns (streamer events,
frames, the connection ending) goes to its :class:`ConnectionOwner`, the
session, which decides what the user sees. A session may hold two
connections at once while it hands a stream over from one to the other.

Threads: :meth:`Connection.open` and :meth:`Connection.close` block the
calling thread (never the loop); everything marked "loop thread" runs on
``odyssey-loop-N``; signaling runs on its own reader/writer threads and
posts to the loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ._deadline import Deadline
from ._loop import LoopThread
from ._protocol import (
    InteractAcknowledged,
    ReplyBook,
    ReplyKind,
    ReplySlot,
    StreamEnded,
    StreamerEvent,
    StreamError,
    StreamStarted,
    parse_streamer_message,
)
from ._rtc import FrameSink, RtcPeer
from ._signaling import SignalingChannel, client_socket_url
from .config import ClientConfig
from .errors import (
    OdysseyConnectionError,
    OdysseyError,
    OdysseyTimeoutError,
    SignalingHandshakeError,
    stream_error_from_reason,
)
from .types import ClientCredentials, StreamerCapabilities

if TYPE_CHECKING:
    from ._rest import ApiClient

__all__ = ["Connection", "ConnectionOwner"]

log = logging.getLogger("odyssey_sync.connection")

#: slice of long waits, so an abort from another thread is noticed promptly
POLL = 0.25
#: the longest any one teardown step may take when the caller gave no deadline
STEP_CAP = 5.0
#: ``ClientConfig.prefer_codec`` → the codec's name in SDP
_CODEC_NAMES = {"h264": "H264", "vp8": "VP8"}


class ConnectionOwner(Protocol):
    """What a :class:`Connection` reports, and on which thread."""

    def connection_event(self, conn: Connection, event: StreamerEvent) -> None:
        """A streamer event, after the connection's own bookkeeping (loop thread)."""

    def connection_lost(self, conn: Connection, exc: OdysseyError, *, clean: bool) -> None:
        """The connection ended on its own (any thread); ``clean``: the server closed it."""

    def connection_frame(self, conn: Connection, seq: int) -> None:
        """A frame of this connection was published in the ring (loop thread)."""

    def connection_bad_message(self, conn: Connection, exc: Exception) -> None:
        """An unparseable streamer message (loop thread; not fatal)."""

    def connection_allocated(self, conn: Connection) -> None:
        """A streamer was allocated for ``conn`` (the opener's thread)."""

    def connection_retrying(self, conn: Connection, retries: int, reason: str) -> None:
        """A signaling attempt failed and will be retried (the opener's thread)."""


class Connection:
    """One connection's transport and protocol state.

    Args:
        number: per-client counter, used in thread names.
        name: thread-name prefix, e.g. ``"odyssey-3.2"``.
        config: the client's configuration.
        api: the REST boundary (allocation, ICE servers).
        sink_for: gives the sink where this connection's decoded frames go.
        owner: the session that receives its reports.
    """

    def __init__(
        self,
        *,
        name: str,
        config: ClientConfig,
        api: ApiClient,
        sink_for: Callable[[Connection], FrameSink],
        owner: ConnectionOwner,
    ) -> None:
        self.name = name
        self._config = config
        self._api = api
        self._sink = sink_for(self)
        self._owner = owner
        self.replies = ReplyBook()
        self.loop: LoopThread | None = None
        self.signaling: SignalingChannel | None = None
        self.peer: RtcPeer | None = None
        self._attempt: object | None = None
        self._negotiation: asyncio.Lock | None = None
        self._ice_servers: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._aborted = threading.Event()
        self._ready_error: OdysseyError | None = None
        self._lost_reported = False
        self._lock = threading.Lock()
        self.aborted = False
        self.closing = False
        self.connected = False
        self.connected_at = 0.0
        self.session_id: str | None = None
        self.capabilities: StreamerCapabilities | None = None
        #: the running stream, set on ``stream_started`` (loop thread)
        self.stream_id: str | None = None
        #: ``time.monotonic()`` of the running stream's ``stream_started``
        self.stream_started_at = 0.0
        self.last_frame_at = 0.0

    def __repr__(self) -> str:
        state = "closing" if self.closing else ("connected" if self.connected else "opening")
        return f"<Connection {self.name} {state} session_id={self.session_id!r}>"

    # ------------------------------------------------------------------ open
    def open(
        self,
        deadline: Deadline,
        credentials: ClientCredentials | None = None,
        *,
        queue_timeout: float | None = None,
    ) -> None:
        """Allocate (or use ``credentials``), connect signaling and WebRTC, wait for readiness.

        Blocking, caller's thread, bounded by ``deadline``. ``queue_timeout``:
        how long to queue for a free streamer (default: the configured one;
        ``0`` fails at once when none is free). On failure the caller must
        :meth:`close` the connection.

        Raises:
            OdysseyAuthError, OdysseyUsageError, OdysseyQueueTimeoutError: from allocation.
            OdysseyConnectionError: signaling or WebRTC failed, or :meth:`abort` was called.
            OdysseyTimeoutError: ``deadline`` expired first.
        """
        if credentials is None:
            allocation = self._api.allocate(
                queue_timeout=self._config.queue_timeout if queue_timeout is None
                else queue_timeout,
                deadline=deadline,
                cancelled=self._aborted,
            )
            sig_url, token = allocation.signaling_url, allocation.session_token
            self.session_id, self.capabilities = allocation.session_id, allocation.capabilities
            self._owner.connection_allocated(self)
        else:
            sig_url, token = credentials.signaling_url, credentials.session_token
            self.session_id, self.capabilities = credentials.session_id, credentials.capabilities
        self._check_aborted()
        self.loop = LoopThread(f"odyssey-loop-{self.name.removeprefix('odyssey-')}")
        self.loop.start(timeout=_clamp(deadline, STEP_CAP))
        self._open_signaling(sig_url, token, deadline)
        self._wait_ready(deadline)

    def abort(self) -> None:
        """Make a running :meth:`open` fail promptly (any thread), queueing included."""
        self.aborted = True
        self._aborted.set()
        self._ready.set()

    def _check_aborted(self) -> None:
        if self.aborted:
            raise OdysseyConnectionError("connect() aborted by disconnect()")

    def _open_signaling(self, sig_url: str, token: str, deadline: Deadline) -> None:
        """Open the signaling socket, retrying refused handshakes with backoff (§10)."""
        assert self.loop is not None and self.session_id is not None
        url = client_socket_url(sig_url, self.session_id, token)
        retries = 0
        while True:
            self._check_aborted()
            deadline.check("connect")
            self._ice_servers = self._api.fetch_ice_servers(
                sig_url, timeout=_clamp(deadline, 5.0)
            )
            attempt = object()
            channel = SignalingChannel(
                url,
                on_message=functools.partial(self._on_signal_message, attempt),
                on_close=functools.partial(self._on_signal_close, attempt),
                post=self.loop.call_soon,
                name=f"odyssey-signaling-{self.name.removeprefix('odyssey-')}",
            )
            with self._lock:
                self._attempt, self.signaling = attempt, channel
            try:
                channel.open(timeout=_clamp(deadline, 10.0))
                return
            except (SignalingHandshakeError, OdysseyTimeoutError) as exc:
                status = exc.status
                if status in (401, 403, 404) or retries >= self._config.max_retries:
                    raise OdysseyConnectionError(
                        f"{exc.message} (after {retries} retries)", status=status,
                        session_id=self.session_id,
                    ) from exc
                delay = self._config.retry_delay(retries)
                retries += 1
                left = deadline.remaining()
                if left is not None and left <= delay:
                    raise OdysseyConnectionError(
                        f"{exc.message}; no time left to retry", session_id=self.session_id
                    ) from exc
                log.info("signaling handshake failed (%s); retry %d in %.1f s",
                         exc.message, retries, delay)
                self._owner.connection_retrying(self, retries, exc.message)
                if self._ready.wait(delay):  # woken early only by an abort
                    self._check_aborted()

    def _wait_ready(self, deadline: Deadline) -> None:
        while not self._ready.wait(_clamp(deadline, POLL)):
            if deadline.expired:
                peer = self.peer
                missing = ["offer"] if peer is None else peer.missing
                raise OdysseyTimeoutError(
                    f"connection not ready after {deadline.timeout:g} s "
                    f"(waiting for {', '.join(missing) or 'readiness'})",
                    session_id=self.session_id,
                )
        self._check_aborted()
        if self._ready_error is not None:
            raise self._ready_error
        self.connected = True
        self.connected_at = time.monotonic()

    # ------------------------------------------------------------ requests
    def request(
        self, kind: ReplyKind, message: dict[str, Any], deadline: Deadline,
        *, echo: str | None = None,
    ) -> ReplySlot:
        """Arm a reply slot, then send ``message``; the caller waits on the slot.

        Any thread but the loop's. The data channel carries the message when
        it is open and the message fits its size limit; otherwise (a start
        with an image, §6.3) the signaling socket does. A send failure fails
        the slot rather than raising.
        """
        slot = self.replies.arm(kind, echo=echo)  # armed BEFORE sending (§15.3)
        text = json.dumps(message)  # ASCII-escaped, as the size rule of §6.3 assumes
        peer = self.peer
        if (
            peer is not None
            and peer.channel_open
            and len(text.encode()) <= peer.max_message_size
        ):
            self._send_on_channel(slot, text)
            return slot
        if kind != "start":
            self._send_on_channel(slot, text)  # fails the slot with the channel's error
            return slot
        signaling = self.signaling
        try:
            if signaling is None:
                raise OdysseyConnectionError("signaling socket is not open")
            signaling.send(message, deadline.remaining())
        except OdysseyError as exc:
            self.replies.discard(slot, exc)
        return slot

    def _send_on_channel(self, slot: ReplySlot, text: str) -> None:
        def send() -> None:
            peer = self.peer
            try:
                if peer is None or self.closing:
                    raise OdysseyConnectionError("data channel is not open")
                peer.send(text)
            except Exception as exc:
                err = exc if isinstance(exc, OdysseyError) else OdysseyConnectionError(
                    f"data channel send failed: {type(exc).__name__}"
                )
                self.replies.discard(slot, err)

        loop = self.loop
        if loop is None or not loop.call_soon(send):
            self.replies.discard(slot, OdysseyConnectionError("not connected"))

    # ------------------------------------------------------ loop-side events
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self.loop is not None
        task = self.loop.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_signal_message(self, attempt: object, msg: dict[str, Any]) -> None:
        if self._attempt is not attempt or self.closing:
            return  # a stale socket (§15.16)
        kind = msg["type"]
        if kind == "offer":
            sdp = msg.get("sdp")
            if isinstance(sdp, str) and sdp:
                self._spawn(self._handle_offer(attempt, sdp))
            else:
                log.debug("ignoring an offer without SDP")
        elif kind == "ice_candidate":
            self._spawn(self._handle_candidate(msg))
        elif kind == "error":
            reason = msg.get("reason")
            reason = reason if isinstance(reason, str) and reason else "unknown"
            self.fail(OdysseyConnectionError(
                f"signaling error: {reason}", session_id=self.session_id))
        else:
            log.debug("ignoring signaling message of type %r", kind)

    async def _handle_offer(self, attempt: object, sdp: str) -> None:
        if self._negotiation is None:
            self._negotiation = asyncio.Lock()
        async with self._negotiation:
            if self.closing or self._attempt is not attempt:
                return
            old, self.peer = self.peer, None
            if old is not None:
                # One offer per socket; a new one replaces the old peer (§4.5, §15.28).
                await old.close()
            assert self.signaling is not None
            peer = RtcPeer(
                ice_servers=self._ice_servers,
                sink=self._sink,
                events=_PeerEvents(self),
                low_latency=self._config.low_latency,
                prefer_codec=_CODEC_NAMES.get(self._config.prefer_codec or ""),
            )
            self.peer = peer
            try:
                answer = await peer.accept_offer(sdp)
            except Exception as exc:
                log.debug("could not answer the offer", exc_info=True)
                self.fail(OdysseyConnectionError(
                    f"could not answer the streamer's offer: {type(exc).__name__}",
                    session_id=self.session_id,
                ))
                return
            self.signaling.send_nowait({"type": "answer", "sdp": answer})

    async def _handle_candidate(self, msg: dict[str, Any]) -> None:
        if self._negotiation is None:
            return  # before the offer: dropped, as the protocol says (§4.5)
        async with self._negotiation:
            peer = self.peer
            if peer is None or self.closing:
                return
            try:
                await peer.add_remote_candidate(msg)
            except Exception:
                log.debug("could not add a remote candidate", exc_info=True)

    def _on_signal_close(
        self, attempt: object, code: int | None, reason: str, abnormal: bool
    ) -> None:
        if self._attempt is not attempt or self.closing:
            return
        detail = f"code {code}" if code is not None else "connection lost"
        if reason:
            detail += f": {reason}"
        if abnormal or not self.connected:
            # During connecting any close is fatal at once (§15.14): nothing will retry it.
            self.fail(OdysseyConnectionError(
                f"signaling connection closed ({detail})", session_id=self.session_id))
        else:
            self._report_lost(
                OdysseyConnectionError(
                    f"server closed the connection ({detail})", session_id=self.session_id),
                clean=True,
            )

    def on_peer_message(self, msg: dict[str, Any]) -> None:
        """A ``streamerToClient`` message (loop thread): replies first, then the owner."""
        if self.closing:
            return
        event = parse_streamer_message(msg)
        replies = self.replies
        if isinstance(event, StreamStarted):
            self.stream_id = event.stream_id
            self.stream_started_at = time.monotonic()
            replies.resolve("start", event.stream_id)
        elif isinstance(event, InteractAcknowledged):
            replies.resolve("interact", event.prompt, echo=event.prompt)
        elif isinstance(event, StreamEnded):
            self.stream_id = None
            replies.resolve("end", None)
        elif isinstance(event, StreamError):
            exc = stream_error_from_reason(
                event.reason, event.message, stream_id=self.stream_id,
                session_id=self.session_id,
            )
            # No request ids: the error answers a waiting start (a start that
            # failed), else a waiting interaction.
            if replies.waiting("start"):
                replies.fail("start", exc)
            elif replies.waiting("interact"):
                replies.fail("interact", exc)
            if event.reason == "session_timeout":
                self.stream_id = None
        self._owner.connection_event(self, event)

    def fail(self, exc: OdysseyError) -> None:
        """A fatal failure (any thread): fail :meth:`open`, or report the loss."""
        if self.closing:
            return
        if not self.connected:
            if self._ready_error is None:
                self._ready_error = exc
            self._ready.set()
            return
        self._report_lost(exc, clean=False)

    def _report_lost(self, exc: OdysseyError, *, clean: bool) -> None:
        with self._lock:
            if self._lost_reported or self.closing:
                return
            self._lost_reported = True
        self._owner.connection_lost(self, exc, clean=clean)

    # --------------------------------------------------------------- teardown
    def close(self, deadline: Deadline, reason: OdysseyError) -> None:
        """Free everything, on one deadline (any thread but this connection's loop).

        Pending requests fail with ``reason``; the peer connection closes on
        the loop (so aiortc's decoder threads get their sentinel); signaling
        says ``client_disconnecting`` and closes with code 1000; the loop
        stops and its thread is joined. Idempotent; never raises. With an
        unbounded deadline each step is still capped, so a dead peer cannot
        hold it forever.
        """
        with self._lock:
            self.closing = True
        self.replies.close(OdysseyConnectionError(
            f"connection closed before a reply ({reason.message or type(reason).__name__})",
            session_id=self.session_id,
        ))
        loop, peer = self.loop, self.peer
        if loop is not None and loop.running and peer is not None:
            try:
                loop.submit(peer.close(), _step(deadline), what="closing the peer connection")
            except Exception:
                log.debug("peer close failed", exc_info=True)
        if self.signaling is not None:
            self.signaling.close(timeout=_step(deadline, 2.0))
        if loop is not None:
            loop.stop(_step(deadline))

    @property
    def fps(self) -> float:
        """Receive rate of this connection's video, frames per second."""
        peer = self.peer
        return peer.fps if peer is not None else 0.0


class _PeerEvents:
    """Adapter from :class:`RtcPeer` events (loop thread) to the connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def peer_ready(self) -> None:
        self._conn._ready.set()

    def peer_message(self, message: dict[str, Any]) -> None:
        self._conn.on_peer_message(message)

    def peer_bad_message(self, error: Exception) -> None:
        self._conn._owner.connection_bad_message(self._conn, error)

    def peer_failed(self, reason: str) -> None:
        self._conn.fail(OdysseyConnectionError(reason, session_id=self._conn.session_id))

    def frame_written(self, seq: int) -> None:
        self._conn.last_frame_at = time.monotonic()
        self._conn._owner.connection_frame(self._conn, seq)


def _clamp(deadline: Deadline, seconds: float) -> float:
    left = deadline.clamp(seconds)
    return seconds if left is None else left


def _step(deadline: Deadline, cap: float = STEP_CAP) -> float:
    """One teardown step's wait: what is left of ``deadline``, at most ``cap``, at least 0.05 s."""
    return max(0.05, _clamp(deadline, cap))
