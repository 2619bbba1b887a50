"""Output geometry of the frame path: :class:`FrameGeometry` and the resampling plans.

A :class:`FrameGeometry` says what consumers want -- an output ``size``, an
optional ``crop`` rectangle in source pixels, a ``resize`` filter -- and is the
one place where those arguments are validated (the facades build one before any
network call). :func:`resample_plan` turns it, for one source size, into the
separable filter both converters apply:

* per axis and per plane kind (luma, chroma), for each output index the first
  source index it reads and its weights (``taps`` of them, normalised to 1);
* ``area``: the exact box filter over each output pixel's footprint in the
  source (the overlap length of every source pixel with it), correct for
  fractional ratios; ``bilinear``: two taps at the pixel centre
  (half-pixel-centre convention, like OpenCV and swscale), clamped to the crop.

Chroma is the 4:2:0 plane as the full-size converter reads it (one sample per
2×2 luma block), so a chroma weight is the overlap of the footprint with that
block, and a bilinear chroma tap is the nearest-upsampled chroma at the luma
tap. Resampling is done on Y, U and V; the output pixels are then converted to
RGB. Being linear, this equals resampling the unclipped full-size RGB image
(what swscale does too); only where a footprint mixes out-of-gamut and in-gamut
source pixels does it differ from resampling the clipped RGB of
:func:`~odyssey_sync._convert.convert_frame`.

The native kernel gets the weights as unsigned Q16 fixed point (sum 65536,
each at most 65535); the NumPy implementation uses the float weights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final, Literal, cast

import numpy as np
import numpy.typing as npt

__all__ = ["FrameGeometry", "ResamplePlan", "ResizeFilter", "resample_plan"]

ResizeFilter = Literal["area", "bilinear"]
_FILTERS: Final = ("area", "bilinear")
#: Largest output side accepted (bounds the ring's allocation).
MAX_SIDE: Final = 16384
#: Output rows the native kernel processes per band (its transposes are 16×16).
BAND: Final = 16


def _int_tuple(value: object, length: int, label: str, shape: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) != length:
        raise TypeError(f"{label} must be a tuple {shape} of ints, not {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise TypeError(f"{label} must be a tuple {shape} of ints, not {value!r}")
        out.append(int(item))
    return tuple(out)


@dataclass(frozen=True)
class FrameGeometry:
    """What the frame path delivers: output size, source crop, resize filter.

    Construction validates every argument (types, ranges) and raises at once;
    whether ``crop`` fits the source can only be checked against a frame, by
    :meth:`output_size` / :meth:`crop_rect`. Immutable, hashable, thread-safe.

    Attributes:
        size: ``(width, height)`` of the output, each 2..16384; None keeps the
            (cropped) source size. Smaller than the source downscales, larger
            upscales (both filters support it; ``bilinear`` is the better
            upscaler, ``area`` then replicates pixels with blended seams).
        crop: ``(x, y, width, height)`` in source pixels, applied before
            resizing (a centre square, a region of interest); width and height
            at least 2. None uses the whole frame.
        resize: ``"area"`` (default: the average over each output pixel's
            footprint; the right filter for downscaling, no aliasing) or
            ``"bilinear"`` (two taps per axis at the pixel centre; sharper,
            aliases when shrinking by more than 2×).

    Raises (constructor):
        TypeError: ``size`` / ``crop`` not tuples of ints, ``resize`` not a str.
        ValueError: a side outside 2..16384, negative crop offset, unknown
            ``resize``.
    """

    size: tuple[int, int] | None = None
    crop: tuple[int, int, int, int] | None = None
    resize: ResizeFilter = "area"

    def __post_init__(self) -> None:
        if self.size is not None:
            w, h = _int_tuple(self.size, 2, "frame size", "(width, height)")
            for label, side in (("width", w), ("height", h)):
                if not 2 <= side <= MAX_SIDE:
                    raise ValueError(
                        f"frame size {label} must be between 2 and {MAX_SIDE}, not {side}")
            object.__setattr__(self, "size", (w, h))
        if self.crop is not None:
            x, y, cw, ch = _int_tuple(self.crop, 4, "crop", "(x, y, width, height)")
            if x < 0 or y < 0:
                raise ValueError(f"crop x and y must be >= 0, not ({x}, {y})")
            if cw < 2 or ch < 2:
                raise ValueError(f"crop width and height must be >= 2, not ({cw}, {ch})")
            object.__setattr__(self, "crop", (x, y, cw, ch))
        if not isinstance(self.resize, str):
            raise TypeError(f"resize must be a str, not {type(self.resize).__name__}")
        if self.resize not in _FILTERS:
            raise ValueError(f"resize must be 'area' or 'bilinear', not {self.resize!r}")

    @property
    def is_identity(self) -> bool:
        """True when frames are delivered at their source size, uncropped."""
        return self.size is None and self.crop is None

    def crop_rect(self, source_width: int, source_height: int) -> tuple[int, int, int, int]:
        """The source rectangle ``(x, y, w, h)`` read for a frame of this size.

        Raises:
            ValueError: ``crop`` does not lie inside the frame.
        """
        if self.crop is None:
            return 0, 0, source_width, source_height
        x, y, w, h = self.crop
        if x + w > source_width or y + h > source_height:
            raise ValueError(
                f"crop {self.crop} (x, y, width, height) does not fit inside the "
                f"{source_width}×{source_height} frame")
        return self.crop

    def output_size(self, source_width: int, source_height: int) -> tuple[int, int]:
        """``(width, height)`` of the output for a frame of the given size.

        Raises:
            ValueError: ``crop`` does not lie inside the frame.
        """
        _, _, w, h = self.crop_rect(source_width, source_height)
        return self.size if self.size is not None else (w, h)


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class _Axis:
    """One axis of one plane kind: output i reads source ``start[i] + t`` with ``weights[i, t]``."""

    start: npt.NDArray[np.int32]
    weights: npt.NDArray[np.float64]   # (n, taps), rows sum to 1
    q16: npt.NDArray[np.uint16]        # the same in unsigned Q16 for the native kernel
    taps: int


@dataclass(frozen=True, eq=False)  # identity hash: converters cache per plan
class ResamplePlan:
    """Filter tables for one (source size, geometry): luma and chroma, x and y."""

    source_width: int
    source_height: int
    out_width: int
    out_height: int
    crop: tuple[int, int, int, int]  # the source rectangle read (x, y, w, h)
    luma_x: _Axis
    luma_y: _Axis
    chroma_x: _Axis
    chroma_y: _Axis

    @property
    def direct_crop(self) -> bool:
        """True when the output is the crop rectangle unscaled at an even offset: the
        full-size converter on shifted planes does it (exactly its pixels)."""
        x, y, w, h = self.crop
        return (w, h) == (self.out_width, self.out_height) and not (x | y) & 1

    @property
    def scratch_len(self) -> int:
        """uint16 elements of scratch the native kernel needs (mirrors oys_resample)."""
        padded_w = -(-self.out_width // BAND) * BAND
        return (2 * BAND + 1) * (self.source_width + 2 * BAND) + 3 * padded_w * (BAND + 1)


def _window(first: npt.NDArray[np.int64], taps: int, extent: int) -> npt.NDArray[np.int64]:
    # Keep every window inside the plane: shift its start left at the far edge
    # (the weights are computed on the shifted indices, so nothing is lost).
    return np.minimum(first, extent - taps)


def _area_axis(n_out: int, origin: int, length: int, extent: int, halve: bool) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    edges = origin + np.arange(n_out + 1, dtype=np.float64) * (length / n_out)
    if halve:
        edges = edges / 2.0
    lo, hi = edges[:-1], edges[1:]
    first = np.floor(lo).astype(np.int64)
    last = np.ceil(hi).astype(np.int64)  # exclusive
    taps = int(min(extent, max(1, int((last - first).max()))))
    start = _window(first, taps, extent)
    idx = start[:, None] + np.arange(taps)
    overlap = np.minimum(hi[:, None], idx + 1.0) - np.maximum(lo[:, None], idx.astype(np.float64))
    weights = np.clip(overlap, 0.0, None)
    return start, weights


def _bilinear_axis(n_out: int, origin: int, length: int, extent: int, halve: bool) -> tuple[
        npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    pos = origin + (np.arange(n_out, dtype=np.float64) + 0.5) * (length / n_out) - 0.5
    pos = np.clip(pos, origin, origin + length - 1)
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    i1 = np.minimum(i0 + 1, origin + length - 1)
    if halve:  # chroma: the nearest-upsampled chroma sample of each luma tap
        i0, i1 = i0 >> 1, i1 >> 1
    taps = min(2, extent)
    start = _window(i0, taps, extent)
    weights = np.zeros((n_out, taps))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, i0 - start), 1.0 - frac)
    np.add.at(weights, (rows, i1 - start), frac)
    return start, weights


def _make_axis(kind: str, n_out: int, origin: int, length: int, extent: int,
               halve: bool) -> _Axis:
    build = _area_axis if kind == "area" else _bilinear_axis
    start, weights = build(n_out, origin, length, extent, halve)
    weights = weights / weights.sum(axis=1, keepdims=True)
    q = np.rint(weights * 65536.0).astype(np.int64)
    # Exact sum 65536 (the rounding error goes to the largest weight), then cap at
    # 65535 so a single full tap fits uint16 (costs 1/65536 of a level at most).
    rows = np.arange(n_out)
    q[rows, q.argmax(axis=1)] += 65536 - q.sum(axis=1)
    q = np.minimum(q, 65535)
    return _Axis(start.astype(np.int32), weights, np.ascontiguousarray(q, np.uint16),
                 weights.shape[1])


@functools.lru_cache(maxsize=32)
def resample_plan(source_width: int, source_height: int,
                  geometry: FrameGeometry) -> ResamplePlan:
    """The filter tables for a frame of this size (cached; thread-safe).

    Raises:
        ValueError: ``geometry.crop`` does not fit the frame.
    """
    x, y, cw, ch = geometry.crop_rect(source_width, source_height)
    ow, oh = geometry.output_size(source_width, source_height)
    kind = geometry.resize
    chroma_w, chroma_h = (source_width + 1) // 2, (source_height + 1) // 2
    return ResamplePlan(
        source_width, source_height, ow, oh, (x, y, cw, ch),
        luma_x=_make_axis(kind, ow, x, cw, source_width, False),
        luma_y=_make_axis(kind, oh, y, ch, source_height, False),
        chroma_x=_make_axis(kind, ow, x, cw, chroma_w, True),
        chroma_y=_make_axis(kind, oh, y, ch, chroma_h, True),
    )


# --------------------------------------------------------------------------- NumPy resampler


def resample_plane(plane: npt.NDArray[np.uint8], ax_x: _Axis, ax_y: _Axis) -> npt.NDArray[
        np.float32]:
    """Separable resample of one 8-bit plane (any strides) to ``(n_y, n_x)`` float32 levels."""
    xlo = int(ax_x.start[0])
    xhi = int(ax_x.start[-1]) + ax_x.taps
    rows = plane[ax_y.start[:, None] + np.arange(ax_y.taps), xlo:xhi]  # (oh, ty, span)
    vert = np.einsum("otx,ot->ox", rows.astype(np.float32), ax_y.weights.astype(np.float32))
    cols = vert[:, (ax_x.start - xlo)[:, None] + np.arange(ax_x.taps)]  # (oh, ow, tx)
    return cast("npt.NDArray[np.float32]",
                np.einsum("ojt,jt->oj", cols, ax_x.weights.astype(np.float32)))
