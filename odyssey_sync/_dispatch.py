"""Where user callbacks run: one ordered event worker and one latest-wins video worker.

User code never runs on the event-loop thread (a slow or raising callback
would stall ICE, DTLS, RTCP and the signaling socket). Instead:

* **events** (``on_status_change``, ``on_stream_started``, ``on_error`` …) are
  posted into a bounded FIFO and run one after another, in order, on the
  ``<prefix>-events`` thread;
* **video frames** are pulled by the ``<prefix>-video`` thread straight from a
  frame source (the ring): it waits for a frame newer than the last one it
  delivered, calls the callback with the leased frame and releases it. A slow
  callback therefore *skips* frames (counted), it never queues them.

A callback that raises is logged and reported through the error hook (the
facade turns it into ``on_error(err, False)``); delivery goes on.

Both workers are daemons (a forgotten client never blocks exit) and are
joined by :meth:`Dispatcher.stop`, which may be called from inside a callback:
it then does not join the thread it runs on.

Nothing here knows about Odyssey; the spectator reuses it unchanged.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["DeliveryStats", "Dispatcher", "FrameSource", "LeasedFrame", "percentile"]

log = logging.getLogger("odyssey_sync.dispatch")

#: how many recent latency samples the percentiles are computed over
_SAMPLES = 1024


class LeasedFrame(Protocol):
    """What the video worker needs of a frame (``odyssey_sync._frames.VideoFrame``)."""

    @property
    def seq(self) -> int: ...

    @property
    def received_at(self) -> float: ...

    def release(self) -> None: ...


class FrameSource(Protocol):
    """What the video worker needs of a ring (``odyssey_sync._frames.FrameRing``)."""

    def wait_newer(self, after_seq: int, timeout: float | None = None) -> Any: ...


@dataclass(frozen=True)
class DeliveryStats:
    """Counters of the video worker (a snapshot).

    Attributes:
        delivered: frames handed to the video callback.
        skipped: frames that became available but were never delivered because
            a newer one was already there when the worker came back (latest-wins).
        callback_errors: callback invocations that raised.
        delivery_us_p50/p99: frame ``received_at`` → callback start, microseconds.
        events_dropped: events discarded because the event queue was full.
    """

    delivered: int = 0
    skipped: int = 0
    callback_errors: int = 0
    delivery_us_p50: float = 0.0
    delivery_us_p99: float = 0.0
    events_dropped: int = 0


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of ``samples`` (0.0 when empty); ``q`` in [0, 100]."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    k = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[k]


_STOP = object()

_Event = tuple[Callable[..., Any], tuple[Any, ...], str]

ErrorHook = Callable[[BaseException, str], None]


class Dispatcher:
    """Runs user callbacks on its own worker threads.

    Args:
        name: thread name prefix (threads are ``<name>-events`` and ``<name>-video``).
        on_callback_error: called as ``hook(exc, callback_name)`` on the event
            worker after a callback raised (the facade reports it as
            ``on_error(exc, False)``); an exception inside the hook is only logged.
        max_events: bound of the event FIFO; a post beyond it is dropped,
            counted and warned about once (the network side never waits).
        share_worker: run video callbacks on the events thread too (one
            worker in all: events and frames are then serialised).

    Thread safety: :meth:`post`, :meth:`stats` and :meth:`stop` may be called
    from any thread, including the workers themselves.
    """

    def __init__(
        self,
        name: str = "odyssey",
        *,
        on_callback_error: ErrorHook | None = None,
        max_events: int = 1024,
        share_worker: bool = False,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        self.name = name
        self._on_callback_error = on_callback_error
        self._max_events = max_events
        self._share_worker = share_worker
        self._events: collections.deque[_Event | object] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._started = False
        self._event_thread: threading.Thread | None = None
        self._video_thread: threading.Thread | None = None
        self._video_stop = threading.Event()
        self._stats_lock = threading.Lock()
        self._delivered = 0
        self._skipped = 0
        self._callback_errors = 0
        self._events_dropped = 0
        self._warned_drop = False
        self._latencies: collections.deque[float] = collections.deque(maxlen=_SAMPLES)
        self._shared: tuple[FrameSource, Callable[[Any], None], str] | None = None
        self._shared_pending = False
        self._shared_last_seq = 0  # ring seqs start at 1

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the event worker (non-blocking). Idempotent until :meth:`stop`."""
        with self._cond:
            if self._stopping:
                raise RuntimeError("dispatcher was stopped; create a new one")
            if self._started:
                return
            self._started = True
            # daemon: a user callback stuck forever must not block interpreter exit.
            self._event_thread = threading.Thread(
                target=self._run_events, name=f"{self.name}-events", daemon=True
            )
        self._event_thread.start()

    def start_video(
        self,
        source: FrameSource,
        callback: Callable[[Any], None],
        *,
        poll: float = 0.25,
        callback_name: str = "on_video_frame",
    ) -> None:
        """Start the latest-wins video worker over ``source`` (non-blocking).

        The worker loops ``source.wait_newer(last_seq, timeout=poll)``; each
        frame it gets is passed to ``callback`` and released afterwards (also
        when the callback raises). Frames that appeared and were superseded
        meanwhile are counted as skipped. Only one video worker per dispatcher.
        With ``share_worker=True`` no thread is started: frames are delivered
        on the event worker, coalesced, whenever :meth:`notify_frame` is called.
        """
        with self._cond:
            if self._stopping:
                return
            if self._video_thread is not None or self._shared is not None:
                raise RuntimeError("the video worker is already running")
            if self._share_worker:
                self._shared = (source, callback, callback_name)
                return
            self._video_thread = threading.Thread(
                target=self._run_video,
                args=(source, callback, poll, callback_name),
                name=f"{self.name}-video",
                daemon=True,
            )
        self._video_thread.start()

    def is_worker_thread(self) -> bool:
        """True when called from one of this dispatcher's worker threads."""
        current = threading.current_thread()
        return current is self._event_thread or current is self._video_thread

    def stop(self, timeout: float = 5.0, *, drain: bool = True) -> bool:
        """Stop the workers and join them (bounded), except the calling one.

        Blocking up to ``timeout`` seconds per worker. ``drain=True`` lets the
        events already queued run first (so ``on_disconnected`` posted just
        before still arrives); ``drain=False`` discards them. Called from a
        worker thread (a callback calling ``disconnect()``), it signals the
        workers and returns without joining the calling thread, which exits
        when the callback returns. Idempotent. Returns False when a worker
        (other than the calling one) is still running after ``timeout``.
        """
        with self._cond:
            if not drain:
                self._events.clear()
            if not self._stopping:
                self._stopping = True
                self._events.append(_STOP)
            self._cond.notify_all()
        self._video_stop.set()
        current = threading.current_thread()
        joined = True
        for thread in (self._video_thread, self._event_thread):
            if thread is None or thread is current or not thread.is_alive():
                continue
            thread.join(timeout)
            if thread.is_alive():
                joined = False
                log.warning(
                    "callback thread %s still busy after %.1f s; leaving it (daemon)",
                    thread.name, timeout,
                )
        return joined

    # ---------------------------------------------------------------- events
    def post(self, fn: Callable[..., Any] | None, *args: Any, name: str | None = None) -> bool:
        """Queue ``fn(*args)`` for the event worker; never blocks, any thread.

        ``None`` is accepted and ignored (an unset user callback). Returns False
        when the call was dropped (dispatcher stopping, or queue full — counted).
        ``name`` labels the callback in logs and error reports.
        """
        if fn is None:
            return False
        label = name or getattr(fn, "__name__", "callback")
        with self._cond:
            if self._stopping:
                return False
            if len(self._events) >= self._max_events:
                self._events_dropped += 1
                if not self._warned_drop:
                    self._warned_drop = True
                    log.warning(
                        "event queue full (%d): a callback is too slow; dropping %s "
                        "(further drops are counted in stats)", self._max_events, label,
                    )
                return False
            self._events.append((fn, args, label))
            self._cond.notify()
        return True

    def _run_events(self) -> None:
        while True:
            with self._cond:
                while not self._events:
                    self._cond.wait()
                item = self._events.popleft()
            if item is _STOP:
                return
            assert isinstance(item, tuple)
            event: _Event = item
            self._invoke(*event)

    def _invoke(self, fn: Callable[..., Any], args: tuple[Any, ...], label: str) -> None:
        try:
            fn(*args)
        except Exception as exc:
            with self._stats_lock:
                self._callback_errors += 1
            log.exception("user callback %s raised", label)
            self._report(exc, label)

    def _report(self, exc: BaseException, label: str) -> None:
        hook = self._on_callback_error
        if hook is None:
            return
        try:
            hook(exc, label)
        except Exception:  # an on_error that raises must not recurse
            log.exception("error hook raised while reporting %s", label)

    # ----------------------------------------------------------------- video
    def _run_video(
        self, source: FrameSource, callback: Callable[[Any], None], poll: float, label: str
    ) -> None:
        last_seq = 0  # ring seqs start at 1
        while not self._video_stop.is_set():
            try:
                frame = source.wait_newer(last_seq, timeout=poll)
            except Exception:  # a closed/broken source ends delivery, not the process
                log.debug("frame source failed; video worker ends", exc_info=True)
                return
            if frame is None:
                if getattr(source, "closed", False):
                    return  # a closed ring answers at once: waiting on it again would spin
                continue
            try:
                self._deliver(frame, callback, label, last_seq)
                last_seq = frame.seq
            finally:
                frame.release()

    def _deliver(
        self, frame: Any, callback: Callable[[Any], None], label: str, last_seq: int
    ) -> None:
        started = time.monotonic()
        skipped = max(0, frame.seq - last_seq - 1) if last_seq > 0 else 0
        with self._stats_lock:
            self._delivered += 1
            self._skipped += skipped
            self._latencies.append((started - frame.received_at) * 1e6)
        try:
            callback(frame)
        except Exception as exc:
            with self._stats_lock:
                self._callback_errors += 1
            log.exception("user callback %s raised", label)
            # Report on the event worker so on_error stays ordered with other events.
            if not self.post(self._report, exc, label, name="error hook"):
                self._report(exc, label)

    def notify_frame(self) -> None:
        """Tell a shared worker (``share_worker=True``) that a new frame exists.

        Non-blocking, any thread (the loop's track reader calls it after each
        ring write). Coalesced: at most one delivery is queued at a time, and
        it delivers the newest frame then, so frames are skipped, never queued.
        A no-op with a dedicated video worker (it waits on the ring itself).
        """
        shared = self._shared
        if shared is None:
            return
        with self._cond:
            if self._shared_pending:
                return
            self._shared_pending = True
        self.post(self._deliver_shared, name="on_video_frame")

    def _deliver_shared(self) -> None:
        shared = self._shared
        with self._cond:
            self._shared_pending = False
        if shared is None:
            return
        source, callback, label = shared
        frame = source.wait_newer(self._shared_last_seq, timeout=0)
        if frame is None:
            return
        try:
            self._deliver(frame, callback, label, self._shared_last_seq)
            self._shared_last_seq = frame.seq
        finally:
            frame.release()

    # ----------------------------------------------------------------- stats
    def stats(self) -> DeliveryStats:
        """A consistent snapshot of the counters (non-blocking, any thread)."""
        with self._stats_lock:
            samples = list(self._latencies)
            return DeliveryStats(
                delivered=self._delivered,
                skipped=self._skipped,
                callback_errors=self._callback_errors,
                delivery_us_p50=percentile(samples, 50),
                delivery_us_p99=percentile(samples, 99),
                events_dropped=self._events_dropped,
            )

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else ("running" if self._started else "idle")
        return f"<Dispatcher {self.name!r} {state}>"
