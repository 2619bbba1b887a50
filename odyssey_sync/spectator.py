"""Watch a broadcast stream as a spectator: :func:`connect_to_stream` (WHEP).

A stream started with ``start_stream(..., broadcast=True)`` announces a
:class:`~odyssey_sync.types.BroadcastInfo` (``on_broadcast_ready``); anyone
holding its ``webrtc_url`` and ``spectator_token`` can watch it::

    from odyssey_sync import connect_to_stream

    with connect_to_stream(info.webrtc_url, info.spectator_token) as spectator:
        for frame in spectator.frames(timeout=5.0):
            show(frame.data)

The flow is WHEP (PROTOCOL §8.2), with the spectator as the offerer:

1. ``GET <origin of webrtc_url>/config`` → ICE servers, TURN credentials kept
   (an empty list means host candidates only — no public STUN server is added);
2. a peer connection with two receive-only transceivers, video then audio;
3. a complete (non-trickle) offer, ICE gathering bounded at 5 s;
4. ``POST {webrtc_url}/whep?token=…`` with ``Content-Type: application/sdp``;
   201 + answer SDP + ``Location`` (resolved against the POST URL);
5. wait for the peer connection to reach ``connected``, then ask for a key
   frame with RTCP PLI so the picture starts at once;
6. on :meth:`SpectatorConnection.close`: ``DELETE <Location>`` (only while
   still connected — after the broadcast ended the server has dropped us).

Threads: REST (``/config``, the POST and the DELETE) runs on the caller's
thread with ``requests``; aiortc runs on the connection's own loop thread
(``odyssey-spectator-loop-N``); user callbacks run on the dispatcher's worker
threads, never on the loop. Frames take the same path as the client's: the
loop's track reader converts each decoded picture into a preallocated
:class:`~odyssey_sync._frames.FrameRing` slot; ``on_video_frame`` gets the
latest frame (a slow callback skips frames, it never queues them) and
:meth:`~SpectatorConnection.get_latest_frame` / :meth:`~SpectatorConnection.frames`
pull from the same ring.

Errors (all :mod:`odyssey_sync.errors`): a refused token (401) is
:class:`~odyssey_sync.errors.OdysseyAuthError` (a ``ValueError``); an unknown
stream (404) and every other failure to connect is
:class:`~odyssey_sync.errors.OdysseyConnectionError` (a ``ConnectionError``,
``status`` set when an HTTP status caused it); running out of time is
:class:`~odyssey_sync.errors.OdysseyTimeoutError`. The spectator token never
appears in logs, reprs or exception texts.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from . import _lifecycle
from ._convert import FRAME_FORMATS
from ._deadline import Deadline, check_timeout
from ._http import HttpClient, strip_query
from ._loop import LoopThread
from ._protocol import check_bool
from ._resize import FrameGeometry, ResizeFilter
from ._rtc import WhepPeer
from ._whep import DELETE_TIMEOUT, delete_resource, fetch_ice_servers, post_offer
from .errors import OdysseyConnectionError, OdysseyTimeoutError
from .types import ClientStats

if TYPE_CHECKING:
    from types import TracebackType

    from ._dispatch import Dispatcher
    from ._frames import FrameFormat, FrameRing, VideoFrame
    from ._rtc import RTCPeerConnection

__all__ = ["SpectatorConnection", "SpectatorStats", "connect_to_stream"]

log = logging.getLogger("odyssey_sync.spectator")

#: Step budgets of PROTOCOL §2.2 ("WHEP timings (Py)"); each is further
#: clamped by the caller's overall ``timeout``.
ICE_GATHERING_TIMEOUT = 5.0
#: With ``timeout=None`` the wait for ``connected`` still ends: ICE gives up on
#: its own after its checks fail, but we do not rely on that alone.
CONNECT_CAP = 60.0

VideoFrameCallback = Callable[["VideoFrame"], None]
DisconnectedCallback = Callable[[], None]

_ids = itertools.count(1)

@dataclass(frozen=True)
class SpectatorStats(ClientStats):
    """Frame counters of one spectator connection (a snapshot): the fields of
    :class:`~odyssey_sync.ClientStats`; ``callback_errors`` covers
    ``on_video_frame`` and ``on_disconnected``; ``resumes`` stays zero."""


def _validate(
    webrtc_url: Any,
    spectator_token: Any,
    on_video_frame: Any,
    on_disconnected: Any,
    timeout: Any,
    frame_format: Any,
    ring_size: Any,
) -> None:
    if not isinstance(webrtc_url, str):
        raise TypeError(f"webrtc_url must be a str, not {type(webrtc_url).__name__}")
    parts = urlsplit(webrtc_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"webrtc_url must be an http(s) URL, got {strip_query(webrtc_url)!r}")
    if not isinstance(spectator_token, str):
        raise TypeError(f"spectator_token must be a str, not {type(spectator_token).__name__}")
    if not spectator_token.strip():
        raise ValueError("spectator_token must not be empty")
    for name, cb in (("on_video_frame", on_video_frame), ("on_disconnected", on_disconnected)):
        if cb is not None and not callable(cb):
            raise TypeError(f"{name} must be callable or None")
    check_timeout(timeout)
    if frame_format not in FRAME_FORMATS:
        raise ValueError(f"frame_format must be one of {', '.join(FRAME_FORMATS)}")
    if isinstance(ring_size, bool) or not isinstance(ring_size, int):
        raise TypeError("ring_size must be an int")
    if ring_size < 2:
        raise ValueError("ring_size must be >= 2 (one slot written, one readable)")


# --------------------------------------------------------------------------- connection


class SpectatorConnection:
    """A live spectator view of a broadcast stream (from :func:`connect_to_stream`).

    Use it as a context manager or call :meth:`close` when done. All methods
    may be called from any thread, including from inside the callbacks.
    """

    def __init__(self, _token: object) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use connect_to_stream() to create a SpectatorConnection")
        self._id = next(_ids)
        self._lock = threading.Lock()
        self._closed = False
        self._ended = threading.Event()
        self._resource: str | None = None
        self._peer: WhepPeer | None = None
        self._http = HttpClient()
        self._loop = LoopThread(f"odyssey-spectator-loop-{self._id}")
        self._on_disconnected: DisconnectedCallback | None = None
        self._disconnect_notified = False
        self._ring: FrameRing | None = None
        self._dispatch: Dispatcher | None = None
        self._url_shown = ""

    # ---------------------------------------------------------------- public
    @property
    def is_connected(self) -> bool:
        """True while the peer connection is up and :meth:`close` was not called."""
        peer = self._peer
        return peer is not None and peer.connected and not self._closed and not (
            self._ended.is_set())

    @property
    def peer_connection(self) -> RTCPeerConnection | None:
        """The underlying aiortc ``RTCPeerConnection`` (for ``getStats``); None after close.

        It lives on the connection's loop thread: only call its coroutines
        through that loop, never directly from your thread.
        """
        peer = self._peer
        return peer.pc if peer is not None and not self._closed else None

    @property
    def stats(self) -> SpectatorStats:
        """A snapshot of the frame counters and latency percentiles (non-blocking, any thread)."""
        peer = self._peer
        return cast(SpectatorStats, SpectatorStats.collect(
            self._ring, self._dispatch, fps=peer.fps if peer is not None else 0.0))

    def get_latest_frame(
        self, timeout: float | None = None, *, max_age: float | None = None
    ) -> VideoFrame:
        """The newest decoded frame, waiting for the first one if none arrived yet.

        Blocking, any thread. ``timeout=None`` waits until a frame arrives or
        the connection ends; ``0`` only looks; a number bounds the wait
        (:class:`~odyssey_sync.errors.OdysseyTimeoutError` after it).
        ``max_age``: refuse a frame older than that many seconds and wait for
        a fresher one. Returns a ``VideoFrame`` whose ``data`` is a read-only
        view of a ring slot, held until you release it (``frame.release()`` /
        ``with frame:``) or take ``frame.copy()``.

        Raises:
            TypeError / ValueError: bad ``timeout`` / ``max_age``.
            OdysseyConnectionError: closed, or ended before any frame arrived.
            OdysseyTimeoutError: no frame within ``timeout``.
        """
        deadline = Deadline(check_timeout(timeout))
        age = check_timeout(max_age, "max_age")
        ring = self._open_ring()
        frame = ring.latest()
        after = -1
        if frame is not None:
            if age is None or frame.age <= age:
                return frame
            after = frame.seq
            frame.release()
        while True:
            fresh = self._wait_newer(after, deadline, "get_latest_frame")
            if age is None or fresh.age <= age:
                return fresh
            after = fresh.seq
            fresh.release()

    def frames(self, timeout: float | None = None) -> Iterator[VideoFrame]:
        """Iterate over frames as they arrive (frames that went by unseen are skipped).

        Blocking, any thread. Each step waits up to ``timeout`` seconds for a
        frame newer than the previous one (``None``: no limit) and raises
        :class:`~odyssey_sync.errors.OdysseyTimeoutError` after it. The
        previous frame is released when the next one is requested (take
        ``frame.copy()`` to keep it). The iteration ends when the connection
        closes or the broadcast ends.
        """
        wait = check_timeout(timeout)
        self._open_ring()
        return self._iter_frames(wait)

    def _open_ring(self) -> FrameRing:
        ring = self._ring
        if ring is None or self._closed:
            raise OdysseyConnectionError("spectator connection is closed")
        return ring

    def _iter_frames(self, timeout: float | None) -> Iterator[VideoFrame]:
        last = -1
        while not self._closed and not self._ended.is_set():
            try:
                frame = self._wait_newer(last, Deadline(timeout), "frames")
            except OdysseyConnectionError:
                return  # closed or ended while waiting: the iteration is over
            last = frame.seq
            try:
                yield frame
            finally:
                frame.release()

    def _wait_newer(self, after_seq: int, deadline: Deadline, what: str) -> VideoFrame:
        # Short slices, so the end of the broadcast (or close() from another
        # thread) ends the wait promptly, whatever the ring does.
        ring = self._ring
        while True:
            if ring is None or self._closed or ring.closed:
                raise OdysseyConnectionError("spectator connection is closed")
            frame = ring.wait_newer(after_seq, timeout=deadline.clamp(0.2))
            if frame is not None:
                return frame
            if self._ended.is_set():
                raise OdysseyConnectionError("the broadcast ended (no newer frame)")
            if deadline.expired:
                raise OdysseyTimeoutError(f"{what}: no frame within {deadline.timeout:g} s")

    def close(self, timeout: float | None = DELETE_TIMEOUT) -> None:
        """Leave the broadcast and release everything. Idempotent.

        Blocking, any thread (also from inside a callback). One deadline
        covers every step: ``None`` waits for each of them (each still
        capped), a number bounds the whole call. While still connected, the
        WHEP resource is deleted first so the server frees the viewer at
        once; then the peer connection is closed on the loop, the loop
        thread stopped and joined, and the dispatcher workers joined.
        ``on_disconnected`` is called once if it was not already.

        Raises:
            TypeError / ValueError: a bad ``timeout`` (before anything happens).
            OdysseyTimeoutError: a thread we started was still running after ``timeout``.
        """
        wait = check_timeout(timeout)
        joined = self._close(Deadline(wait), cancel=False)
        if not joined and wait is not None:
            raise OdysseyTimeoutError(
                f"spectator close did not finish within {wait:g} s "
                "(a thread of the connection was still running)")

    def disconnect(self, timeout: float | None = DELETE_TIMEOUT) -> None:
        """Alias of :meth:`close` (the reference client's name); same signature."""
        self.close(timeout)

    def close_at_exit(self, timeout: float) -> None:
        """Interpreter exit (see :mod:`odyssey_sync._lifecycle`): bounded, never raises."""
        with contextlib.suppress(Exception):
            self._close(Deadline(timeout), cancel=True)

    def __enter__(self) -> SpectatorConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After an exception in the body, queued callbacks are cancelled, not delivered.
        self._close(Deadline(DELETE_TIMEOUT), cancel=exc_type is not None)

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else ("closed" if self._closed else "ended")
        return f"<SpectatorConnection #{self._id} {self._url_shown} {state}>"

    # -------------------------------------------------------------- internals
    def _close(self, deadline: Deadline, *, cancel: bool) -> bool:
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            was_connected = not self._ended.is_set() and self._peer is not None and (
                self._peer.connected)
        _lifecycle.unregister(self)
        log.debug("spectator %d: closing", self._id)
        if was_connected and self._resource is not None:
            delete_resource(self._http, self._resource, _step(deadline))
        return self._teardown(deadline, cancel=cancel)

    def _teardown(self, deadline: Deadline, *, cancel: bool = False) -> bool:
        loop, peer = self._loop, self._peer
        joined = True
        if loop.running:
            if peer is not None:
                with contextlib.suppress(Exception):
                    # Closing on the loop gives aiortc's decoder threads their sentinel.
                    loop.submit(peer.close(), _step(deadline), what="closing the peer connection")
            joined = loop.stop(_step(deadline))
        self._notify_disconnected(post=not cancel)
        if self._ring is not None:
            self._ring.close()
        if self._dispatch is not None:
            # drain: on_disconnected (just posted) still runs before we return,
            # unless close() was called from a callback (no self-join).
            joined = self._dispatch.stop(_step(deadline), drain=not cancel) and joined
        self._http.close()
        return joined

    def _notify_disconnected(self, *, post: bool = True) -> None:
        with self._lock:
            if self._disconnect_notified:
                return
            self._disconnect_notified = True
        self._ended.set()
        cb = self._on_disconnected
        if post and cb is not None and self._dispatch is not None:
            self._dispatch.post(cb, name="on_disconnected")

    def _ended_on_loop(self) -> None:
        """The broadcast ended or the network failed (loop thread)."""
        if not self._closed:
            self._notify_disconnected()

    # ---------------------------------------------------------------- connect
    def _connect(self, webrtc_url: str, token: str, deadline: Deadline,
                 low_latency: bool) -> None:
        self._url_shown = strip_query(webrtc_url)
        started = time.monotonic()

        def step(name: str) -> None:
            log.debug("spectator %d: %s after %.1f ms", self._id, name,
                      (time.monotonic() - started) * 1000)

        deadline.check("connect_to_stream")
        ice = fetch_ice_servers(self._http, webrtc_url, deadline)
        step(f"ICE config ({len(ice)} servers)")
        self._loop.start(timeout=_step(deadline))
        ring, dispatch = self._ring, self._dispatch
        assert ring is not None and dispatch is not None

        async def make_peer() -> str:
            self._peer = WhepPeer(
                ice_servers=ice, sink=ring, on_frame=lambda _seq: dispatch.notify_frame(),
                on_ended=self._ended_on_loop, low_latency=low_latency,
            )
            return await self._peer.make_offer(ICE_GATHERING_TIMEOUT)

        offer = self._loop.submit(
            make_peer(), deadline.clamp(ICE_GATHERING_TIMEOUT + 1.0),
            what="creating the WHEP offer",
        )
        step("offer gathered")
        answer, self._resource = post_offer(self._http, webrtc_url, token, offer, deadline)
        step("answer received")
        peer = self._peer
        assert peer is not None
        try:
            self._loop.submit(peer.accept_answer(answer), deadline.clamp(5.0),
                              what="applying the WHEP answer")
            wait = deadline.clamp(CONNECT_CAP)
            try:
                self._loop.submit(peer.wait_connected(), wait,
                                  what="waiting for the spectator connection")
            except OdysseyTimeoutError:
                raise OdysseyTimeoutError(
                    f"spectator connection to {self._url_shown} not established "
                    f"within {wait:g} s"
                ) from None
            step("peer connected")
            self._loop.submit(peer.request_keyframe(), 2.0, what="requesting a key frame")
        except BaseException:
            # We hold a viewer slot on the server: give it back before failing.
            resource, self._resource = self._resource, None
            if resource is not None:
                delete_resource(self._http, resource, min(DELETE_TIMEOUT, 2.0))
            raise


_PRIVATE = object()


def connect_to_stream(
    webrtc_url: str,
    spectator_token: str,
    on_video_frame: VideoFrameCallback | None = None,
    on_disconnected: DisconnectedCallback | None = None,
    debug: bool = False,
    *,
    timeout: float | None = 15.0,
    frame_format: str = "rgb24",
    ring_size: int = 4,
    low_latency: bool = True,
    frame_size: tuple[int, int] | None = None,
    resize: str = "area",
    crop: tuple[int, int, int, int] | None = None,
) -> SpectatorConnection:
    """Join a broadcast stream as a spectator (WHEP); returns once video can flow.

    Blocking, caller's thread. ``timeout`` bounds the whole call (ICE config,
    offer, POST, waiting for the connection); ``None`` leaves only the
    per-step limits (config 5 s, gathering 5 s, POST 10 s, connection 60 s).

    Args:
        webrtc_url: ``BroadcastInfo.webrtc_url`` (the WHEP base URL).
        spectator_token: ``BroadcastInfo.spectator_token``; sent only as the
            escaped ``token`` query parameter, never logged.
        on_video_frame: called with each frame, on a dispatcher thread; frames
            that arrive while it runs are skipped (latest wins), never queued.
            Must not keep ``frame.data`` after returning (use ``frame.copy()``).
        on_disconnected: called once, on a dispatcher thread, when the
            connection ends: the broadcast ended, the network failed, or
            :meth:`SpectatorConnection.close` was called.
        debug: log the WHEP exchange and peer states (logger
            ``odyssey_sync.spectator``, level DEBUG; a stderr handler is added
            when logging is not configured).
        timeout: seconds for the whole call, or None (see above).
        frame_format: ``"rgb24"`` (default), ``"bgr24"`` or ``"rgba"``.
        ring_size: frame slots (≥ 2); frames held by you or a callback keep
            their slot, so hold at most ``ring_size - 2`` at once.
        low_latency: release each video frame to the decoder as soon as it is
            complete, as the client does.
        frame_size: deliver frames at this ``(width, height)``, converted and
            resized in one native pass (as ``Odyssey(frame_size=)``); ``None``:
            the stream's own size.
        resize: ``"area"`` (default) or ``"bilinear"``.
        crop: ``(x, y, width, height)`` in source pixels, taken before resizing.

    Returns:
        A connected :class:`SpectatorConnection`.

    Raises:
        TypeError, ValueError: bad arguments (before any network call).
        OdysseyAuthError: the token was refused (401); also a ``ValueError``.
        OdysseyConnectionError: unknown stream (404, ``status=404``), another
            HTTP error, or the peer connection failed; also a ``ConnectionError``.
        OdysseyTimeoutError: ``timeout`` expired; also a ``TimeoutError``.
    """
    _validate(webrtc_url, spectator_token, on_video_frame, on_disconnected, timeout,
              frame_format, ring_size)
    check_bool("low_latency", low_latency)
    check_bool("debug", debug)
    geometry = FrameGeometry(frame_size, crop, cast("ResizeFilter", resize))
    if debug:
        _enable_debug_logging()
    from ._dispatch import Dispatcher
    from ._frames import FrameRing

    deadline = Deadline(timeout)
    conn = SpectatorConnection(_PRIVATE)
    conn._on_disconnected = on_disconnected
    conn._ring = FrameRing(ring_size, cast("FrameFormat", frame_format), geometry)
    conn._dispatch = Dispatcher(name=f"odyssey-spectator-{conn._id}")
    try:
        conn._dispatch.start()
        if on_video_frame is not None:
            conn._dispatch.start_video(conn._ring, on_video_frame)
        conn._connect(webrtc_url, spectator_token, deadline, low_latency)
    except BaseException:
        with conn._lock:
            conn._closed = True
            conn._disconnect_notified = True  # never connected: nothing to report
        conn._teardown(Deadline(DELETE_TIMEOUT))
        raise
    _lifecycle.register(conn)
    log.debug("spectator %d: connected to %s", conn._id, conn._url_shown)
    return conn


def _step(deadline: Deadline, cap: float = DELETE_TIMEOUT) -> float:
    left = deadline.clamp(cap)
    return max(0.05, cap if left is None else left)


def _enable_debug_logging() -> None:
    log.setLevel(logging.DEBUG)
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s: %(message)s"))
        log.addHandler(handler)
