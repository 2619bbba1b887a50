"""The frame ring: the preallocated :class:`FrameRing` and its :class:`VideoFrame` leases.

The writer converts each decoded frame (:mod:`odyssey_sync._convert`) straight
into a free slot, at the ring's output geometry (:class:`FrameGeometry`: full
size, or cropped and resized in the same native pass), and publishes it;
consumers lease slots without copying.

Threads: :meth:`FrameRing.write` is called by one writer thread (the connection's
event-loop thread); :meth:`FrameRing.latest` / :meth:`FrameRing.wait_newer` and
:meth:`VideoFrame.release` from any thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Final

import av
import numpy as np

from ._convert import (
    _CHANNELS,
    FrameFormat,
    U8Array,
    _check_av_frame,
    _convert_into,
    _Converter,
    _default_converter,
    check_frame_format,
    convert_frame,
    native_available,
)
from ._resize import FrameGeometry, ResizeFilter

__all__ = [
    "FrameFormat",
    "FrameGeometry",
    "FrameRing",
    "ResizeFilter",
    "RingStats",
    "VideoFrame",
    "convert_frame",
    "native_available",
]

_TIMING_WINDOW: Final = 512


# --------------------------------------------------------------------------- VideoFrame


class VideoFrame:
    """One RGB video frame: ``data`` is ``height×width×3`` uint8 (``×4`` for rgba).

    Frames handed out by a :class:`FrameRing` (``client.get_latest_frame()``,
    ``frames()``, ``on_video_frame``) are *leases*: ``data`` is a read-only,
    zero-copy view of a ring slot, valid until :meth:`release` (or the end of a
    ``with`` block). While held, the slot is never overwritten; hold frames briefly,
    because a ring whose every slot is held drops incoming frames. Use
    :meth:`copy` to keep pixels longer.

    ``VideoFrame(data, width, height, timestamp_ms)`` builds an owned frame (for
    tests or your own pipelines): ``seq`` 0, never needs releasing.

    Attributes:
        width, height: pixels of ``data`` (the ring's output size).
        source_width, source_height: size of the decoded video frame this was
            made from (differs from width/height when the ring crops or
            resizes; equal for user-made frames unless given).
        timestamp_ms: presentation time of the frame in the stream, milliseconds.
        seq: 1, 2, 3... in publish order within one ring; 0 for user-made frames.
        received_at: ``time.monotonic()`` seconds when the frame was published.
        stream_id: the stream the frame belongs to (``None`` for frames sent
            while no stream ran, and for user-made frames).
    """

    __slots__ = ("__weakref__", "_data", "_released", "_ring", "_slot", "height",
                 "received_at", "seq", "source_height", "source_width", "stream_id",
                 "timestamp_ms", "width")

    def __init__(
        self,
        data: U8Array,
        width: int,
        height: int,
        timestamp_ms: int,
        *,
        seq: int = 0,
        received_at: float | None = None,
        stream_id: str | None = None,
        source_width: int | None = None,
        source_height: int | None = None,
    ) -> None:
        """Wrap ``data`` (not copied) as an owned frame. Non-blocking.

        Raises:
            TypeError: ``data`` is not a uint8 ndarray, or a size is not an int.
            ValueError: ``data`` is not ``height×width×3`` or ``×4``.
        """
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError("data must be a numpy uint8 array")
        source_width = width if source_width is None else source_width
        source_height = height if source_height is None else source_height
        for label, value in (("width", width), ("height", height), ("timestamp_ms", timestamp_ms),
                             ("seq", seq), ("source_width", source_width),
                             ("source_height", source_height)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{label} must be an int, not {type(value).__name__}")
        if data.ndim != 3 or data.shape[:2] != (height, width) or data.shape[2] not in (3, 4):
            raise ValueError(
                f"data must have shape ({height}, {width}, 3 or 4), not {data.shape}")
        self._data: U8Array | None = data
        self.width = int(width)
        self.height = int(height)
        self.source_width = int(source_width)
        self.source_height = int(source_height)
        self.timestamp_ms = int(timestamp_ms)
        self.seq = int(seq)
        self.received_at = time.monotonic() if received_at is None else float(received_at)
        self.stream_id = stream_id
        self._ring: FrameRing | None = None
        self._slot: _Slot | None = None
        self._released = False

    @classmethod
    def _lease(cls, ring: FrameRing, slot: _Slot) -> VideoFrame:
        # Bypasses __init__ validation: the ring built the view itself.
        frame = cls.__new__(cls)
        frame._data = slot.view
        frame.width = slot.width
        frame.height = slot.height
        frame.source_width = slot.source_width
        frame.source_height = slot.source_height
        frame.timestamp_ms = slot.timestamp_ms
        frame.seq = slot.seq
        frame.received_at = slot.received_at
        frame.stream_id = slot.stream_id
        frame._ring = ring
        frame._slot = slot
        frame._released = False
        return frame

    @property
    def data(self) -> U8Array:
        """The pixels (read-only for ring frames). Raises RuntimeError after :meth:`release`."""
        d = self._data
        if d is None:
            raise RuntimeError(
                f"VideoFrame seq={self.seq} was released; take frame.copy() to keep pixels")
        return d

    @property
    def age(self) -> float:
        """Seconds since the frame was published (``time.monotonic()`` based). Non-blocking."""
        return time.monotonic() - self.received_at

    @property
    def released(self) -> bool:
        """True once :meth:`release` ran."""
        return self._released

    def copy(self) -> VideoFrame:
        """Owned deep copy, independent of the ring (same seq, timestamps). Non-blocking.

        Raises RuntimeError if this frame was already released.
        """
        return VideoFrame(self.data.copy(), self.width, self.height, self.timestamp_ms,
                          seq=self.seq, received_at=self.received_at, stream_id=self.stream_id,
                          source_width=self.source_width, source_height=self.source_height)

    def release(self) -> None:
        """Give the ring slot back. Idempotent, non-blocking, any thread.

        After it, ``data`` raises; arrays obtained from ``data`` earlier must not
        be read any more (the slot may be overwritten).
        """
        ring, slot = self._ring, self._slot
        if ring is not None and slot is not None:
            ring._release(self, slot)
        else:
            self._released = True
            self._data = None

    def __enter__(self) -> VideoFrame:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        # A forgotten lease would pin its slot for good; give it back when the
        # frame object dies (CPython frees it as soon as the last reference goes).
        try:
            if self._ring is not None and not self._released:
                self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "released" if self._released else ("lease" if self._ring else "owned")
        return (f"VideoFrame({self.width}×{self.height}, seq={self.seq}, "
                f"timestamp_ms={self.timestamp_ms}, {state})")


# --------------------------------------------------------------------------- FrameRing


@dataclass(frozen=True)
class RingStats:
    """Snapshot of a :class:`FrameRing`'s counters.

    Attributes:
        written: frames converted and published.
        dropped: frames dropped because every slot was held by consumers.
        held: slots currently held by at least one lease (including slots of a
            previous resolution that a consumer still holds).
        convert_us_p50, convert_us_p99: conversion time percentiles (µs) over the
            last 512 writes; 0.0 before the first write.
    """

    written: int
    dropped: int
    held: int
    convert_us_p50: float
    convert_us_p99: float


class _Slot:
    """One preallocated output buffer plus the metadata of the frame in it."""

    __slots__ = ("array", "height", "received_at", "refs", "seq", "source", "source_height",
                 "source_width", "stream_id", "timestamp_ms", "view", "width")

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.array: U8Array = np.empty(shape, np.uint8)
        # One read-only view per slot, made once: leases share it (no per-frame allocation).
        view = self.array.view()
        view.flags.writeable = False
        self.view: U8Array = view
        self.height, self.width = shape[0], shape[1]
        self.source_width, self.source_height = self.width, self.height
        self.refs = 0
        self.seq = 0
        self.timestamp_ms = 0
        self.received_at = 0.0
        self.stream_id: str | None = None
        #: the decoded picture, kept (not copied) when the ring crops or resizes
        self.source: av.VideoFrame | None = None


class FrameRing:
    """N preallocated RGB slots between one writer thread and any number of readers.

    The writer (:meth:`write`) converts each decoded frame into the oldest slot no
    consumer holds, outside the lock, then publishes it; it never waits for a
    consumer: if no slot is free the frame is dropped and counted. Readers take
    refcounted leases (:meth:`latest`, :meth:`wait_newer`); a held slot is never
    overwritten. The newest published frame's slot is never reused for the next
    write either, so :meth:`latest` always has a complete frame to hand out;
    hence at most ``slots - 1`` distinct frames can be held before drops begin
    (with one writer in flight).

    Slots have the output size of ``geometry``: with a fixed ``size`` they are
    allocated once, on the first frame; otherwise (full size, or crop only) they
    are reallocated whenever the output size changes.
    """

    def __init__(self, slots: int = 4, frame_format: FrameFormat = "rgb24",
                 geometry: FrameGeometry | None = None) -> None:
        """Create an empty ring. Non-blocking; allocates nothing until the first write.

        Args:
            slots: number of slots, >= 2.
            frame_format: ``"rgb24"``, ``"bgr24"`` or ``"rgba"`` (the name of
                ``Odyssey``'s option of the same meaning).
            geometry: output size / crop / resize filter (already validated by
                its constructor); None delivers frames at their decoded size.

        Raises:
            TypeError: ``slots`` not an int, ``frame_format`` not a str,
                ``geometry`` not a :class:`FrameGeometry`.
            ValueError: ``slots`` < 2, unknown ``frame_format``.
        """
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise TypeError(f"slots must be an int, not {type(slots).__name__}")
        if slots < 2:
            raise ValueError(f"slots must be >= 2, not {slots}")
        if geometry is not None and not isinstance(geometry, FrameGeometry):
            raise TypeError(f"geometry must be a FrameGeometry, not {type(geometry).__name__}")
        self._fmt: FrameFormat = check_frame_format(frame_format, "frame_format")
        self._geometry = geometry if geometry is not None else FrameGeometry()
        self._nslots = slots
        # Re-entrant: a lease collected by the cyclic GC runs VideoFrame.__del__ ->
        # _release() on whatever thread triggered the collection, possibly one that
        # already holds this lock (any allocation inside a critical section).
        self._cond = threading.Condition(threading.RLock())
        self._slots: list[_Slot] = []
        self._shape: tuple[int, int, int] | None = None
        self._latest: _Slot | None = None
        self._seq = 0
        self._written = 0
        self._dropped = 0
        self._held = 0  # slots (of any resolution generation) with refs > 0
        self._closed = False
        self._times_ns = np.zeros(_TIMING_WINDOW, np.int64)
        self._times_count = 0
        self._converter: _Converter | None = None

    # -- properties

    @property
    def frame_format(self) -> FrameFormat:
        """The output format of every slot."""
        return self._fmt

    @property
    def geometry(self) -> FrameGeometry:
        """The output geometry every frame is converted to."""
        return self._geometry

    @property
    def slots(self) -> int:
        """Number of slots."""
        return self._nslots

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def last_seq(self) -> int:
        """Seq of the newest published frame (0 before the first)."""
        return self._seq

    @property
    def converter_name(self) -> str:
        """``"native"`` or ``"numpy"``: the converter :meth:`write` uses."""
        return self._get_converter().name

    @property
    def stats(self) -> RingStats:
        """A consistent snapshot of the counters. Non-blocking (brief lock), any thread."""
        with self._cond:
            n = min(self._times_count, _TIMING_WINDOW)
            window = self._times_ns[:n].copy()
            held, written, dropped = self._held, self._written, self._dropped
        if n:
            p50, p99 = np.percentile(window, (50, 99)) / 1000.0
        else:
            p50 = p99 = 0.0
        return RingStats(written, dropped, held, float(p50), float(p99))

    # -- writer side

    def _get_converter(self) -> _Converter:
        if self._converter is None:
            self._converter = _default_converter()
        return self._converter

    def write(
        self, frame: av.VideoFrame, timestamp_ms: int | None = None, stream_id: str | None = None
    ) -> int | None:
        """Convert ``frame`` into a free slot and publish it. Single writer thread only.

        Never blocks on consumers: holds the ring lock only to pick a slot and to
        publish; converts (GIL released when native) in between.

        Args:
            frame: a decoded ``av.VideoFrame`` (yuv420p/nv12 natively, others via PyAV);
                cropped and resized to the ring's geometry in the same pass.
            timestamp_ms: stream time to attach; default ``frame.pts × time_base``
                in ms, 0 when unknown.
            stream_id: the stream the frame belongs to (``VideoFrame.stream_id``).

        Returns:
            The new frame's seq, or None if the frame was dropped (every slot held,
            counted in ``stats.dropped``) or the ring is closed.

        Raises:
            TypeError: ``frame`` is not an ``av.VideoFrame``.
            ValueError: the geometry's crop does not fit this frame (nothing is
                published; raised for every such frame).
            av.error.FFmpegError: PyAV failed to convert a frame in a pixel format
                the native converter does not handle (the frame is not published).
        """
        frame = _check_av_frame(frame)
        if timestamp_ms is None:
            pts, tb = frame.pts, frame.time_base
            timestamp_ms = int(pts * tb * 1000) if pts is not None and tb is not None else 0
        src_w, src_h = int(frame.width), int(frame.height)
        out_w, out_h = self._geometry.output_size(src_w, src_h)
        shape = (out_h, out_w, _CHANNELS[self._fmt])
        fresh: list[_Slot] | None = None
        if shape != self._shape:
            # Allocate outside the lock; old slots stay alive for their lease holders.
            fresh = [_Slot(shape) for _ in range(self._nslots)]
        conv = self._get_converter()

        with self._cond:
            if self._closed:
                return None
            if fresh is not None:
                self._slots = fresh
                self._shape = shape
            slot = self._pick_slot()
            if slot is None:
                self._dropped += 1
                return None
            # refs stays 0 and the slot is not _latest, so no reader can lease it
            # while it is being written.

        t0 = time.perf_counter_ns()
        try:
            _convert_into(frame, self._fmt, slot.array, conv, self._geometry)
        except BaseException:
            slot.seq = 0  # contents undefined; make it the first pick next time
            raise
        elapsed = time.perf_counter_ns() - t0

        with self._cond:
            self._times_ns[self._times_count % _TIMING_WINDOW] = elapsed
            self._times_count += 1
            if self._closed:
                return None
            self._seq += 1
            slot.seq = self._seq
            slot.timestamp_ms = int(timestamp_ms)
            slot.source_width, slot.source_height = src_w, src_h
            slot.received_at = time.monotonic()
            slot.stream_id = stream_id
            self._latest = slot
            # A reference, not a copy: full_size() converts it only when asked.
            slot.source = frame if not self._geometry.is_identity else None
            self._written += 1
            self._cond.notify_all()
            return self._seq

    def _pick_slot(self) -> _Slot | None:
        # Oldest (lowest seq) slot that nobody holds and that is not the newest frame.
        best: _Slot | None = None
        for s in self._slots:
            if s.refs == 0 and s is not self._latest and (best is None or s.seq < best.seq):
                best = s
        return best

    # -- reader side

    def latest(self) -> VideoFrame | None:
        """Lease the newest published frame. Non-blocking, any thread.

        Returns:
            A :class:`VideoFrame` lease (release it), or None before the first
            frame or after :meth:`close`.
        """
        with self._cond:
            slot = self._latest
            if slot is None or self._closed:
                return None
            slot.refs += 1
            if slot.refs == 1:
                self._held += 1
        return VideoFrame._lease(self, slot)

    def full_size(self, frame: VideoFrame) -> VideoFrame:
        """``frame`` (a lease of this ring) at its decoded size: an owned copy.

        Non-blocking, any thread; converts on demand (one full-size conversion).
        When the ring does not crop or resize, that is a copy of ``frame``;
        otherwise the decoded picture ``frame`` was made from is converted.

        Raises:
            RuntimeError: ``frame`` was released.
            ValueError: ``frame`` is not a lease of this ring.
        """
        slot = frame._slot
        if frame._ring is not self or slot is None:
            raise ValueError("full_size() takes a frame leased from this ring")
        if frame.released:
            raise RuntimeError(f"VideoFrame seq={frame.seq} was released")
        source = slot.source
        if source is None:
            return frame.copy()
        data = convert_frame(source, self._fmt)
        return VideoFrame(data, data.shape[1], data.shape[0], frame.timestamp_ms,
                          seq=frame.seq, received_at=frame.received_at,
                          stream_id=frame.stream_id)

    def wait_newer(self, after_seq: int, timeout: float | None = None) -> VideoFrame | None:
        """Block until a frame with ``seq > after_seq`` is published; lease the newest.

        Blocking, any thread except the writer's.

        Args:
            after_seq: the last seq the caller has seen (0 for "any frame").
            timeout: seconds to wait at most; None waits until a frame arrives
                or the ring is closed; 0 polls.

        Returns:
            A lease on the newest frame, or None on timeout or when the ring is
            closed (check :attr:`closed` to tell which).

        Raises:
            TypeError: ``after_seq`` not an int or ``timeout`` not a number.
            ValueError: negative ``timeout``.
        """
        if isinstance(after_seq, bool) or not isinstance(after_seq, int):
            raise TypeError(f"after_seq must be an int, not {type(after_seq).__name__}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
            if timeout < 0:
                raise ValueError(f"timeout must be >= 0, not {timeout}")
        with self._cond:
            # A frame must exist too: with after_seq < 0 on an empty ring (seq 0) the
            # seq test alone is already true, and callers polling in a loop would spin.
            self._cond.wait_for(
                lambda: self._closed or (self._latest is not None and self._seq > after_seq),
                timeout,
            )
            slot = self._latest
            if self._closed or slot is None or self._seq <= after_seq:
                return None
            slot.refs += 1
            if slot.refs == 1:
                self._held += 1
        return VideoFrame._lease(self, slot)

    def _release(self, frame: VideoFrame, slot: _Slot) -> None:
        with self._cond:
            if frame._released:
                return
            frame._released = True
            frame._data = None
            slot.refs -= 1
            if slot.refs == 0:
                self._held -= 1

    def close(self) -> None:
        """Stop the ring: wake every waiter; later writes drop, later reads return None.

        Idempotent, non-blocking, any thread. Outstanding leases stay valid until
        released (their slots are never reused after close).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __repr__(self) -> str:
        return (f"FrameRing(slots={self._nslots}, format={self._fmt!r}, shape={self._shape}, "
                f"geometry={self._geometry}, "
                f"last_seq={self._seq}, closed={self._closed})")
