"""YUV → RGB converters: native (every SIMD tier) and NumPy against PyAV, and convert_frame."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, ClassVar

import av
import numpy as np
import numpy.typing as npt
import pytest

from odyssey_sync import _convert as _frames
from odyssey_sync._convert import convert_frame, native_available

U8 = npt.NDArray[np.uint8]
FORMATS = ("rgb24", "bgr24", "rgba")
TOLERANCE = 2  # the spec's bound; in practice the converters are bit-exact


# --------------------------------------------------------------------------- helpers


def random_frame(rng: np.random.Generator, width: int, height: int, fmt: str = "yuv420p",
                 colorspace: int | None = None, color_range: int | None = None) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, fmt)
    for plane in frame.planes:
        buf = np.frombuffer(memoryview(plane), np.uint8)
        buf[:] = rng.integers(0, 256, buf.size, dtype=np.uint8)  # padding too: must be ignored
    if colorspace is not None:
        frame.colorspace = colorspace
    if color_range is not None:
        frame.color_range = color_range
    return frame


def plane_array(plane: Any, rows: int, cols: int) -> U8:
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:rows, :cols]


def nv12_as_i420(frame: av.VideoFrame) -> av.VideoFrame:
    """The same samples in yuv420p layout (and the same colour tags)."""
    w, h = frame.width, frame.height
    cw, ch = (w + 1) // 2, (h + 1) // 2
    out = av.VideoFrame(w, h, "yuv420p")
    plane_array(out.planes[0], h, w)[:] = plane_array(frame.planes[0], h, w)
    uv = plane_array(frame.planes[1], ch, 2 * cw)
    plane_array(out.planes[1], ch, cw)[:] = uv[:, 0::2]
    plane_array(out.planes[2], ch, cw)[:] = uv[:, 1::2]
    out.colorspace = frame.colorspace
    out.color_range = frame.color_range
    return out


def pyav_reference(frame: av.VideoFrame, fmt: str) -> npt.NDArray[Any]:
    """PyAV's result; rgba built from rgb24 because PyAV's rgba has garbage row tails
    when the width is not a multiple of 8 (swscale SIMD tail)."""
    rgb = frame.to_ndarray(format="bgr24" if fmt == "bgr24" else "rgb24")
    if fmt != "rgba":
        return rgb
    return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)


def assert_close(got: npt.NDArray[Any], want: npt.NDArray[Any], tolerance: int = TOLERANCE) -> None:
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    worst = int(diff.max()) if diff.size else 0
    if worst > tolerance:
        where = np.argwhere(diff.max(axis=-1) > tolerance)[:5].tolist()
        pytest.fail(f"max |diff| {worst} > {tolerance} at (row, col) {where}")


def encode_decode(codec: str, width: int, height: int, count: int) -> list[av.VideoFrame]:
    """Encode a synthetic moving clip with PyAV and decode it again (real strides, real
    codec chroma), without touching the file system."""
    enc: Any = av.CodecContext.create(codec, "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 30)
    enc.framerate = Fraction(30, 1)
    if codec == "libx264":
        enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    yy, xx = np.mgrid[0:height, 0:width]
    packets = []
    for i in range(count):
        rgb = np.stack([
            (xx * 255 // width + i * 7) % 256,
            (yy * 255 // height) % 256,
            ((xx + yy + i * 13) * 3) % 256,
        ], axis=-1).astype(np.uint8)
        rgb[(yy // 8 + xx // 8 + i) % 2 == 0] //= 2  # hard edges stress chroma
        src = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        src.pts = i
        src.time_base = enc.time_base
        packets.extend(enc.encode(src))
    packets.extend(enc.encode(None))
    dec = av.CodecContext.create("libvpx" if codec == "libvpx" else "h264", "r")
    frames: list[av.VideoFrame] = []
    for pkt in packets:
        frames.extend(dec.decode(pkt))
    frames.extend(dec.decode(None))
    assert len(frames) == count
    return frames


@pytest.fixture(scope="module")
def decoded_frames() -> dict[str, list[av.VideoFrame]]:
    return {
        "vp8": encode_decode("libvpx", 160, 96, 3),
        "h264": encode_decode("libx264", 176, 100, 3),
    }


# --------------------------------------------------------------------------- the contract


class ConverterContract:
    """Every implementation must pass this; subclasses choose the implementation."""

    rng: np.random.Generator
    converter: ClassVar[_frames._Converter]

    @pytest.fixture(autouse=True)
    def _rng(self) -> None:
        self.rng = np.random.default_rng(1234)

    def convert(self, frame: av.VideoFrame, fmt: str, check: bool = True) -> U8:
        params = _frames._native_params(frame)
        if check:
            assert params is not None, "test frame must be one the converter handles itself"
        nv12, matrix, full = params or (frame.format.name == "nv12", 0, False)
        out = np.empty((frame.height, frame.width, 4 if fmt == "rgba" else 3), np.uint8)
        p = frame.planes
        self.converter.convert(p[0], p[0].line_size, p[1], p[1] if nv12 else p[2],
                               p[1].line_size, nv12, frame.width, frame.height, out, fmt,
                               matrix, full)
        return out

    @pytest.mark.parametrize("fmt", FORMATS)
    @pytest.mark.parametrize("size", [(2, 2), (64, 48), (96, 64), (130, 66), (34, 2), (320, 176)])
    def test_even_sizes_match_pyav(self, size: tuple[int, int], fmt: str) -> None:
        frame = random_frame(self.rng, *size)
        assert_close(self.convert(frame, fmt), pyav_reference(frame, fmt))

    @pytest.mark.parametrize("fmt", FORMATS)
    @pytest.mark.parametrize("width", [3, 33, 65, 97, 131])
    def test_odd_widths_match_pyav(self, width: int, fmt: str) -> None:
        frame = random_frame(self.rng, width, 10)
        assert frame.planes[0].line_size > width  # PyAV pads odd rows: strides are real
        assert_close(self.convert(frame, fmt), pyav_reference(frame, fmt))

    @pytest.mark.parametrize("size", [(64, 47), (65, 3), (2, 5)])
    def test_odd_heights_use_last_chroma_row(self, size: tuple[int, int]) -> None:
        # swscale interpolates chroma for odd heights; our rule is nearest (the last
        # luma row uses the last chroma row) == the even frame one row taller, cropped.
        w, h = size
        tall = random_frame(self.rng, w, h + 1)
        frame = av.VideoFrame(w, h, "yuv420p")
        plane_array(frame.planes[0], h, w)[:] = plane_array(tall.planes[0], h, w)
        for i in (1, 2):
            plane_array(frame.planes[i], (h + 1) // 2, (w + 1) // 2)[:] = plane_array(
                tall.planes[i], (h + 1) // 2, (w + 1) // 2)
        out = np.empty((h, w, 3), np.uint8)
        p = frame.planes
        self.converter.convert(p[0], p[0].line_size, p[1], p[2], p[1].line_size, False,
                               w, h, out, "rgb24", 0, False)
        assert_close(out, tall.to_ndarray(format="rgb24")[:h])
        assert_close(self.convert(frame, "rgb24", check=False), out, 0)

    @pytest.mark.parametrize("fmt", FORMATS)
    @pytest.mark.parametrize("size", [(64, 48), (66, 10), (65, 11), (2, 2)])
    def test_nv12_matches_i420_of_same_samples(self, size: tuple[int, int], fmt: str) -> None:
        frame = random_frame(self.rng, *size, fmt="nv12")
        i420 = nv12_as_i420(frame)
        # Odd height: PyAV interpolates chroma there; the I420 rule is checked above.
        want = (pyav_reference(i420, fmt) if size[1] % 2 == 0
                else self.convert(i420, fmt, check=False))
        assert_close(self.convert(frame, fmt), want, 0)

    @pytest.mark.parametrize("padding", [1, 13, 64])
    def test_padded_numpy_planes(self, padding: int) -> None:
        # Planes from arbitrary buffers: rows longer than the image, different strides.
        w, h = 70, 20
        cw, ch = w // 2, h // 2
        y = self.rng.integers(0, 256, (h, w + padding), dtype=np.uint8)
        u = self.rng.integers(0, 256, (ch, cw + padding * 2), dtype=np.uint8)
        v = self.rng.integers(0, 256, (ch, cw + padding * 2), dtype=np.uint8)
        out = np.empty((h, w, 3), np.uint8)
        self.converter.convert(y, y.strides[0], u, v, u.strides[0], False, w, h, out,
                               "rgb24", 0, False)
        ref = av.VideoFrame(w, h, "yuv420p")
        plane_array(ref.planes[0], h, w)[:] = y[:, :w]
        plane_array(ref.planes[1], ch, cw)[:] = u[:, :cw]
        plane_array(ref.planes[2], ch, cw)[:] = v[:, :cw]
        assert_close(out, ref.to_ndarray(format="rgb24"))

    @pytest.mark.parametrize(("colorspace", "color_range"),
                             [(1, 0), (1, 1), (2, 2), (1, 2), (5, 1), (6, 0)])
    def test_colour_tags_honoured_like_pyav(self, colorspace: int, color_range: int) -> None:
        frame = random_frame(self.rng, 96, 32, colorspace=colorspace, color_range=color_range)
        for fmt in FORMATS:
            assert_close(self.convert(frame, fmt), pyav_reference(frame, fmt))

    def test_yuvj420p_is_full_range(self) -> None:
        frame = random_frame(self.rng, 64, 32, fmt="yuvj420p")
        assert_close(self.convert(frame, "rgb24"), frame.to_ndarray(format="rgb24"))

    @pytest.mark.parametrize("codec", ["vp8", "h264"])
    def test_real_decoded_frames(self, decoded_frames: dict[str, list[av.VideoFrame]],
                                 codec: str) -> None:
        for frame in decoded_frames[codec]:
            assert frame.format.name == "yuv420p"
            for fmt in FORMATS:
                assert_close(self.convert(frame, fmt), pyav_reference(frame, fmt))

    def test_saturation_extremes(self) -> None:
        # All-corner YUV values (over- and under-shoot) must clamp, not wrap.
        w, h = 64, 4
        frame = av.VideoFrame(w, h, "yuv420p")
        plane_array(frame.planes[0], h, w)[:] = np.tile([0, 255, 16, 235], (h, w // 4))
        plane_array(frame.planes[1], h // 2, w // 2)[:] = np.tile([0, 255], (h // 2, w // 4))
        plane_array(frame.planes[2], h // 2, w // 2)[:] = np.tile([255, 0, 0, 255],
                                                                  (h // 2, w // 8))
        for fmt in FORMATS:
            assert_close(self.convert(frame, fmt), pyav_reference(frame, fmt))


class TestNumpyConverter(ConverterContract):
    converter = _frames._NUMPY_CONVERTER


needs_native = pytest.mark.skipif(not native_available(), reason="native extension not built")


@needs_native
class NativeTier(ConverterContract):
    level: ClassVar[int]

    @pytest.fixture(autouse=True)
    def _tier(self) -> Iterator[None]:
        lib = _frames._NATIVE[1]  # type: ignore[index]
        if lib.oys_cpu_level() < self.level:
            pytest.skip("CPU lacks this SIMD tier")
        previous = lib.oys_active_level()
        assert lib.oys_set_level(self.level) == self.level
        try:
            yield
        finally:
            lib.oys_set_level(previous)


# Without the extension these classes are skipped (needs_native on NativeTier).
_NATIVE_CONV: _frames._Converter = _frames._NATIVE_CONVERTER or _frames._NUMPY_CONVERTER


class TestNativeAVX512(NativeTier):
    converter = _NATIVE_CONV
    level = 3


class TestNativeAVX2(NativeTier):
    converter = _NATIVE_CONV
    level = 2


class TestNativeSSE2(NativeTier):
    converter = _NATIVE_CONV
    level = 1


class TestNativeScalar(NativeTier):
    converter = _NATIVE_CONV
    level = 0


@needs_native
def test_native_and_numpy_are_bit_identical() -> None:
    rng = np.random.default_rng(7)
    for size in [(130, 66), (33, 8), (320, 176)]:
        frame = random_frame(rng, *size)
        for fmt in FORMATS:
            a = convert_frame(frame, fmt)  # type: ignore[arg-type]
            b = np.empty_like(a)
            _frames._convert_into(frame, fmt, b, _frames._NUMPY_CONVERTER)
            np.testing.assert_array_equal(a, b)


@needs_native
def test_native_call_releases_the_gil() -> None:
    # The C probe spins until another Python thread sets a flag. That thread needs
    # the GIL to run at all, so the probe sees the flag only if the call released it.
    ffi, lib = _frames._NATIVE  # type: ignore[misc]
    flag = ffi.new("int32_t *", 0)
    started = threading.Event()

    def setter() -> None:
        started.set()
        flag[0] = 1

    t = threading.Thread(target=setter, name="gil-probe-setter")
    t.start()
    try:
        seen = lib.oys_gil_probe(flag, 100_000_000)  # gives up after ~1-8 s (pause length varies)
    finally:
        t.join(timeout=10)
    assert started.is_set()
    assert seen == 1


# --------------------------------------------------------------------------- convert_frame API


def test_convert_frame_allocates_or_fills_out() -> None:
    rng = np.random.default_rng(3)
    frame = random_frame(rng, 64, 48)
    got = convert_frame(frame)
    assert got.shape == (48, 64, 3) and got.dtype == np.uint8
    out = np.zeros((48, 64, 4), np.uint8)
    assert convert_frame(frame, "rgba", out=out) is out
    assert (out[..., 3] == 255).all()
    assert_close(out[..., :3], got)
    assert_close(convert_frame(frame, "bgr24"), got[..., ::-1])


@pytest.mark.parametrize("fmt", ["yuv444p", "rgb24", "gray", "yuv422p"])
def test_convert_frame_other_pixel_formats_fall_back_to_pyav(fmt: str) -> None:
    rng = np.random.default_rng(4)
    src = random_frame(rng, 40, 30)
    frame = src.reformat(format=fmt)
    for out_fmt in FORMATS:
        assert_close(convert_frame(frame, out_fmt),  # type: ignore[arg-type]
                     pyav_reference(frame, out_fmt), 0)


def test_convert_frame_odd_height_matches_pyav() -> None:
    frame = random_frame(np.random.default_rng(5), 65, 47)
    for fmt in FORMATS:
        assert_close(convert_frame(frame, fmt), pyav_reference(frame, fmt))  # type: ignore[arg-type]


def test_convert_frame_unusual_matrix_falls_back() -> None:
    frame = random_frame(np.random.default_rng(6), 64, 32, colorspace=9)  # BT.2020
    assert _frames._native_params(frame) is None
    assert_close(convert_frame(frame), frame.to_ndarray(format="rgb24"), 0)


def test_convert_frame_rejects_bad_arguments() -> None:
    frame = av.VideoFrame(16, 8, "yuv420p")
    with pytest.raises(TypeError, match=r"av\.VideoFrame"):
        convert_frame(np.zeros((8, 16, 3), np.uint8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="format must be one of"):
        convert_frame(frame, "rgb48")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="format must be a str"):
        convert_frame(frame, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        convert_frame(frame, out=bytearray(384))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype uint8"):
        convert_frame(frame, out=np.zeros((8, 16, 3), np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        convert_frame(frame, out=np.zeros((16, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        convert_frame(frame, "rgba", out=np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        convert_frame(frame, out=np.zeros((8, 32, 3), np.uint8)[:, ::2])
    ro = np.zeros((8, 16, 3), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        convert_frame(frame, out=ro)


@needs_native
def test_native_rejects_short_planes() -> None:
    y = np.zeros((4, 8), np.uint8)
    u = np.zeros((2, 4), np.uint8)
    out = np.empty((6, 8, 3), np.uint8)
    assert _frames._NATIVE_CONVERTER is not None
    with pytest.raises(ValueError, match="luma plane"):
        _frames._NATIVE_CONVERTER.convert(y, 8, u, u, 4, False, 8, 6, out, "rgb24", 0, False)


def test_env_switch_zero_forces_numpy_with_one_warning() -> None:
    # Fresh interpreter: the switch is read when odyssey_sync._frames is imported.
    code = (
        "import warnings, av, numpy as np\n"
        "from odyssey_sync._frames import convert_frame, native_available, FrameRing\n"
        "assert not native_available()\n"
        "f = av.VideoFrame(16, 8, 'yuv420p')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = convert_frame(f); convert_frame(f)\n"
        "    r = FrameRing(); r.write(f)\n"
        "    n = [x for x in w if 'NumPy converter' in str(x.message)]\n"
        "assert len(n) == 1, [str(x.message) for x in w]\n"
        "assert r.converter_name == 'numpy'\n"
        "np.testing.assert_array_equal(a, f.to_ndarray(format='rgb24'))\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, ODYSSEY_SYNC_NATIVE="0", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
