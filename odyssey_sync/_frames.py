"""The frame path: YUV → RGB conversion, the preallocated :class:`FrameRing`, :class:`VideoFrame`.

Two converter implementations share one interface (:class:`_Converter`):

* ``native`` -- the cffi API-mode extension ``odyssey_sync._yuv`` (csrc/). SIMD,
  no allocation, the GIL released for the duration of the call.
* ``numpy``  -- the same integer arithmetic in NumPy; used when the extension is
  not built (or ``ODYSSEY_SYNC_NATIVE=0`` at run time), with a one-time warning.

Both reproduce libswscale's unscaled yuv420p → RGB arithmetic exactly, so the
colours equal ``av.VideoFrame.to_ndarray(format="rgb24")`` (BT.601 limited range
for untagged frames; BT.709 and full range honoured from the frame's tags).
Frames the arithmetic does not cover -- odd-height yuv420p (swscale interpolates
chroma there), colour matrices other than BT.601/BT.709, other pixel formats --
are converted by PyAV with ``threads=1`` and copied, giving the same result.

Threads: :meth:`FrameRing.write` is called by one writer thread (the connection's
event-loop thread); :meth:`FrameRing.latest` / :meth:`FrameRing.wait_newer` and
:meth:`VideoFrame.release` from any thread.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "FrameRing",
    "PixelFormat",
    "RingStats",
    "VideoFrame",
    "convert_frame",
    "native_available",
]

PixelFormat = Literal["rgb24", "bgr24", "rgba"]
U8Array = npt.NDArray[np.uint8]

_CHANNELS: Final[dict[str, int]] = {"rgb24": 3, "bgr24": 3, "rgba": 4}
_OUT_CODE: Final[dict[str, int]] = {"rgb24": 0, "bgr24": 1, "rgba": 2}

# FFmpeg AVColorSpace values the swscale arithmetic handles, mapped to our matrix
# code (0 = BT.601, 1 = BT.709). 2 = unspecified, which swscale treats as BT.601.
_MATRIX_BY_COLORSPACE: Final[dict[int, int]] = {1: 1, 2: 0, 5: 0, 6: 0}
_AVCOL_RANGE_JPEG: Final = 2
_TIMING_WINDOW: Final = 512


# --------------------------------------------------------------------------- native module


def _load_native() -> tuple[Any, Any] | None:
    if os.environ.get("ODYSSEY_SYNC_NATIVE", "").strip() == "0":
        return None
    try:
        import odyssey_sync._yuv as _yuv
    except ImportError:
        return None
    # Detect the CPU and build the shuffle tables now, while only the importing
    # thread runs, rather than on the first (possibly concurrent) conversion.
    _yuv.lib.oys_cpu_level()
    return _yuv.ffi, _yuv.lib


_NATIVE = _load_native()
_fallback_warned = False
_warn_lock = threading.Lock()


def native_available() -> bool:
    """Whether the compiled converter (``odyssey_sync._yuv``) is loaded.

    Non-blocking, any thread. False when the extension was not built, or when
    ``ODYSSEY_SYNC_NATIVE=0`` was set when odyssey_sync was imported.
    """
    return _NATIVE is not None


def _warn_fallback_once() -> None:
    global _fallback_warned
    with _warn_lock:
        if _fallback_warned:
            return
        _fallback_warned = True
    warnings.warn(
        "odyssey_sync: native frame converter not available, using the slower NumPy "
        "converter (reinstall with ODYSSEY_SYNC_NATIVE=1 to see why the build fails)",
        RuntimeWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- converters


def _coefficients(matrix: int, full_range: bool) -> tuple[int, int, int, int, int, int]:
    """libswscale's 3.13 coefficients: (yc, yoff, vr, ub, ug, vg); mirrors csrc/oys_yuv.c."""
    crv, cbu, cgu, cgv = (117489, 138438, 13975, 34925) if matrix == 1 else (
        104597, 132201, 25675, 53279)
    cgu, cgv = -cgu, -cgv
    cy, oy = 1 << 16, 0
    if not full_range:
        cy, oy = cy * 255 // 219, 16 << 16
    else:
        # int() of the true quotient truncates toward zero, like C division.
        crv, cbu = int(crv * 224 / 255), int(cbu * 224 / 255)
        cgu, cgv = int(cgu * 224 / 255), int(cgv * 224 / 255)

    def r16(f: int) -> int:
        return max(-0x7FFF, min(0x7FFF, (f + (1 << 15)) >> 16))

    return (r16(cy << 13), r16(oy << 3), r16(crv << 13), r16(cbu << 13), r16(cgu << 13),
            r16(cgv << 13))


class _Converter:
    """One YUV 4:2:0 → packed RGB conversion, implemented natively or with NumPy.

    ``convert`` is blocking and thread-safe; ``out`` must be a C-contiguous
    ``height×width×C`` uint8 array (callers check this).
    """

    name: str = "abstract"

    def convert(
        self,
        y: Any, y_stride: int,
        u: Any, v: Any, c_stride: int, nv12: bool,
        width: int, height: int,
        out: U8Array, fmt: str, matrix: int, full_range: bool,
    ) -> None:
        """Convert planes (buffer-protocol objects) into ``out``. ``v`` is ignored for NV12."""
        raise NotImplementedError


class _NativeConverter(_Converter):
    name = "native"

    def __init__(self, ffi: Any, lib: Any) -> None:
        self._ffi = ffi
        self._lib = lib

    def convert(
        self,
        y: Any, y_stride: int,
        u: Any, v: Any, c_stride: int, nv12: bool,
        width: int, height: int,
        out: U8Array, fmt: str, matrix: int, full_range: bool,
    ) -> None:
        ffi, lib = self._ffi, self._lib
        # from_buffer exposes the planes and the output without copying them.
        yb = ffi.from_buffer(y)
        ub = ffi.from_buffer(u)
        vb = ub + 1 if nv12 else ffi.from_buffer(v)
        cw = (width + 1) // 2
        # The C side trusts strides; check here that every row it reads or writes exists.
        if len(yb) < y_stride * (height - 1) + width:
            raise ValueError("luma plane is smaller than height × line_size")
        need_c = c_stride * ((height + 1) // 2 - 1) + (2 * cw if nv12 else cw)
        if len(ub) < need_c or (not nv12 and len(vb) < need_c):
            raise ValueError("chroma plane is smaller than its rows × line_size")
        rc = lib.oys_convert(
            yb, y_stride, ub, vb, c_stride, 2 if nv12 else 1,
            ffi.from_buffer(out), out.strides[0], width, height,
            _OUT_CODE[fmt], matrix, 1 if full_range else 0,
        )
        if rc != 0:
            raise ValueError(f"native converter rejected the frame geometry ({width}×{height})")


class _NumpyConverter(_Converter):
    name = "numpy"

    def convert(
        self,
        y: Any, y_stride: int,
        u: Any, v: Any, c_stride: int, nv12: bool,
        width: int, height: int,
        out: U8Array, fmt: str, matrix: int, full_range: bool,
    ) -> None:
        cw, ch = (width + 1) // 2, (height + 1) // 2
        yy = np.ndarray((height, width), np.uint8, buffer=y, strides=(y_stride, 1))
        if nv12:
            uu = np.ndarray((ch, cw), np.uint8, buffer=u, strides=(c_stride, 2))
            vv = np.ndarray((ch, cw), np.uint8, buffer=u, offset=1, strides=(c_stride, 2))
        else:
            uu = np.ndarray((ch, cw), np.uint8, buffer=u, strides=(c_stride, 1))
            vv = np.ndarray((ch, cw), np.uint8, buffer=v, strides=(c_stride, 1))
        yc, yoff, vr, ub, ug, vg = _coefficients(matrix, full_range)
        # Same terms as the SIMD code: inputs << 3, offsets removed, (a*b) >> 16 each.
        lum32 = yy.astype(np.int32)
        lum32 <<= 3
        lum32 -= yoff
        lum32 *= yc
        lum32 >>= 16
        # Luma padded to even size, so each chroma row covers exactly 2 rows of
        # it: the chroma terms then broadcast over a (rows/2, 2, width) view
        # instead of being gathered per pixel (fancy indexing is ~5× slower).
        lum = np.zeros((2 * ch, 2 * cw), np.int16)
        lum[:height, :width] = lum32
        u8 = uu.astype(np.int32)
        u8 <<= 3
        u8 -= 1024
        v8 = vv.astype(np.int32)
        v8 <<= 3
        v8 -= 1024
        terms = ((v8 * vr) >> 16, ((u8 * ug) >> 16) + ((v8 * vg) >> 16), (u8 * ub) >> 16)
        pairs = lum.reshape(ch, 2, 2 * cw)
        tmp = np.empty_like(pairs)
        visible = tmp.reshape(2 * ch, 2 * cw)[:height, :width]
        order = (2, 1, 0) if fmt == "bgr24" else (0, 1, 2)
        for channel, term in zip(order, terms, strict=True):
            wide = np.repeat(term.astype(np.int16), 2, axis=1)  # one value per pixel column
            np.add(pairs, wide[:, None, :], out=tmp)
            np.clip(tmp, 0, 255, out=tmp)
            out[:, :, channel] = visible
        if fmt == "rgba":
            out[:, :, 3] = 255


_NUMPY_CONVERTER: Final = _NumpyConverter()
_NATIVE_CONVERTER: Final = _NativeConverter(*_NATIVE) if _NATIVE is not None else None


def _default_converter() -> _Converter:
    if _NATIVE_CONVERTER is not None:
        return _NATIVE_CONVERTER
    _warn_fallback_once()
    return _NUMPY_CONVERTER


def _check_format(format: object) -> str:
    if not isinstance(format, str):
        raise TypeError(f"format must be a str, not {type(format).__name__}")
    if format not in _CHANNELS:
        raise ValueError(f"format must be one of 'rgb24', 'bgr24', 'rgba', not {format!r}")
    return format


def _native_params(frame: av.VideoFrame) -> tuple[bool, int, bool] | None:
    """(nv12, matrix, full_range) when our arithmetic covers the frame, else None (use PyAV)."""
    name = frame.format.name
    if name not in ("yuv420p", "yuvj420p", "nv12"):
        return None
    if frame.width < 2 or frame.height < 2:
        return None
    # swscale converts odd-height yuv420p through its scaler, interpolating chroma
    # vertically; we do not reproduce that, so PyAV does those (rare) frames.
    if name != "nv12" and frame.height & 1:
        return None
    matrix = _MATRIX_BY_COLORSPACE.get(int(frame.colorspace))
    if matrix is None:
        return None
    full = name == "yuvj420p" or int(frame.color_range) == _AVCOL_RANGE_JPEG
    return name == "nv12", matrix, full


def _convert_into(frame: av.VideoFrame, fmt: str, out: U8Array, conv: _Converter) -> None:
    """Convert ``frame`` into ``out`` (already validated) with ``conv`` or the PyAV fallback."""
    params = _native_params(frame)
    if params is None:
        _pyav_convert(frame, fmt, out)
        return
    nv12, matrix, full = params
    planes = frame.planes
    y, u = planes[0], planes[1]
    v = u if nv12 else planes[2]
    conv.convert(y, y.line_size, u, v, u.line_size, nv12, frame.width, frame.height,
                 out, fmt, matrix, full)


def _pyav_convert(frame: av.VideoFrame, fmt: str, out: U8Array) -> None:
    # PyAV's own rgba output leaves garbage in the last pixels of rows whose width is
    # not a multiple of 8 (swscale SIMD tail), so rgba goes through rgb24 + alpha.
    # threads=1: PyAV >= 17 builds a thread pool per call otherwise (PITFALLS.md).
    arr = frame.to_ndarray(format="rgb24" if fmt == "rgba" else fmt, threads=1)
    if fmt == "rgba":
        out[:, :, :3] = arr
        out[:, :, 3] = 255
    else:
        np.copyto(out, arr)


def _check_out(out: object, shape: tuple[int, int, int]) -> U8Array:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, not {type(out).__name__}")
    if out.dtype != np.uint8:
        raise TypeError(f"out must have dtype uint8, not {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape} (height, width, channels), not {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    return out


def _check_av_frame(frame: object) -> av.VideoFrame:
    if not isinstance(frame, av.VideoFrame):
        raise TypeError(f"frame must be an av.VideoFrame, not {type(frame).__name__}")
    return frame


def convert_frame(
    frame: av.VideoFrame, format: PixelFormat = "rgb24", out: U8Array | None = None
) -> U8Array:
    """Convert a decoded ``av.VideoFrame`` to a packed ``height×width×C`` uint8 array.

    Blocking (CPU only; about 0.1 ms for 1280×704 with the native converter), any
    thread; the GIL is released during the native conversion. yuv420p, yuvj420p
    and nv12 frames are read in place through the buffer protocol (padded
    ``line_size`` honoured); other pixel formats, odd-height yuv420p and colour
    matrices other than BT.601/BT.709 go through PyAV with the same result.

    Args:
        frame: the decoded frame.
        format: ``"rgb24"`` / ``"bgr24"`` (C=3) or ``"rgba"`` (C=4, alpha 255).
        out: optional caller-owned array to write into: uint8, shape
            ``(frame.height, frame.width, C)``, C-contiguous, writeable.

    Returns:
        ``out`` if given, else a new array.

    Raises:
        TypeError: ``frame`` is not an ``av.VideoFrame``; ``format`` not a str;
            ``out`` not a uint8 ndarray.
        ValueError: unknown ``format``; ``out`` of the wrong shape, not contiguous
            or read-only.
    """
    fmt = _check_format(format)
    frame = _check_av_frame(frame)
    shape = (int(frame.height), int(frame.width), _CHANNELS[fmt])
    target = np.empty(shape, np.uint8) if out is None else _check_out(out, shape)
    _convert_into(frame, fmt, target, _default_converter())
    return target


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
        width, height: pixels.
        timestamp_ms: presentation time of the frame in the stream, milliseconds.
        seq: 1, 2, 3... in publish order within one ring; 0 for user-made frames.
        received_at: ``time.monotonic()`` seconds when the frame was published.
        stream_id: the stream the frame belongs to (``None`` for frames sent
            while no stream ran, and for user-made frames).
    """

    __slots__ = ("__weakref__", "_data", "_released", "_ring", "_slot", "height",
                 "received_at", "seq", "stream_id", "timestamp_ms", "width")

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
    ) -> None:
        """Wrap ``data`` (not copied) as an owned frame. Non-blocking.

        Raises:
            TypeError: ``data`` is not a uint8 ndarray, or a size is not an int.
            ValueError: ``data`` is not ``height×width×3`` or ``×4``.
        """
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
            raise TypeError("data must be a numpy uint8 array")
        for label, value in (("width", width), ("height", height), ("timestamp_ms", timestamp_ms),
                             ("seq", seq)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{label} must be an int, not {type(value).__name__}")
        if data.ndim != 3 or data.shape[:2] != (height, width) or data.shape[2] not in (3, 4):
            raise ValueError(
                f"data must have shape ({height}, {width}, 3 or 4), not {data.shape}")
        self._data: U8Array | None = data
        self.width = int(width)
        self.height = int(height)
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
                          seq=self.seq, received_at=self.received_at, stream_id=self.stream_id)

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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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

    __slots__ = ("array", "height", "received_at", "refs", "seq", "stream_id", "timestamp_ms",
                 "view", "width")

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.array: U8Array = np.empty(shape, np.uint8)
        # One read-only view per slot, made once: leases share it (no per-frame allocation).
        view = self.array.view()
        view.flags.writeable = False
        self.view: U8Array = view
        self.height, self.width = shape[0], shape[1]
        self.refs = 0
        self.seq = 0
        self.timestamp_ms = 0
        self.received_at = 0.0
        self.stream_id: str | None = None


class FrameRing:
    """N preallocated RGB slots between one writer thread and any number of readers.

    The writer (:meth:`write`) converts each decoded frame into the oldest slot no
    consumer holds, outside the lock, then publishes it; it never waits for a
    consumer: if no slot is free the frame is dropped and counted. Readers take
    refcounted leases (:meth:`latest`, :meth:`wait_newer`); a held slot is never
    overwritten. The newest published frame's slot is never reused for the next
    write either, so :meth:`latest` always has a complete frame to hand out;
    hence at most ``slots - 1`` distinct frames can be held before drops begin
    (with one writer in flight). Slots are (re)allocated on the first frame and
    whenever the resolution changes.
    """

    def __init__(self, slots: int = 4, pixel_format: PixelFormat = "rgb24") -> None:
        """Create an empty ring. Non-blocking; allocates nothing until the first write.

        Raises:
            TypeError: ``slots`` not an int, ``pixel_format`` not a str.
            ValueError: ``slots`` < 2, unknown ``pixel_format``.
        """
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise TypeError(f"slots must be an int, not {type(slots).__name__}")
        if slots < 2:
            raise ValueError(f"slots must be >= 2, not {slots}")
        self._fmt = _check_format(pixel_format)
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
    def pixel_format(self) -> PixelFormat:
        """The output format of every slot."""
        fmt: PixelFormat = self._fmt  # type: ignore[assignment]
        return fmt

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
            frame: a decoded ``av.VideoFrame`` (yuv420p/nv12 natively, others via PyAV).
            timestamp_ms: stream time to attach; default ``frame.pts × time_base``
                in ms, 0 when unknown.
            stream_id: the stream the frame belongs to (``VideoFrame.stream_id``).

        Returns:
            The new frame's seq, or None if the frame was dropped (every slot held,
            counted in ``stats.dropped``) or the ring is closed.

        Raises:
            TypeError: ``frame`` is not an ``av.VideoFrame``.
            av.error.FFmpegError: PyAV failed to convert a frame in a pixel format
                the native converter does not handle (the frame is not published).
        """
        frame = _check_av_frame(frame)
        if timestamp_ms is None:
            pts, tb = frame.pts, frame.time_base
            timestamp_ms = int(pts * tb * 1000) if pts is not None and tb is not None else 0
        shape = (int(frame.height), int(frame.width), _CHANNELS[self._fmt])
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
            _convert_into(frame, self._fmt, slot.array, conv)
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
            slot.received_at = time.monotonic()
            slot.stream_id = stream_id
            self._latest = slot
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
                f"last_seq={self._seq}, closed={self._closed})")
