"""YUV → RGB conversion, full size or resized in the same pass: :func:`convert_frame`.

Two converter implementations share one interface (:class:`_Converter`):

* ``native`` -- the cffi API-mode extension ``odyssey_sync._yuv`` (csrc/). SIMD,
  no allocation, the GIL released for the duration of the call.
* ``numpy``  -- the same arithmetic in NumPy; used when the extension is not
  built (or ``ODYSSEY_SYNC_NATIVE=0`` at run time), with a one-time warning.

Full size, both reproduce libswscale's unscaled yuv420p → RGB arithmetic exactly,
so the colours equal ``av.VideoFrame.to_ndarray(format="rgb24")`` (BT.601 limited
range for untagged frames; BT.709 and full range honoured from the frame's tags).
Frames the arithmetic does not cover -- odd-height yuv420p (swscale interpolates
chroma there), colour matrices other than BT.601/BT.709, other pixel formats --
are converted by PyAV with ``threads=1`` and copied, giving the same result.

Resized or cropped (a :class:`~odyssey_sync._resize.FrameGeometry`), the planes
are resampled with the filter of :mod:`odyssey_sync._resize` and only the output
pixels are converted, with rounding (the same colour tags). Pixel formats the
arithmetic does not cover go through PyAV at full size, then the same filter on
the RGB image.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from typing import Any, Final, Literal, cast

import av
import numpy as np
import numpy.typing as npt

from ._resize import FrameGeometry, ResamplePlan, ResizeFilter, resample_plan, resample_plane

__all__ = [
    "FRAME_FORMATS",
    "FrameFormat",
    "check_frame_format",
    "convert_frame",
    "native_available",
]

#: the pixel layouts of delivered frames (``VideoFrame.data`` channel order)
FrameFormat = Literal["rgb24", "bgr24", "rgba"]
FRAME_FORMATS: Final[tuple[FrameFormat, ...]] = ("rgb24", "bgr24", "rgba")
U8Array = npt.NDArray[np.uint8]

_CHANNELS: Final[dict[str, int]] = {"rgb24": 3, "bgr24": 3, "rgba": 4}
_OUT_CODE: Final[dict[str, int]] = {"rgb24": 0, "bgr24": 1, "rgba": 2}

# FFmpeg AVColorSpace values the swscale arithmetic handles, mapped to our matrix
# code (0 = BT.601, 1 = BT.709). 2 = unspecified, which swscale treats as BT.601.
_MATRIX_BY_COLORSPACE: Final[dict[int, int]] = {1: 1, 2: 0, 5: 0, 6: 0}
_AVCOL_RANGE_JPEG: Final = 2


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

    def resample(
        self,
        y: Any, y_stride: int,
        u: Any, v: Any, c_stride: int, nv12: bool,
        width: int, height: int,
        out: U8Array, fmt: str, matrix: int, full_range: bool,
        plan: ResamplePlan,
    ) -> None:
        """Resample and convert the ``width×height`` planes into ``out`` (the plan's size)."""
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
        yb, ub, vb = self._planes(y, y_stride, u, v, c_stride, nv12, width, height)
        rc = lib.oys_convert(
            yb, y_stride, ub, vb, c_stride, 2 if nv12 else 1,
            ffi.from_buffer(out), out.strides[0], width, height,
            _OUT_CODE[fmt], matrix, 1 if full_range else 0,
        )
        if rc != 0:
            raise ValueError(f"native converter rejected the frame geometry ({width}×{height})")

    def _planes(self, y: Any, y_stride: int, u: Any, v: Any, c_stride: int, nv12: bool,
                width: int, height: int) -> tuple[Any, Any, Any]:
        ffi = self._ffi
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
        return yb, ub, vb

    @functools.lru_cache(maxsize=32)  # noqa: B019 -- one converter for the process
    def _tables(self, plan: ResamplePlan) -> tuple[Any, ...]:
        """The plan's filter tables as C arrays (made once per plan; the plan keeps them)."""
        ffi = self._ffi
        tables: list[Any] = []
        for axis in (plan.luma_x, plan.luma_y, plan.chroma_x, plan.chroma_y):
            tables += [ffi.from_buffer("int32_t[]", axis.start),
                       ffi.from_buffer("uint16_t[]", axis.q16), axis.taps]
        return tuple(tables)

    def resample(
        self,
        y: Any, y_stride: int,
        u: Any, v: Any, c_stride: int, nv12: bool,
        width: int, height: int,
        out: U8Array, fmt: str, matrix: int, full_range: bool,
        plan: ResamplePlan,
    ) -> None:
        ffi, lib = self._ffi, self._lib
        yb, ub, vb = self._planes(y, y_stride, u, v, c_stride, nv12, width, height)
        scratch = _scratch(plan.scratch_len)
        tables = self._tables(plan)
        rc = lib.oys_resample(
            yb, y_stride, ub, vb, c_stride, 2 if nv12 else 1, width, height,
            ffi.from_buffer(out), out.strides[0], plan.out_width, plan.out_height,
            _OUT_CODE[fmt], matrix, 1 if full_range else 0, *tables,
            ffi.from_buffer("uint16_t[]", scratch), scratch.size,
        )
        if rc != 0:
            raise ValueError(
                f"native resampler rejected the geometry ({width}×{height} → "
                f"{plan.out_width}×{plan.out_height})")


def _plane_views(
    y: Any, y_stride: int, u: Any, v: Any, c_stride: int, nv12: bool, width: int, height: int,
) -> tuple[U8Array, U8Array, U8Array]:
    """Zero-copy 2-D views of the Y, U and V planes (NV12: U and V interleaved)."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    yy = np.ndarray((height, width), np.uint8, buffer=y, strides=(y_stride, 1))
    if nv12:
        uu = np.ndarray((ch, cw), np.uint8, buffer=u, strides=(c_stride, 2))
        vv = np.ndarray((ch, cw), np.uint8, buffer=u, offset=1, strides=(c_stride, 2))
    else:
        uu = np.ndarray((ch, cw), np.uint8, buffer=u, strides=(c_stride, 1))
        vv = np.ndarray((ch, cw), np.uint8, buffer=v, strides=(c_stride, 1))
    return yy, uu, vv


class _NumpyConverter(_Converter):
    name = "numpy"

    def convert(
        self,
        y: Any, y_stride: int,
        u: Any, v: Any, c_stride: int, nv12: bool,
        width: int, height: int,
        out: U8Array, fmt: str, matrix: int, full_range: bool,
    ) -> None:
        yy, uu, vv = _plane_views(y, y_stride, u, v, c_stride, nv12, width, height)
        ch, cw = uu.shape
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

    def resample(
        self,
        y: Any, y_stride: int,
        u: Any, v: Any, c_stride: int, nv12: bool,
        width: int, height: int,
        out: U8Array, fmt: str, matrix: int, full_range: bool,
        plan: ResamplePlan,
    ) -> None:
        yy, uu, vv = _plane_views(y, y_stride, u, v, c_stride, nv12, width, height)
        lum = resample_plane(yy, plan.luma_x, plan.luma_y)
        cb = resample_plane(uu, plan.chroma_x, plan.chroma_y) - 128.0
        cr = resample_plane(vv, plan.chroma_x, plan.chroma_y) - 128.0
        # The 3.13 coefficients as real numbers; yoff is luma's offset << 3 (16 or 0).
        yc, yoff, vr, ub, ug, vg = _coefficients(matrix, full_range)
        lum = (lum - yoff / 8.0) * (yc / 8192.0)
        g = lum + cb * (ug / 8192.0) + cr * (vg / 8192.0)
        _store_rgb(out, fmt, lum + cr * (vr / 8192.0), g, lum + cb * (ub / 8192.0))


def _store_rgb(out: U8Array, fmt: str, r: npt.NDArray[np.float32], g: npt.NDArray[np.float32],
               b: npt.NDArray[np.float32]) -> None:
    """Round and saturate float planes into the packed output."""
    order = (2, 1, 0) if fmt == "bgr24" else (0, 1, 2)
    for channel, plane in zip(order, (r, g, b), strict=True):
        np.clip(np.rint(plane), 0, 255, out=plane)
        out[:, :, channel] = plane
    if fmt == "rgba":
        out[:, :, 3] = 255


_IDENTITY: Final = FrameGeometry()
_scratch_local = threading.local()


def _scratch(length: int) -> npt.NDArray[np.uint16]:
    """This thread's work area for the native resampler (grown, never shared)."""
    buf: npt.NDArray[np.uint16] | None = getattr(_scratch_local, "buf", None)
    if buf is None or buf.size < length:
        buf = np.empty(max(length, 1 << 15), np.uint16)
        _scratch_local.buf = buf
    return buf


_NUMPY_CONVERTER: Final = _NumpyConverter()
_NATIVE_CONVERTER: Final = _NativeConverter(*_NATIVE) if _NATIVE is not None else None


def _default_converter() -> _Converter:
    if _NATIVE_CONVERTER is not None:
        return _NATIVE_CONVERTER
    _warn_fallback_once()
    return _NUMPY_CONVERTER


def check_frame_format(value: object, name: str = "format") -> FrameFormat:
    """``value`` as a :data:`FrameFormat`; ``TypeError`` / ``ValueError`` naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    for fmt in FRAME_FORMATS:
        if value == fmt:
            return fmt
    raise ValueError(f"{name} must be one of 'rgb24', 'bgr24', 'rgba', not {value!r}")


def _yuv420_params(frame: av.VideoFrame) -> tuple[bool, int, bool] | None:
    """(nv12, matrix, full_range) for a 4:2:0 frame with a matrix we handle, else None."""
    name = frame.format.name
    if name not in ("yuv420p", "yuvj420p", "nv12"):
        return None
    if frame.width < 2 or frame.height < 2:
        return None
    matrix = _MATRIX_BY_COLORSPACE.get(int(frame.colorspace))
    if matrix is None:
        return None
    full = name == "yuvj420p" or int(frame.color_range) == _AVCOL_RANGE_JPEG
    return name == "nv12", matrix, full


def _native_params(frame: av.VideoFrame) -> tuple[bool, int, bool] | None:
    """(nv12, matrix, full_range) when the full-size arithmetic covers the frame, else None."""
    # swscale converts odd-height yuv420p through its scaler, interpolating chroma
    # vertically; we do not reproduce that, so PyAV does those (rare) frames.
    if frame.format.name != "nv12" and frame.height & 1:
        return None
    return _yuv420_params(frame)


def _convert_into(frame: av.VideoFrame, fmt: str, out: U8Array, conv: _Converter,
                  geometry: FrameGeometry | None = None) -> None:
    """Convert ``frame`` into ``out`` (already validated for the output size).

    ``geometry`` None or identity: full size with ``conv`` or the PyAV fallback.
    Otherwise: crop / resize per ``geometry`` (its crop already checked to fit).
    """
    if geometry is not None and not geometry.is_identity:
        _resample_into(frame, fmt, out, conv, geometry)
        return
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


def _resample_into(frame: av.VideoFrame, fmt: str, out: U8Array, conv: _Converter,
                   geometry: FrameGeometry) -> None:
    width, height = int(frame.width), int(frame.height)
    plan = resample_plan(width, height, geometry)
    if plan.direct_crop:
        _crop_into(frame, fmt, out, conv, plan.crop)
        return
    params = _yuv420_params(frame)
    if params is None:
        # Other pixel formats: PyAV's full-size RGB, then the same filter per channel.
        rgb = cast("U8Array", frame.to_ndarray(format="rgb24", threads=1))
        r, g, b = (resample_plane(rgb[:, :, c], plan.luma_x, plan.luma_y) for c in range(3))
        _store_rgb(out, fmt, r, g, b)
        return
    nv12, matrix, full = params
    planes = frame.planes
    yp, up = planes[0], planes[1]
    conv.resample(yp, yp.line_size, up, up if nv12 else planes[2], up.line_size, nv12,
                  width, height, out, fmt, matrix, full, plan)


def _crop_into(frame: av.VideoFrame, fmt: str, out: U8Array, conv: _Converter,
               rect: tuple[int, int, int, int]) -> None:
    """Crop without scaling at an even offset: the full-size converter on shifted planes
    (so the pixels equal the same rectangle of the full-size conversion)."""
    x, y, cw, ch = rect
    params = _native_params(frame)
    if params is None:
        full = np.empty((frame.height, frame.width, out.shape[2]), np.uint8)
        _pyav_convert(frame, fmt, full)
        np.copyto(out, full[y:y + ch, x:x + cw])
        return
    nv12, matrix, full_range = params
    planes = frame.planes
    yp, up = planes[0], planes[1]
    ys, cs = yp.line_size, up.line_size
    step = 2 if nv12 else 1
    # memoryview slices move the origin without copying (buffer protocol for both converters).
    y_view = memoryview(yp)[y * ys + x:]
    u_view = memoryview(up)[(y // 2) * cs + (x // 2) * step:]
    v_view = u_view if nv12 else memoryview(planes[2])[(y // 2) * cs + x // 2:]
    conv.convert(y_view, ys, u_view, v_view, cs, nv12, cw, ch, out, fmt, matrix, full_range)


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
    frame: av.VideoFrame,
    format: FrameFormat = "rgb24",
    size: tuple[int, int] | None = None,
    out: U8Array | None = None,
    resize: ResizeFilter = "area",
    crop: tuple[int, int, int, int] | None = None,
) -> U8Array:
    """Convert a decoded ``av.VideoFrame`` to a packed ``height×width×C`` uint8 array,
    optionally cropped and resized in the same pass.

    Blocking (CPU only), any thread; the GIL is released during the native work.
    yuv420p, yuvj420p and nv12 frames are read in place through the buffer
    protocol (padded ``line_size`` honoured).

    Full size (``size`` and ``crop`` None): about 0.15 ms for 1280×704 natively;
    the colours equal PyAV's ``to_ndarray``; other pixel formats, odd-height
    yuv420p and matrices other than BT.601/BT.709 go through PyAV.

    Resized: the Y, U and V planes are filtered (``resize``) and only the
    ``size`` output is converted and written, never a full-size RGB frame; the
    result is within ±2 per channel of resampling the full-size RGB in floating
    point (see docs/frames.md for where clipping makes the two differ). A crop
    without resizing at an even ``(x, y)`` is exactly that rectangle of the
    full-size conversion.

    Args:
        frame: the decoded frame.
        format: ``"rgb24"`` / ``"bgr24"`` (C=3) or ``"rgba"`` (C=4, alpha 255).
        size: ``(width, height)`` of the output, 2..16384 each; None keeps the
            (cropped) source size. Larger than the source upscales.
        out: optional caller-owned array to write into: uint8, shape
            ``(height, width, C)`` of the output, C-contiguous, writeable.
        resize: ``"area"`` (average over each output pixel's footprint; use it
            to shrink) or ``"bilinear"``.
        crop: ``(x, y, width, height)`` in source pixels, taken before resizing;
            must lie inside the frame.

    Returns:
        ``out`` if given, else a new array.

    Raises:
        TypeError: ``frame`` is not an ``av.VideoFrame``; ``format`` / ``resize``
            not a str; ``size`` / ``crop`` not tuples of ints; ``out`` not a
            uint8 ndarray.
        ValueError: unknown ``format`` or ``resize``; a size out of range; a crop
            outside the frame; ``out`` of the wrong shape, not contiguous or
            read-only.
    """
    fmt = check_frame_format(format)
    frame = _check_av_frame(frame)
    geometry = _IDENTITY if size is None and crop is None and resize == "area" else FrameGeometry(
        size, crop, resize)
    ow, oh = geometry.output_size(int(frame.width), int(frame.height))
    shape = (oh, ow, _CHANNELS[fmt])
    target = np.empty(shape, np.uint8) if out is None else _check_out(out, shape)
    _convert_into(frame, fmt, target, _default_converter(), geometry)
    return target
