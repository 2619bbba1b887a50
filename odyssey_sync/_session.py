"""The logical session behind :class:`~odyssey_sync.Odyssey`: one per ``connect()``.

A :class:`Session` owns what the user's view is made of — the frame ring,
the callback dispatcher, the status, the list of streams — and the
:class:`~odyssey_sync._connection.Connection` currently serving it. Because
the ring and the dispatcher belong to the session and not to a connection,
the session can replace its connection without the user noticing: that is
what ``resume=True`` does (the :class:`~odyssey_sync._resume.Resumer`).

Frames reach the ring through a :class:`FrameFeed`, which admits frames of
the *active* connection only, and promotes an expected successor at its
first frame of a started stream (make before break).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

from ._connection import Connection
from ._deadline import Deadline
from ._dispatch import Dispatcher
from ._feed import FrameFeed
from ._protocol import (
    BroadcastMalformed,
    BroadcastReady,
    InteractAcknowledged,
    ReplyKind,
    StreamEnded,
    StreamerEvent,
    StreamError,
    StreamStarted,
    end_message,
    transition_allowed,
    update_message,
)
from ._telemetry import error_event, error_text
from .config import ClientConfig
from .errors import (
    OdysseyConnectionError,
    OdysseyError,
    OdysseyStreamError,
    OdysseyTimeoutError,
)
from .types import (
    BroadcastInfo,
    ClientCredentials,
    ClientStats,
    ConnectionStatus,
    ResumeStats,
)

if TYPE_CHECKING:
    from ._frames import FrameRing, VideoFrame
    from ._rest import ApiClient

__all__ = ["Handlers", "Session", "StreamRequest"]

log = logging.getLogger("odyssey_sync.session")

#: slice of long waits, so a disconnect from another thread is noticed promptly
POLL = 0.25


@dataclass
class Handlers:
    """The user's callbacks (each optional); checked to be callable."""

    on_connected: Callable[[], None] | None = None
    on_disconnected: Callable[[], None] | None = None
    on_video_frame: Callable[[Any], None] | None = None
    on_stream_started: Callable[[str], None] | None = None
    on_stream_ended: Callable[[], None] | None = None
    on_interact_acknowledged: Callable[[str], None] | None = None
    on_stream_error: Callable[[str, str], None] | None = None
    on_error: Callable[[Exception, bool], None] | None = None
    on_status_change: Callable[[ConnectionStatus, str | None], None] | None = None
    on_broadcast_ready: Callable[[BroadcastInfo], None] | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))


@dataclass(frozen=True)
class StreamRequest:
    """What the user's ``start_stream`` asked for (a resume starts the next stream alike)."""

    prompt: str
    portrait: bool
    image_data_url: str | None
    broadcast: bool
    bypass_prompt_expansion: bool | None


class SessionResumer(Protocol):
    """What the session asks of its resumer (``odyssey_sync._resume.Resumer``)."""

    def start(self) -> None: ...

    def stop(self, deadline: Deadline) -> list[Connection]: ...

    def stats(self) -> ResumeStats: ...

    def absorbs(self, conn: Connection, event: StreamError) -> bool: ...

    def absorbs_loss(self, conn: Connection, exc: OdysseyError) -> bool: ...

    def switched(self, conn: Connection, gap: float) -> None: ...


class Session:
    """One logical session: status, ring, dispatcher, streams, and its connection(s).

    Created by ``Odyssey.connect()`` and closed by ``disconnect()``. Its
    public methods block the calling thread (any thread but a loop thread);
    ``connection_*`` methods are the :class:`ConnectionOwner` side, called
    by connections on their threads, and never block.
    """

    def __init__(
        self,
        *,
        name: str,
        config: ClientConfig,
        api: ApiClient,
        handlers: Handlers,
        ring: FrameRing,
    ) -> None:
        self.name = name
        self.config = config
        self.api = api
        self.handlers = handlers
        self.lock = threading.RLock()
        self.status = ConnectionStatus.DISCONNECTED
        self.dispatcher = Dispatcher(
            name,
            on_callback_error=self._callback_failed,
            max_events=config.event_queue_size,
            share_worker=config.callback_workers == 1,
        )
        self.feed = FrameFeed(ring, self._switched, lambda: self.stream is not None)
        self.conn: Connection | None = None
        self.connected = False
        self.closing = False
        self.closed = threading.Event()
        self.stream_ids: list[str] = []
        self.stream: StreamRequest | None = None
        self.last_interaction: str | None = None
        #: the connection whose stream acknowledged ``last_interaction``
        self.last_interaction_on: Connection | None = None
        self.last_applied_prompt: str | None = None
        #: pull API: frames of this stream only (None: any frame)
        self.want_stream: str | None = None
        #: notified on every status change and stream switch (waiters re-check)
        self.changed = threading.Condition(self.lock)
        self._numbers = 0
        self.resumer: SessionResumer | None = None
        #: why the session ended on its own (the server or the network), if it did
        self.lost: str | None = None
        self._teardown: threading.Thread | None = None
        #: held by a user's start_stream/end_stream and by a handover's switch
        self.stream_lock = threading.Lock()

    # ----------------------------------------------------------------- state
    @property
    def ring(self) -> FrameRing:
        return self.feed.ring

    @property
    def stream_id(self) -> str | None:
        conn = self.conn
        return conn.stream_id if conn is not None else None

    @property
    def session_id(self) -> str | None:
        conn = self.conn
        return conn.session_id if conn is not None and not self.closing else None

    def set_status(self, status: ConnectionStatus, message: str | None = None) -> None:
        """Change status and announce it through ``on_status_change`` (any thread)."""
        with self.lock:
            old = self.status
            if not transition_allowed(old, status):
                log.debug("ignoring status change %s → %s", old.value, status.value)
                return
            self.status = status
            self.dispatcher.post(
                self.handlers.on_status_change, status, message, name="on_status_change"
            )
            self.changed.notify_all()
        log.debug("status %s → %s%s", old.value, status.value, f" ({message})" if message else "")

    def post(self, fn: Callable[..., Any] | None, *args: Any, name: str) -> None:
        self.dispatcher.post(fn, *args, name=name)

    def new_connection(self) -> Connection:
        """A fresh connection whose frames go through the feed (not yet active)."""
        with self.lock:
            self._numbers += 1
            number = self._numbers
        name = self.name if number == 1 else f"{self.name}.{number}"
        return Connection(name=name, config=self.config, api=self.api,
                          sink_for=self.feed.sink, owner=self)

    # ------------------------------------------------------------------ open
    def open(self, deadline: Deadline, credentials: ClientCredentials | None) -> None:
        """Connect the first connection; return once video can flow (caller's thread)."""
        self.dispatcher.start()
        if self.handlers.on_video_frame is not None:
            self.dispatcher.start_video(self.ring, self.handlers.on_video_frame)
        self.set_status(
            ConnectionStatus.CONNECTING if credentials else ConnectionStatus.AUTHENTICATING
        )
        conn = self.new_connection()
        with self.lock:
            self.conn = conn
        self.feed.activate(conn)
        conn.open(deadline, credentials)
        with self.lock:
            if conn.aborted or self.closing:
                raise OdysseyConnectionError("connect() aborted by disconnect()")
            self.connected = True
            self.set_status(ConnectionStatus.CONNECTED)
            self.post(self.handlers.on_connected, name="on_connected")
        if self.resumer is not None:
            self.resumer.start()

    # --------------------------------------------------------------- streams
    def ready_connection(self, what: str, deadline: Deadline) -> Connection:
        """The connection to send on; waits out a recovery within ``deadline``."""
        with self.lock:
            while True:
                conn = self.conn
                if self.closing:
                    raise OdysseyStreamError(
                        f"{what} requires a connected client (status: {self.status.value})")
                if (
                    self.status is ConnectionStatus.CONNECTED
                    and conn is not None
                    and conn.connected
                    and not conn.closing
                ):
                    return conn
                if self.status is not ConnectionStatus.RECONNECTING:
                    raise OdysseyStreamError(
                        f"{what} requires a connected client (status: {self.status.value})")
                if deadline.expired:
                    raise OdysseyTimeoutError(
                        f"{what}: the session was still reconnecting after "
                        f"{deadline.timeout:g} s")
                self.changed.wait(deadline.clamp(POLL))

    def request(
        self, what: str, kind: ReplyKind, message: dict[str, Any], deadline: Deadline,
        *, echo: str | None = None, conn: Connection | None = None,
    ) -> Any:
        """Send a request and wait for its reply, all within ``deadline``.

        With resume, a request cut off by a lost connection is sent again on
        the recovered one (still within ``deadline``).
        """
        while True:
            target = conn if conn is not None else self.ready_connection(what, deadline)
            slot = target.request(kind, message, deadline, echo=echo)
            try:
                return slot.future.result(deadline.remaining())
            except TimeoutError:
                # Retired, not removed: a late reply is dropped, never handed to the next caller.
                target.replies.retire(slot)
                raise OdysseyTimeoutError(
                    f"{what}: no reply within {deadline.timeout:g} s",
                    session_id=target.session_id, stream_id=target.stream_id,
                ) from None
            except OdysseyConnectionError:
                if conn is not None or self.resumer is None or self.closing:
                    raise
                if kind == "start" or not self._wait_for_recovery(target, deadline):
                    raise
                log.debug("%s cut off by a lost connection; sending it again", what)

    def _wait_for_recovery(self, lost: Connection, deadline: Deadline) -> bool:
        """After ``lost`` failed a request: wait until another connection serves us."""
        with self.lock:
            while not self.closing and not deadline.expired:
                conn = self.conn
                if conn is not lost and self.status is ConnectionStatus.CONNECTED:
                    return True
                if self.status not in (ConnectionStatus.CONNECTED,
                                       ConnectionStatus.RECONNECTING):
                    return False
                self.changed.wait(deadline.clamp(POLL))
        return False

    def start_stream(self, request: StreamRequest, deadline: Deadline) -> str:
        from ._protocol import start_message

        message = start_message(
            request.prompt, portrait=request.portrait, image_data_url=request.image_data_url,
            broadcast=request.broadcast, bypass_prompt_expansion=request.bypass_prompt_expansion,
        )
        with self.stream_changes(deadline, "start_stream"):
            stream_id: str = self.request("start_stream", "start", message, deadline)
            with self.lock:
                self.stream = request
                self.last_interaction = None
                self.want_stream = stream_id
                self.changed.notify_all()
        return stream_id

    @contextlib.contextmanager
    def stream_changes(self, deadline: Deadline, what: str) -> Iterator[None]:
        """Hold the stream lock: a user's start/end and a handover never interleave."""
        left = deadline.remaining()
        if not self.stream_lock.acquire(timeout=-1 if left is None else left):
            raise OdysseyTimeoutError(
                f"{what}: a stream handover was still running after {deadline.timeout:g} s")
        try:
            yield
        finally:
            self.stream_lock.release()

    def interact(self, prompt: str, deadline: Deadline) -> str:
        conn = self.ready_connection("interact", deadline)
        if conn.stream_id is None and conn.replies.waiting("start") == 0 and (
            self.resumer is None or self.stream is None
        ):
            raise OdysseyStreamError(
                "interact requires an active stream (call start_stream first)",
                session_id=conn.session_id,
            )
        ack: str = self.request("interact", "interact", update_message(prompt), deadline,
                                echo=prompt)
        with self.lock:
            self.last_interaction = prompt
            self.last_interaction_on = self.conn
        return ack

    def end_stream(self, deadline: Deadline) -> None:
        with self.stream_changes(deadline, "end_stream"):
            with self.lock:
                self.stream = None  # a resume must not start it again
            self.request("end_stream", "end", end_message(), deadline)
            with self.lock:
                self.want_stream = None
                self.last_interaction = None

    # ------------------------------------------------------ connection events
    def connection_event(self, conn: Connection, event: StreamerEvent) -> None:
        if conn is not self.conn or self.closing:
            # A successor's own start (announced at the switch) or an old connection's end.
            if isinstance(event, StreamStarted | InteractAcknowledged):
                self._note_applied(event)
            return
        handlers = self.handlers
        if isinstance(event, StreamStarted):
            self._note_applied(event)
            with self.lock:
                self.stream_ids.append(event.stream_id)
            self.post(handlers.on_stream_started, event.stream_id, name="on_stream_started")
        elif isinstance(event, InteractAcknowledged):
            self._note_applied(event)
            self.post(handlers.on_interact_acknowledged, event.prompt,
                      name="on_interact_acknowledged")
        elif isinstance(event, StreamEnded):
            self.post(handlers.on_stream_ended, name="on_stream_ended")
        elif isinstance(event, BroadcastReady):
            self.post(handlers.on_broadcast_ready, event.info, name="on_broadcast_ready")
        elif isinstance(event, BroadcastMalformed):
            self.post(handlers.on_stream_error, "broadcast_error", event.detail,
                      name="on_stream_error")
        elif isinstance(event, StreamError):
            if self.resumer is not None and self.resumer.absorbs(conn, event):
                return
            self.post(handlers.on_stream_error, event.reason, event.message,
                      name="on_stream_error")
        else:
            log.debug("ignoring streamer message of type %r", event.kind)

    def _note_applied(self, event: StreamStarted | InteractAcknowledged) -> None:
        applied = event.applied_prompt if isinstance(event, StreamStarted) else event.prompt
        with self.lock:
            self.last_applied_prompt = applied or None

    def connection_frame(self, conn: Connection, seq: int) -> None:
        self.dispatcher.notify_frame()

    def connection_bad_message(self, conn: Connection, exc: Exception) -> None:
        self.post(self.handlers.on_error, exc, False, name="on_error")

    def connection_allocated(self, conn: Connection) -> None:
        if conn is self.conn and not self.connected:
            self.set_status(ConnectionStatus.CONNECTING)

    def connection_retrying(self, conn: Connection, retries: int, reason: str) -> None:
        if conn is self.conn and not self.connected:
            self.set_status(ConnectionStatus.CONNECTING, f"retry {retries}")

    def connection_lost(self, conn: Connection, exc: OdysseyError, *, clean: bool) -> None:
        """A connection ended by itself (any thread): resume, or end the session."""
        if self.resumer is not None and self.resumer.absorbs_loss(conn, exc):
            return
        with self.lock:
            if conn is not self.conn or self.closing:
                return
            self.closing = True
            self.lost = error_text(exc)
            if clean:
                self.set_status(ConnectionStatus.DISCONNECTED, exc.message)
            else:
                self.set_status(ConnectionStatus.FAILED, error_text(exc))
                self.post(self.handlers.on_error, exc, True, name="on_error")
        if not clean:
            self.api.telemetry(error_event(exc, conn.session_id, None))
        self.close_in_background(exc)

    def _switched(self, conn: Connection, gap: float) -> None:
        """The feed promoted ``conn`` (its loop thread): the resumer finishes the handover."""
        if self.resumer is not None:
            self.resumer.switched(conn, gap)

    def _callback_failed(self, exc: BaseException, name: str) -> None:
        """Dispatcher hook (event worker): a user callback raised → on_error(err, False)."""
        if name == "on_error" or not isinstance(exc, Exception):
            return  # an on_error that raises is only logged (no loops)
        handler = self.handlers.on_error
        if handler is not None:
            try:
                handler(exc, False)
            except Exception:
                log.exception("on_error raised while reporting a %s failure", name)

    # ---------------------------------------------------------------- frames
    def acceptable(self, frame: VideoFrame) -> bool:
        want = self.want_stream
        return want is None or frame.stream_id == want

    def wait_frame(
        self, after: int, deadline: Deadline, what: str, max_age: float | None = None
    ) -> VideoFrame:
        """The first acceptable frame newer than seq ``after``, within ``deadline``."""
        ring = self.ring
        while True:
            frame = ring.wait_newer(after, timeout=deadline.clamp(POLL))
            if frame is not None:
                if self.acceptable(frame) and (max_age is None or frame.age <= max_age):
                    return frame
                after = frame.seq
                frame.release()
                continue
            if self.closed.is_set() or ring.closed:
                raise OdysseyConnectionError(f"{what}: disconnected while waiting for a frame")
            if deadline.expired:
                raise OdysseyTimeoutError(
                    f"{what}: no video frame within {deadline.timeout:g} s",
                    session_id=self.session_id,
                )

    def latest_frame(self, deadline: Deadline, max_age: float | None) -> VideoFrame:
        frame = self.ring.latest()
        if frame is not None:
            if self.acceptable(frame) and (max_age is None or frame.age <= max_age):
                return frame
            after = frame.seq
            frame.release()
        else:
            after = -1
        return self.wait_frame(after, deadline, "get_latest_frame", max_age)

    def iter_frames(self, timeout: float | None) -> Iterator[VideoFrame]:
        last = -1
        current: VideoFrame | None = None
        try:
            while True:
                if current is not None:
                    current.release()
                    current = None
                try:
                    current = self.wait_frame(last, Deadline(timeout), "frames")
                except OdysseyConnectionError:
                    return
                last = current.seq
                yield current
        finally:
            if current is not None:
                current.release()

    def stats(self) -> ClientStats:
        conn = self.conn
        fps = conn.fps if conn is not None else 0.0
        resumes = self.resumer.stats() if self.resumer is not None else None
        return ClientStats.collect(self.ring, self.dispatcher, fps=fps, resumes=resumes)

    # -------------------------------------------------------------- teardown
    def abort_open(self) -> None:
        """``disconnect()`` while ``open()`` runs: make it fail promptly."""
        with self.lock:
            self.closing = True
            conn = self.conn
            self.changed.notify_all()
        if conn is not None:
            conn.abort()

    def close(self, deadline: Deadline, reason: OdysseyError, *, cancel: bool) -> bool:
        """Free everything on one deadline; True when every thread was joined.

        ``cancel``: drop queued callbacks instead of delivering them (the
        ``with`` body raised). ``on_disconnected`` is still delivered when
        the session had connected and ``cancel`` is false.
        """
        with self.lock:
            self.closing = True
            self.changed.notify_all()
            conns = [c for c in (self.conn,) if c is not None]
        if self.resumer is not None:
            conns += self.resumer.stop(deadline)
        for conn in conns:
            conn.close(deadline, reason)
        self.ring.close()
        if self.connected and not cancel:
            self.post(self.handlers.on_disconnected, name="on_disconnected")
        joined = self.dispatcher.stop(_step(deadline), drain=not cancel)
        self.closed.set()
        alive = [c for c in conns if c.loop is not None and c.loop.alive]
        return joined and not alive

    def close_in_background(self, reason: OdysseyError) -> threading.Thread:
        """Tear down on a helper thread (called from a loop or worker thread)."""

        def run() -> None:
            self.close(Deadline(None), reason, cancel=False)

        # daemon: teardown is bounded, but must never be what keeps the process alive.
        thread = threading.Thread(target=run, name=f"{self.name}-teardown", daemon=True)
        self._teardown = thread
        thread.start()
        return thread

    def wait_closed(self, timeout: float | None) -> bool:
        """Wait for a teardown started elsewhere; join its helper thread. True when done.

        Never joins the calling thread (a callback waiting on its own session).
        """
        if not self.closed.wait(timeout):
            return False
        thread = self._teardown
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True


def _step(deadline: Deadline, cap: float = 5.0) -> float:
    left = deadline.clamp(cap)
    return max(0.05, cap if left is None else left)
