"""Resize and crop in the conversion pass: native (every tier) and NumPy against a float64
reference, FrameGeometry validation, convert_frame(size=, resize=, crop=)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, ClassVar

import av
import numpy as np
import numpy.typing as npt
import pytest

from odyssey_sync import _convert
from odyssey_sync._convert import convert_frame, native_available
from odyssey_sync._resize import FrameGeometry, resample_plan

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
FORMATS = ("rgb24", "bgr24", "rgba")
TOLERANCE = 2  # the spec's bound, per channel, on every pixel


# --------------------------------------------------------------------------- reference


def area_matrix(n_out: int, origin: int, length: int, extent: int) -> F64:
    """Dense (n_out, extent): overlap of each output footprint with each source pixel."""
    edges = origin + np.arange(n_out + 1) * (length / n_out)
    i = np.arange(extent)
    w = np.clip(np.minimum(edges[1:, None], i + 1.0) - np.maximum(edges[:-1, None], i), 0, None)
    return w / w.sum(axis=1, keepdims=True)


def bilinear_matrix(n_out: int, origin: int, length: int, extent: int) -> F64:
    """Dense (n_out, extent): two taps at each output pixel centre, clamped to the crop."""
    w = np.zeros((n_out, extent))
    for j in range(n_out):
        p = min(max(origin + (j + 0.5) * length / n_out - 0.5, origin), origin + length - 1)
        i0 = int(np.floor(p))
        f = p - i0
        w[j, i0] += 1 - f
        w[j, min(i0 + 1, origin + length - 1)] += f
    return w


def planes_of(frame: av.VideoFrame) -> tuple[F64, F64, F64]:
    """Y, U, V of a 4:2:0 frame at full size (chroma nearest-upsampled), float64."""
    w, h = frame.width, frame.height
    cw, ch = (w + 1) // 2, (h + 1) // 2

    def grab(plane: Any, rows: int, cols: int) -> F64:
        return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:rows, :cols].astype(
            np.float64)

    y = grab(frame.planes[0], h, w)
    if frame.format.name == "nv12":
        uv = grab(frame.planes[1], ch, 2 * cw)
        u, v = uv[:, 0::2], uv[:, 1::2]
    else:
        u, v = grab(frame.planes[1], ch, cw), grab(frame.planes[2], ch, cw)
    up = (slice(None, h), slice(None, w))
    return y, np.repeat(np.repeat(u, 2, 0), 2, 1)[up], np.repeat(np.repeat(v, 2, 0), 2, 1)[up]


def linear_rgb(frame: av.VideoFrame) -> F64:
    """Full-size RGB from the same BT.601/BT.709, limited/full-range maths (the 3.13
    coefficients swscale and our converter use), in float64, NOT clipped."""
    params = _convert._yuv420_params(frame)
    assert params is not None
    _, matrix, full = params
    yc, yoff, vr, ub, ug, vg = (c / 8192.0 for c in _convert._coefficients(matrix, full))
    y, u, v = planes_of(frame)
    lum = (y - yoff * 1024.0) * yc
    u, v = u - 128.0, v - 128.0
    return np.stack([lum + vr * v, lum + ug * u + vg * v, lum + ub * u], axis=-1)


def reference(rgb: F64, size: tuple[int, int] | None, crop: tuple[int, int, int, int] | None,
              resize: str) -> F64:
    """Resample a full-size float RGB image exactly (dense weights), round and saturate."""
    h, w = rgb.shape[:2]
    x, y, cw, ch = crop if crop is not None else (0, 0, w, h)
    ow, oh = size if size is not None else (cw, ch)
    make = area_matrix if resize == "area" else bilinear_matrix
    wx, wy = make(ow, x, cw, w), make(oh, y, ch, h)
    rows = (wy @ rgb.reshape(h, w * 3)).reshape(len(wy), w, 3)
    out = np.matmul(rows.transpose(0, 2, 1), wx.T).transpose(0, 2, 1)
    return np.clip(np.rint(out), 0, 255)


_REFERENCES: dict[tuple[int, FrameGeometry], tuple[av.VideoFrame, F64]] = {}


def cached_reference(frame: av.VideoFrame, geometry: FrameGeometry) -> F64:
    """reference(), memoised for the module (the three classes share the big frames); the
    entry keeps the frame alive so its id is never reused by another frame."""
    key = (id(frame), geometry)
    if key not in _REFERENCES:
        _REFERENCES[key] = (frame, reference(linear_rgb(frame), geometry.size, geometry.crop,
                                             geometry.resize))
    return _REFERENCES[key][1]


def with_format(rgb: F64, fmt: str) -> F64:
    if fmt == "bgr24":
        return rgb[..., ::-1]
    if fmt == "rgba":
        return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255.0)], axis=-1)
    return rgb


def assert_close(got: npt.NDArray[Any], want: npt.NDArray[Any], tolerance: int = TOLERANCE) -> None:
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.float64) - want)
    worst = float(diff.max())
    if worst > tolerance:
        where = np.argwhere(diff.max(axis=-1) > tolerance)[:5].tolist()
        pytest.fail(f"max |diff| {worst} > {tolerance} at (row, col) {where}")


def random_frame(rng: np.random.Generator, width: int, height: int, fmt: str = "yuv420p",
                 colorspace: int | None = None, color_range: int | None = None,
                 smooth: bool = False) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, fmt)
    for plane in frame.planes:
        buf = np.frombuffer(memoryview(plane), np.uint8)
        buf[:] = rng.integers(0, 256, buf.size, dtype=np.uint8)
    if smooth:  # a natural-looking frame: limited-range luma, mild chroma
        for i, (lo, hi) in enumerate(((16, 235), (96, 160), (96, 160))[:len(frame.planes)]):
            buf = np.frombuffer(memoryview(frame.planes[i]), np.uint8)
            buf[:] = lo + buf % (hi - lo + 1)
    if colorspace is not None:
        frame.colorspace = colorspace
    if color_range is not None:
        frame.color_range = color_range
    return frame


def encode_decode(codec: str, width: int, height: int, count: int) -> list[av.VideoFrame]:
    """A synthetic moving clip with hard edges, encoded and decoded in memory."""
    enc: Any = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 30)
    if codec == "libx264":
        enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    yy, xx = np.mgrid[0:height, 0:width]
    packets = []
    for i in range(count):
        rgb = np.stack([(xx * 255 // width + 9 * i) % 256, (yy * 255 // height) % 256,
                        ((xx + yy + 13 * i) * 3) % 256], -1).astype(np.uint8)
        rgb[(yy // 8 + xx // 8 + i) % 2 == 0] //= 2
        src = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        src.pts = i
        src.time_base = enc.time_base
        packets.extend(enc.encode(src))
    packets.extend(enc.encode(None))
    dec = av.CodecContext.create("libvpx" if codec == "libvpx" else "h264", "r")
    frames = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    assert len(frames) == count
    return frames


@pytest.fixture(scope="module")
def decoded() -> dict[str, list[av.VideoFrame]]:
    return {
        "vp8": encode_decode("libvpx", 322, 178, 2),
        "h264": encode_decode("libx264", 322, 178, 2),
        "h264-1280": encode_decode("libx264", 1280, 704, 1),
    }


@pytest.fixture(scope="module")
def smooth_1280() -> av.VideoFrame:
    return random_frame(np.random.default_rng(77), 1280, 704, smooth=True)


# --------------------------------------------------------------------------- the contract

SIZE_PAIRS = [
    ((64, 48), (32, 24)),      # 2×
    ((64, 48), (16, 12)),      # 4×
    ((96, 64), (36, 20)),      # fractional both ways
    ((131, 77), (37, 19)),     # odd source and output
    ((130, 66), (129, 65)),    # barely shrinking
    ((33, 21), (2, 2)),        # smallest output
    ((3, 5), (2, 3)),          # tiny odd source
    ((40, 30), (40, 30)),      # same size (resampled at 1:1)
    ((40, 30), (90, 70)),      # upscale
    ((36, 18), (48, 18)),      # upscale one axis only
    ((4, 4), (600, 3)),        # extreme upscale: the output far wider than the source
]


class ResizeContract:
    """Every implementation must pass this; subclasses pick the converter (and tier)."""

    converter: ClassVar[_convert._Converter]
    rng: np.random.Generator

    @pytest.fixture(autouse=True)
    def _rng(self) -> None:
        self.rng = np.random.default_rng(4321)

    def resample(self, frame: av.VideoFrame, fmt: str, geometry: FrameGeometry) -> U8:
        ow, oh = geometry.output_size(frame.width, frame.height)
        out = np.empty((oh, ow, 4 if fmt == "rgba" else 3), np.uint8)
        _convert._convert_into(frame, fmt, out, self.converter, geometry)
        return out

    def check(self, frame: av.VideoFrame, geometry: FrameGeometry,
              formats: tuple[str, ...] = FORMATS) -> None:
        want = cached_reference(frame, geometry)
        for fmt in formats:
            assert_close(self.resample(frame, fmt, geometry), with_format(want, fmt))

    @pytest.mark.parametrize("resize", ["area", "bilinear"])
    @pytest.mark.parametrize(("src", "dst"), SIZE_PAIRS)
    def test_random_planes(self, src: tuple[int, int], dst: tuple[int, int], resize: str) -> None:
        # Random planes: out-of-gamut pixels everywhere, so the linear (unclipped) maths
        # of the reference is what is checked, not luck.
        frame = random_frame(self.rng, *src)
        if src == dst:  # an odd crop offset takes the resampler at 1:1
            geometry = FrameGeometry(None, (1, 1, src[0] - 1, src[1] - 1), resize)
        else:
            geometry = FrameGeometry(dst, None, resize)
        self.check(frame, geometry)

    @pytest.mark.parametrize("resize", ["area", "bilinear"])
    @pytest.mark.parametrize("dst", [(84, 84), (703, 351), (128, 128)])
    def test_1280x704_random_planes(self, smooth_1280: av.VideoFrame, dst: tuple[int, int],
                                    resize: str) -> None:
        self.check(smooth_1280, FrameGeometry(dst, None, resize), ("rgb24",))

    @pytest.mark.parametrize("resize", ["area", "bilinear"])
    @pytest.mark.parametrize(("crop", "size"), [
        ((0, 0, 64, 64), (32, 32)),     # corner square
        ((33, 7, 64, 40), (21, 13)),    # odd offset, fractional
        ((31, 16, 66, 48), None),       # crop only, odd x: resampled at 1:1
        ((10, 9, 101, 60), (30, 60)),   # odd y, shrink one axis
        ((96, 64, 34, 34), (50, 50)),   # far corner, upscaled
    ])
    def test_crops(self, crop: tuple[int, int, int, int], size: tuple[int, int] | None,
                   resize: str) -> None:
        frame = random_frame(self.rng, 130, 98)
        self.check(frame, FrameGeometry(size, crop, resize))

    @pytest.mark.parametrize(("src", "dst"), [((64, 48), (20, 10)), ((131, 77), (37, 19)),
                                              ((66, 11), (33, 5))])
    def test_nv12(self, src: tuple[int, int], dst: tuple[int, int]) -> None:
        frame = random_frame(self.rng, *src, fmt="nv12")
        for resize in ("area", "bilinear"):
            self.check(frame, FrameGeometry(dst, (1, 0, src[0] - 1, src[1]), resize))

    @pytest.mark.parametrize(("colorspace", "color_range"), [(1, 1), (1, 2), (5, 2), (6, 1)])
    def test_colour_tags_honoured(self, colorspace: int, color_range: int) -> None:
        frame = random_frame(self.rng, 96, 64, colorspace=colorspace, color_range=color_range)
        self.check(frame, FrameGeometry((40, 30)))

    def test_yuvj420p_is_full_range(self) -> None:
        self.check(random_frame(self.rng, 64, 48, fmt="yuvj420p"), FrameGeometry((20, 14)))

    def test_odd_height_i420(self) -> None:
        # Resampled with nearest chroma for the last row (no swscale interpolation).
        self.check(random_frame(self.rng, 65, 47), FrameGeometry((31, 23)))

    def test_padded_planes(self) -> None:
        # Planes from arbitrary buffers: rows longer than the image, different strides.
        w, h = 70, 21
        y = self.rng.integers(0, 256, (h, w + 13), dtype=np.uint8)
        u = self.rng.integers(0, 256, (11, 35 + 29), dtype=np.uint8)
        v = self.rng.integers(0, 256, (11, 35 + 29), dtype=np.uint8)  # one chroma stride
        plan = resample_plan(w, h, FrameGeometry((23, 9)))
        out = np.empty((9, 23, 3), np.uint8)
        self.converter.resample(y, y.strides[0], u, v, u.strides[0], False, w, h, out, "rgb24",
                                0, False, plan)
        ref = av.VideoFrame(w, h, "yuv420p")
        for plane, src in zip(ref.planes, (y[:, :w], u[:, :35], v[:, :35]), strict=True):
            rows, cols = src.shape
            np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:rows, :cols] = src
        assert_close(out, reference(linear_rgb(ref), (23, 9), None, "area"))

    @pytest.mark.parametrize("codec", ["vp8", "h264"])
    def test_real_decoded_frames(self, decoded: dict[str, list[av.VideoFrame]],
                                 codec: str) -> None:
        for frame in decoded[codec]:
            for size in [(84, 84), (160, 89), (321, 177), (40, 22)]:
                for resize in ("area", "bilinear"):
                    self.check(frame, FrameGeometry(size, None, resize), ("rgb24",))
            self.check(frame, FrameGeometry((64, 64), (129, 0, 178, 178)), ("rgb24",))

    def test_real_1280x704_to_the_sizes_of_the_spec(
            self, decoded: dict[str, list[av.VideoFrame]]) -> None:
        frame = decoded["h264-1280"][0]
        for size in [(84, 84), (128, 128), (224, 224), (320, 176), (640, 352), (703, 351)]:
            self.check(frame, FrameGeometry(size), ("rgb24",))
        self.check(frame, FrameGeometry((84, 84), (288, 0, 704, 704)), ("rgb24",))  # centre


class TestNumpyResize(ResizeContract):
    converter = _convert._NUMPY_CONVERTER


needs_native = pytest.mark.skipif(not native_available(), reason="native extension not built")
_NATIVE_CONV: _convert._Converter = _convert._NATIVE_CONVERTER or _convert._NUMPY_CONVERTER


@needs_native
class NativeResizeTier(ResizeContract):
    converter = _NATIVE_CONV
    level: ClassVar[int]

    @pytest.fixture(autouse=True)
    def _tier(self) -> Iterator[None]:
        lib = _convert._NATIVE[1]  # type: ignore[index]
        if lib.oys_cpu_level() < self.level:
            pytest.skip("CPU lacks this SIMD tier")
        previous = lib.oys_active_level()
        lib.oys_set_level(self.level)
        try:
            yield
        finally:
            lib.oys_set_level(previous)


class TestNativeResizeAVX2(NativeResizeTier):
    level = 2  # the resampler's SIMD tier (AVX-512 CPUs run it too)


class TestNativeResizeScalar(NativeResizeTier):
    level = 0  # portable C (also what SSE2-only CPUs get)


@needs_native
@pytest.mark.parametrize("resize", ["area", "bilinear"])
def test_native_tiers_bit_identical_and_close_to_numpy(resize: str) -> None:
    lib = _convert._NATIVE[1]  # type: ignore[index]
    rng = np.random.default_rng(11)
    previous = lib.oys_active_level()
    try:
        for src, dst in [((1280, 704), (84, 84)), ((131, 77), (40, 61)), ((64, 48), (33, 17)),
                         ((1280, 704), (640, 352)), ((96, 40), (48, 40)), ((64, 48), (64, 20)),
                         ((1280, 704), (320, 176)), ((128, 40), (32, 17)), ((160, 48), (40, 48))]:
            frame = random_frame(rng, *src)
            geometry = FrameGeometry(dst, None, resize)
            outs = []
            for level in sorted({0, min(2, lib.oys_cpu_level())}):
                lib.oys_set_level(level)
                out = np.empty((dst[1], dst[0], 3), np.uint8)
                _convert._convert_into(frame, "rgb24", out, _NATIVE_CONV, geometry)
                outs.append(out)
            np.testing.assert_array_equal(outs[0], outs[-1])
            slow = np.empty_like(outs[0])
            _convert._convert_into(frame, "rgb24", slow, _convert._NUMPY_CONVERTER, geometry)
            assert int(np.abs(slow.astype(int) - outs[0]).max()) <= 1
    finally:
        lib.oys_set_level(previous)


# --------------------------------------------------------------------------- convert_frame API


def test_size_none_and_crop_none_is_the_full_size_conversion() -> None:
    frame = random_frame(np.random.default_rng(1), 64, 48)
    np.testing.assert_array_equal(convert_frame(frame, size=None, crop=None), convert_frame(frame))
    assert convert_frame(frame, size=(64, 48)).shape == (48, 64, 3)


@pytest.mark.parametrize("fmt", ["yuv420p", "nv12"])
def test_crop_at_even_offset_is_exactly_that_part_of_the_full_conversion(fmt: str) -> None:
    frame = random_frame(np.random.default_rng(2), 96, 64, fmt=fmt)
    full = convert_frame(frame, "bgr24")
    for crop in [(0, 0, 96, 64), (2, 4, 50, 31), (30, 10, 66, 54), (94, 62, 2, 2)]:
        x, y, w, h = crop
        got = convert_frame(frame, "bgr24", crop=crop)
        np.testing.assert_array_equal(got, full[y:y + h, x:x + w])


def test_crop_of_odd_height_frame_falls_back_to_pyav_slice() -> None:
    frame = random_frame(np.random.default_rng(3), 64, 47)
    got = convert_frame(frame, crop=(2, 2, 40, 40))
    np.testing.assert_array_equal(got, frame.to_ndarray(format="rgb24")[2:42, 2:42])


@pytest.mark.parametrize("fmt", ["yuv444p", "rgb24", "yuv422p"])
def test_other_pixel_formats_resample_pyavs_rgb(fmt: str) -> None:
    frame = random_frame(np.random.default_rng(4), 60, 40).reformat(format=fmt)
    rgb = frame.to_ndarray(format="rgb24").astype(np.float64)
    for resize in ("area", "bilinear"):
        got = convert_frame(frame, size=(25, 17), resize=resize)  # type: ignore[arg-type]
        assert_close(got, reference(rgb, (25, 17), None, resize), 1)
    got = convert_frame(frame, size=(20, 20), crop=(5, 3, 40, 30))
    assert_close(got, reference(rgb, (20, 20), (5, 3, 40, 30), "area"), 1)


def test_bt2020_frame_resamples_pyavs_rgb() -> None:
    frame = random_frame(np.random.default_rng(5), 64, 32, colorspace=9)
    rgb = frame.to_ndarray(format="rgb24").astype(np.float64)
    assert_close(convert_frame(frame, size=(16, 8)), reference(rgb, (16, 8), None, "area"), 1)


def test_out_is_checked_for_the_output_shape() -> None:
    frame = av.VideoFrame(64, 48, "yuv420p")
    out = np.zeros((12, 16, 4), np.uint8)
    assert convert_frame(frame, "rgba", size=(16, 12), out=out) is out
    assert (out[..., 3] == 255).all()
    with pytest.raises(ValueError, match=r"shape \(12, 16, 3\)"):
        convert_frame(frame, size=(16, 12), out=np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(20, 10, 3\)"):
        convert_frame(frame, crop=(0, 0, 10, 20), out=np.zeros((12, 16, 3), np.uint8))


def test_convert_frame_rejects_bad_geometry() -> None:
    frame = av.VideoFrame(64, 48, "yuv420p")
    with pytest.raises(ValueError, match="does not fit inside the 64×48 frame"):
        convert_frame(frame, crop=(10, 10, 60, 20))
    with pytest.raises(ValueError, match="resize must be 'area' or 'bilinear'"):
        convert_frame(frame, size=(8, 8), resize="cubic")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="frame size must be a tuple"):
        convert_frame(frame, size=np.zeros((8, 8, 3), np.uint8))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- FrameGeometry


def test_geometry_defaults_and_normalisation() -> None:
    g = FrameGeometry()
    assert g.is_identity and g.resize == "area"
    assert g.output_size(320, 176) == (320, 176)
    g = FrameGeometry([84, 84], [8, 0, 160, 160], "bilinear")  # type: ignore[arg-type]
    assert g.size == (84, 84) and g.crop == (8, 0, 160, 160)
    assert not g.is_identity
    assert g.output_size(320, 176) == (84, 84)
    assert g.crop_rect(320, 176) == (8, 0, 160, 160)
    assert FrameGeometry(None, (2, 2, 20, 10)).output_size(64, 48) == (20, 10)
    assert hash(g) == hash(FrameGeometry((84, 84), (8, 0, 160, 160), "bilinear"))
    with pytest.raises(AttributeError):
        g.size = (2, 2)  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"size": (84,)}, TypeError, r"frame size must be a tuple \(width, height\)"),
    ({"size": "84x84"}, TypeError, "frame size must be a tuple"),
    ({"size": (84.0, 84)}, TypeError, "frame size must be a tuple"),
    ({"size": (True, 84)}, TypeError, "frame size must be a tuple"),
    ({"size": (1, 84)}, ValueError, "frame size width must be between 2 and 16384, not 1"),
    ({"size": (84, 16385)}, ValueError, "frame size height must be between 2 and 16384"),
    ({"crop": (0, 0, 10)}, TypeError, r"crop must be a tuple \(x, y, width, height\)"),
    ({"crop": (-1, 0, 10, 10)}, ValueError, "crop x and y must be >= 0"),
    ({"crop": (0, 0, 1, 10)}, ValueError, "crop width and height must be >= 2"),
    ({"resize": 2}, TypeError, "resize must be a str"),
    ({"resize": "nearest"}, ValueError, "resize must be 'area' or 'bilinear', not 'nearest'"),
])
def test_geometry_validation(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        FrameGeometry(**kwargs)


def test_geometry_crop_outside_the_frame() -> None:
    g = FrameGeometry((84, 84), (200, 0, 176, 176))
    assert g.output_size(400, 176) == (84, 84)
    with pytest.raises(ValueError, match=r"does not fit inside the 320×176 frame"):
        g.output_size(320, 176)


def test_plan_tables_stay_inside_the_planes() -> None:
    for src, geometry in [((1280, 704), FrameGeometry((84, 84))),
                          ((33, 21), FrameGeometry((2, 2), None, "bilinear")),
                          ((3, 5), FrameGeometry((40, 40))),
                          ((131, 77), FrameGeometry((37, 19), (3, 5, 101, 61), "bilinear"))]:
        plan = resample_plan(*src, geometry)
        extents = (src[0], src[1], (src[0] + 1) // 2, (src[1] + 1) // 2)
        for axis, extent in zip((plan.luma_x, plan.luma_y, plan.chroma_x, plan.chroma_y),
                                extents, strict=True):
            assert (np.diff(axis.start) >= 0).all()
            assert axis.start.min() >= 0 and axis.start.max() + axis.taps <= extent
            np.testing.assert_allclose(axis.weights.sum(axis=1), 1.0)
            assert (axis.q16.astype(int).sum(axis=1) <= 65536).all()


def test_env_switch_zero_resizes_with_numpy() -> None:
    # Fresh interpreter: the switch is read when odyssey_sync is imported.
    code = (
        "import warnings, av, numpy as np\n"
        "from odyssey_sync._frames import FrameGeometry, FrameRing, convert_frame\n"
        "f = av.VideoFrame(64, 48, 'yuv420p')\n"
        "for p in f.planes:\n"
        "    b = np.frombuffer(memoryview(p), np.uint8); b[:] = np.arange(b.size) % 251\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = convert_frame(f, size=(20, 14), crop=(1, 2, 60, 40))\n"
        "    r = FrameRing(geometry=FrameGeometry((20, 14), (1, 2, 60, 40))); r.write(f)\n"
        "assert r.converter_name == 'numpy'\n"
        "with r.latest() as lease:\n"
        "    np.testing.assert_array_equal(lease.data, a)\n"
        "assert sum('NumPy converter' in str(x.message) for x in w) == 1\n"
        "import sys; sys.stdout.buffer.write(a.tobytes())\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, ODYSSEY_SYNC_NATIVE="0", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    got = np.frombuffer(proc.stdout, np.uint8).reshape(14, 20, 3)
    frame = av.VideoFrame(64, 48, "yuv420p")
    for plane in frame.planes:
        buf = np.frombuffer(memoryview(plane), np.uint8)
        buf[:] = np.arange(buf.size) % 251
    assert_close(got, reference(linear_rgb(frame), (20, 14), (1, 2, 60, 40), "area"))
