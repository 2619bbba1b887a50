"""``resume=True``: one logical session across the service's stream and connection endings.

The service ends every stream after 150 s and every connection after 60 min
(PROTOCOL §17), and connections also end by accident. The :class:`Resumer`
keeps the user's session going across both, on its own thread
(``odyssey-N-resume``), so that no user callback, no loop thread and no
caller ever runs the recovery:

* **planned** endings (a limit is near) are handed over *make before break*:
  a second connection is opened, the next stream started on it, and the
  :class:`~odyssey_sync._session.FrameFeed` switches consumers over at that
  stream's first frame; then the old stream is ended and the old connection
  closed cleanly. When no second session can be had (the account's
  concurrent-stream limit, no free streamer) it ends the old stream first
  and says so in ``stats.resumes.fallbacks``;
* **unplanned** endings (signaling lost, peer failed, video stalled, server
  restarted) are recovered *break before make*: status ``RECONNECTING``, a
  new connection with backoff within ``resume_timeout``, the next stream,
  status ``CONNECTED``. Bad keys, suspended accounts and other usage errors
  are final.

The next stream starts from the last received frame (image-to-video, when
the streamer can) with the stream's prompt, and the last acknowledged
interaction is applied again, so the world continues where it was.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ._connection import Connection
from ._deadline import Deadline
from ._protocol import StreamError, start_message, update_message
from .errors import (
    ConcurrentLimitReachedError,
    OdysseyAuthError,
    OdysseyConnectionError,
    OdysseyError,
    OdysseyQueueTimeoutError,
    OdysseyUsageError,
)
from .types import ConnectionStatus, ResumeStats

if TYPE_CHECKING:
    from ._session import Session, StreamRequest

__all__ = ["Resumer"]

log = logging.getLogger("odyssey_sync.resume")

#: how often the supervisor looks at the clock when nothing wakes it
TICK = 0.05
#: how long a new stream may take to show its first frame before the handover gives up
FIRST_FRAME_TIMEOUT = 5.0
#: bound of the clean-up steps of an old connection (end its stream, close it)
GOODBYE_TIMEOUT = 2.0


class Resumer:
    """The resume supervisor of one :class:`~odyssey_sync._session.Session`."""

    def __init__(self, session: Session) -> None:
        self._s = session
        self._cfg = session.config
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._lost: tuple[Connection, str] | None = None
        self._successor: Connection | None = None
        self._switch = threading.Event()
        self._stats = ResumeStats()
        self._stats_lock = threading.Lock()

    # --------------------------------------------------------------- control
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"{self._s.name}-resume", daemon=True
        )
        self._thread.start()

    def stop(self, deadline: Deadline) -> list[Connection]:
        """Stop the supervisor (any thread); return connections still to be closed."""
        with self._cond:
            self._stopping = True
            successor = self._successor
            self._cond.notify_all()
        if successor is not None:
            successor.abort()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            left = deadline.clamp(5.0)
            thread.join(5.0 if left is None else max(0.05, left))
        return [successor] if successor is not None else []

    def stats(self) -> ResumeStats:
        with self._stats_lock:
            return self._stats

    def _count(self, **changes: object) -> None:
        from dataclasses import replace

        with self._stats_lock:
            self._stats = replace(self._stats, **changes)  # type: ignore[arg-type]

    # ------------------------------------------------- reports (any thread)
    def absorbs(self, conn: Connection, event: StreamError) -> bool:
        """A stream error the resumer handles itself (the stream limit): hide it."""
        if event.reason != "session_timeout":
            return False
        if conn is self._s.conn and self._successor is None:
            self._schedule(conn, "stream limit reached before the handover")
        return True

    def absorbs_loss(self, conn: Connection, exc: OdysseyError) -> bool:
        """A connection ended: True when the resumer takes care of it."""
        s = self._s
        if s.closing or not s.connected:
            return False
        if conn is not s.conn:
            return True  # an old connection after a handover, or a failing successor
        self._schedule(conn, exc.message or type(exc).__name__)
        return True

    def switched(self, conn: Connection, gap: float) -> None:
        """The feed admitted ``conn``'s first frame of its stream (its loop thread)."""
        s = self._s
        gap_ms = gap * 1000.0
        with self._stats_lock:
            last = self._stats
        self._count(last_gap_ms=gap_ms, max_gap_ms=max(last.max_gap_ms, gap_ms))
        with s.lock:
            if s.conn is not conn:
                s.conn = conn
                if conn.stream_id:
                    s.stream_ids.append(conn.stream_id)
                    s.post(s.handlers.on_stream_started, conn.stream_id,
                           name="on_stream_started")
            s.want_stream = conn.stream_id
            s.changed.notify_all()
        self._switch.set()

    def _schedule(self, conn: Connection, reason: str) -> None:
        with self._cond:
            if self._lost is None:
                self._lost = (conn, reason)
            self._cond.notify_all()

    # ------------------------------------------------------------ supervisor
    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                lost, self._lost = self._lost, None
                if lost is not None and lost[0] is not self._s.conn:
                    lost = None  # an old connection ending after its handover: nothing to do
                if lost is None:
                    planned = self._due()
                    if planned is None:
                        self._cond.wait(TICK)
                        continue
            try:
                if lost is not None:
                    self._recover(lost[0], lost[1])
                elif planned is not None:
                    self._handover(planned)
            except Exception:  # never let the supervisor die silently
                log.exception("resume failed unexpectedly")
                self._give_up(OdysseyConnectionError("resume failed unexpectedly"))
                return

    def _lead(self, limit: float) -> float:
        lead = self._cfg.handover_lead
        return lead if lead is not None else min(10.0, 0.5 * limit)

    def _due(self) -> str | None:
        """What is due now: a planned handover, a stall (queued as a loss), or nothing."""
        s = self._s
        conn = s.conn
        if conn is None or not conn.connected or conn.closing or s.status is not (
            ConnectionStatus.CONNECTED
        ):
            return None
        now = time.monotonic()
        streaming = conn.stream_id is not None and s.stream is not None
        cfg = self._cfg
        if streaming and cfg.stream_limit is not None and now >= (
            conn.stream_started_at + cfg.stream_limit - self._lead(cfg.stream_limit)
        ):
            return "stream limit"
        if cfg.connection_limit is not None and now >= (
            conn.connected_at + cfg.connection_limit - self._lead(cfg.connection_limit)
        ):
            return "connection limit"
        if streaming:
            last = max(conn.last_frame_at, conn.stream_started_at)
            if now - last > cfg.stall_timeout:
                self._lost = (conn, f"no video for {cfg.stall_timeout:g} s")
                return None
        return None

    # ------------------------------------------------------------ handover
    def _handover(self, reason: str) -> None:
        s = self._s
        old = s.conn
        assert old is not None
        request = s.stream
        log.info("%s: handing the session over to a new connection (%s)", s.name, reason)
        # No queueing: a second session that is not free now means fall back.
        new = self._open(Deadline(self._cfg.resume_timeout), queue_timeout=0.0)
        if isinstance(new, BaseException):
            if self._stopping:
                return
            log.info("%s: no second session (%s); ending the old stream first", s.name, new)
            self._count(fallbacks=self.stats().fallbacks + 1)
            self._goodbye(old, end_stream=True)
            self._recover(old, f"{reason} (fallback: {new})", planned=True)
            return
        if request is None:
            s.feed.activate(new)
            with s.lock:
                s.conn = new
            self._count(planned=self.stats().planned + 1, last_reason=reason)
            self._goodbye(old, end_stream=False)
            return
        # The user's start_stream/end_stream wait while the next stream starts
        # and the consumers switch, so the two never interleave.
        with s.stream_lock:
            if s.stream is not request:  # the user ended or replaced the stream meanwhile
                self._release(new)
                return
            self._switch.clear()
            s.feed.expect(new)
            # As late as possible: the old stream runs on while the new one starts.
            image = self._next_image(request, old)
            failure: str | None = None
            try:
                self._start_next(new, request, image)
                if not self._wait_switch():
                    failure = "the next stream showed no frame in time"
            except OdysseyError as exc:
                failure = f"the next stream did not start: {exc}"
            if failure is None:
                self._count(planned=self.stats().planned + 1, last_reason=reason)
                self._reapply(new)
            else:
                s.feed.expect(None)
                self._release(new)
        if failure is not None:
            if not self._stopping:
                self._recover(old, f"{reason} ({failure})")
            return
        self._goodbye(old, end_stream=True)

    def _wait_switch(self) -> bool:
        end = time.monotonic() + FIRST_FRAME_TIMEOUT
        while not self._switch.wait(TICK):
            if self._stopping or time.monotonic() >= end:
                return False
        return True

    # ------------------------------------------------------------- recovery
    def _recover(self, lost: Connection, reason: str, *, planned: bool = False) -> None:
        s = self._s
        if s.closing or self._stopping:
            return
        log.info("%s: reconnecting (%s)", s.name, reason)
        if not planned:
            s.set_status(ConnectionStatus.RECONNECTING, reason)
        self._release(lost)
        request = s.stream
        image = self._next_image(request, lost) if request is not None else None
        budget = Deadline(self._cfg.resume_timeout)
        retries = 0
        while True:
            new = self._open(budget)
            if isinstance(new, Connection):
                break
            if self._stopping or s.closing:
                return
            if _final(new) or budget.expired:
                self._give_up(new)
                return
            delay = min(self._cfg.retry_delay(retries), budget.clamp(10.0) or 0.0)
            retries += 1
            log.info("%s: reconnect attempt failed (%s); retry in %.1f s", s.name, new, delay)
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, delay):
                    return
        s.feed.activate(new, announce=True)
        with s.lock:
            s.conn = new
        self._switch.clear()
        if request is not None:
            try:
                self._start_next(new, request, image)
            except OdysseyError as exc:
                # The new connection is up but the stream would not start: try again.
                self._schedule(new, f"the next stream did not start: {exc}")
                return
            with s.lock:
                s.want_stream = new.stream_id  # pullers wait for the new stream's frames
                s.changed.notify_all()
        kind = "planned" if planned else "unplanned"
        self._count(**{kind: getattr(self.stats(), kind) + 1}, last_reason=reason)
        if request is not None:
            self._reapply(new)
        s.set_status(ConnectionStatus.CONNECTED, "resumed")

    def _give_up(self, exc: BaseException) -> None:
        s = self._s
        err = exc if isinstance(exc, OdysseyError) else OdysseyConnectionError(str(exc))
        self._count(failed=self.stats().failed + 1)
        with s.lock:
            if s.closing:
                return
            s.closing = True
            s.lost = f"resume gave up: {err.message}"
            s.set_status(ConnectionStatus.FAILED, err.message)
            s.post(s.handlers.on_error, err, True, name="on_error")
        s.close_in_background(err)

    # --------------------------------------------------------------- helpers
    def _open(
        self, deadline: Deadline, *, queue_timeout: float | None = None
    ) -> Connection | OdysseyError:
        """A new connected connection, or the error that prevented it."""
        new = self._s.new_connection()
        with self._cond:
            if self._stopping:
                return OdysseyConnectionError("disconnecting")
            self._successor = new
        try:
            new.open(deadline, queue_timeout=queue_timeout)
        except OdysseyError as exc:
            self._release(new)
            return exc
        finally:
            with self._cond:
                self._successor = None
        if self._stopping:
            self._release(new)
            return OdysseyConnectionError("disconnecting")
        return new

    def _start_next(self, conn: Connection, request: StreamRequest, image: str | None) -> None:
        s = self._s
        message = start_message(
            request.prompt, portrait=request.portrait, image_data_url=image,
            broadcast=request.broadcast, bypass_prompt_expansion=request.bypass_prompt_expansion,
        )
        deadline = Deadline(self._cfg.stream_timeout)
        s.request("resume start_stream", "start", message, deadline, conn=conn)

    def _reapply(self, conn: Connection) -> None:
        """Apply the last acknowledged interaction to the new stream (best effort).

        An interaction the user sent to the old stream while this one was
        starting is applied too: the loop runs until the last one is current.
        """
        s = self._s
        for _ in range(3):  # each pass answers one the user made meanwhile; bounded anyway
            with s.lock:
                prompt, on = s.last_interaction, s.last_interaction_on
            if prompt is None or on is conn:
                return
            try:
                s.request("resume interact", "interact", update_message(prompt),
                          Deadline(self._cfg.stream_timeout), echo=prompt, conn=conn)
            except OdysseyError as exc:
                log.info("%s: could not re-apply the last interaction: %s", s.name, exc)
                return
            with s.lock:
                if s.last_interaction == prompt:
                    s.last_interaction_on = conn

    def _next_image(self, request: StreamRequest, conn: Connection) -> str | None:
        """The next stream's start picture: the last frame, or the original image."""
        if self._cfg.resume_image == "original":
            return request.image_data_url
        caps = conn.capabilities
        if caps is not None and not caps.image_to_video:
            return request.image_data_url
        frame = self._s.ring.latest()
        if frame is None:
            return request.image_data_url
        try:
            pixels = frame.data[..., :3]
            if self._cfg.frame_format == "bgr24":
                pixels = pixels[..., ::-1]
            from ._images import encode_image

            return encode_image(pixels.copy(), portrait=request.portrait)
        finally:
            frame.release()

    def _goodbye(self, conn: Connection, *, end_stream: bool) -> None:
        """End an old connection's stream (if asked) and close it cleanly, bounded."""
        if end_stream and conn.stream_id is not None and conn.connected and not conn.closing:
            from ._protocol import end_message

            try:
                self._s.request("resume end_stream", "end", end_message(),
                                Deadline(GOODBYE_TIMEOUT), conn=conn)
            except OdysseyError as exc:
                log.debug("old stream did not end cleanly: %s", exc)
        self._release(conn)

    def _release(self, conn: Connection) -> None:
        conn.close(Deadline(GOODBYE_TIMEOUT), OdysseyConnectionError("resumed elsewhere"))


def _final(exc: OdysseyError) -> bool:
    """Errors no retry can fix: bad keys, suspended accounts, other account limits."""
    if isinstance(exc, ConcurrentLimitReachedError | OdysseyQueueTimeoutError):
        return False  # a slot or a streamer may free up: retry within the budget
    return isinstance(exc, OdysseyAuthError | OdysseyUsageError)
