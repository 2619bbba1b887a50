"""Frame stamps: geometry, exact round trips, corruption → None, codecs, clock wrap."""

from __future__ import annotations

import fractions
from collections.abc import Iterator

import av
import numpy as np
import pytest
from av.video.codeccontext import VideoCodecContext

from odyssey_sync.local.render.stamp import (
    FRAME_BITS,
    TIME_BITS,
    FrameStamp,
    decode_stamp,
    decode_stamp_raw,
    stamp_frame,
    stamp_region,
    stamp_yuv420,
)
from odyssey_sync.local.render.world import World

SIZES = [(160, 96), (176, 320), (320, 176), (240, 136), (640, 352), (1280, 704), (704, 1280)]


def _blank(width: int, height: int, value: int = 90) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def _cell(width: int, height: int) -> int:
    return 16 if min(width, height) >= 352 else 8


# -- geometry -----------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_region_is_whole_macroblocks_in_the_top_half(width: int, height: int) -> None:
    x, y, w, h = stamp_region(width, height)
    assert (x, y) == (0, 16)
    assert w % 16 == 0 and h % 16 == 0 and w <= width
    assert y + h <= height // 2
    assert stamp_region(width, height) == (x, y, w, h)  # pure


def test_region_of_known_sizes() -> None:
    assert stamp_region(1280, 704) == (0, 16, 1280, 16)
    assert stamp_region(704, 1280) == (0, 16, 640, 32)
    assert stamp_region(320, 176) == (0, 16, 320, 16)
    assert stamp_region(160, 96) == (0, 16, 160, 32)


@pytest.mark.parametrize(("width", "height"), [(120, 96), (160, 80), (64, 64), (0, 100)])
def test_too_small_frames_are_refused(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="too small"):
        stamp_region(width, height)
    if width and height:
        with pytest.raises(ValueError, match="too small"):
            stamp_frame(_blank(width, height), 1, 1.0)
        assert decode_stamp(_blank(width, height), now=1.0) is None


def test_only_the_band_is_drawn() -> None:
    img = _blank(320, 176)
    stamp_frame(img, 7, 3.0)
    x, y, w, h = stamp_region(320, 176)
    outside = np.ones(img.shape[:2], dtype=bool)
    outside[y : y + h, x : x + w] = False
    assert (img[outside] == 90).all()
    band = img[y : y + h, x : x + w]
    assert set(np.unique(band)) <= {0, 255}
    assert (band[:, :, 0] == band[:, :, 1]).all() and (band[:, :, 1] == band[:, :, 2]).all()


# -- exact round trips ----------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_round_trip_without_codec(width: int, height: int) -> None:
    img = _blank(width, height)
    for frame, sent in [(0, 0.0), (1, 12.345678), (2**24 - 1, 98765.432101), (4242, 7.5)]:
        stamp_frame(img, frame, sent)
        got = decode_stamp(img, now=sent + 0.05)
        assert got is not None and got.frame == frame
        assert got.sent_at == pytest.approx(sent, abs=1e-6)


def test_channel_order_and_alpha_do_not_matter() -> None:
    img = _blank(176, 320)
    img[..., 0] = 200  # a coloured picture around the (grey) stamp
    stamp_frame(img, 321, 55.25)
    bgr = np.ascontiguousarray(img[..., ::-1])
    rgba = np.concatenate([img, np.full((*img.shape[:2], 1), 255, np.uint8)], axis=2)
    for pic in (img, bgr, rgba):
        assert decode_stamp(pic, now=55.3) == FrameStamp(321, 55.25)


def test_stamp_into_rgba_image() -> None:
    img = np.zeros((96, 160, 4), dtype=np.uint8)
    stamp_frame(img, 9, 1.0)
    assert decode_stamp(img, now=1.0) == FrameStamp(9, 1.0)


def test_frame_numbers_wrap_at_24_bits() -> None:
    img = _blank(160, 96)
    stamp_frame(img, (1 << FRAME_BITS) + 5, 1.0)
    stamp = decode_stamp(img, now=1.0)
    assert stamp is not None and stamp.frame == 5


def test_default_sent_at_is_now() -> None:
    import time

    img = _blank(160, 96)
    before = time.monotonic()
    stamp_frame(img, 1)
    after = time.monotonic()
    stamp = decode_stamp(img)
    assert stamp is not None
    assert before - 1e-6 <= stamp.sent_at <= after + 1e-6
    assert stamp.latency_ms(after + 0.010) == pytest.approx((after + 0.010 - stamp.sent_at) * 1e3)
    assert stamp.latency_ms() >= 0.0


def test_latency_ms() -> None:
    assert FrameStamp(1, 10.0).latency_ms(10.0125) == pytest.approx(12.5)
    assert FrameStamp(1, 10.0).latency_ms(0.0) == pytest.approx(-10000.0)  # 0.0 is a time


def test_bad_arguments() -> None:
    with pytest.raises(TypeError):
        stamp_frame(np.zeros((96, 160, 3), dtype=np.float32), 1, 1.0)
    with pytest.raises(TypeError):
        stamp_frame([[0]], 1, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        stamp_frame(np.zeros((96, 160), dtype=np.uint8), 1, 1.0)
    with pytest.raises(ValueError):
        stamp_frame(_blank(160, 96), -1, 1.0)
    with pytest.raises(TypeError):
        stamp_frame(_blank(160, 96), 1.5, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        decode_stamp(np.zeros((96, 160, 3), dtype=np.uint16))
    with pytest.raises(TypeError):
        stamp_region(160.0, 96)  # type: ignore[arg-type]


def test_yuv420_stamp_matches_the_rgb_stamp() -> None:
    width, height = 176, 320
    rgb = _blank(width, height, 60)
    stamp_frame(rgb, 99, 31.5)
    via_rgb = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    frame = av.VideoFrame.from_ndarray(via_rgb.to_ndarray(), format="yuv420p")
    planes = [
        np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size)[:, : p.width]
        for p in frame.planes
    ]
    planes[0][:] = 70  # wipe the luma stamp, then draw it in YUV
    stamp_yuv420(planes[0], planes[1], planes[2], 99, 31.5)
    x, y, w, h = stamp_region(width, height)
    expected = via_rgb.to_ndarray()[:height]
    assert np.array_equal(planes[0][y : y + h, x : x + w], expected[y : y + h, x : x + w])
    assert set(np.unique(planes[0][y : y + h, x : x + w])) == {16, 235}
    # Chroma: grey within a few levels (a per-frame dither, see stamp_yuv420).
    band_u = planes[1][y // 2 : (y + h) // 2, : w // 2].astype(int)
    assert np.abs(band_u - 128).max() <= 4
    assert decode_stamp(frame.to_ndarray(format="rgb24"), now=31.5) == FrameStamp(99, 31.5)
    with pytest.raises(TypeError):
        stamp_yuv420(planes[0].astype(np.int16), planes[1], planes[2], 1, 1.0)


# -- send-time reconstruction ------------------------------------------------------


def test_send_time_is_reconstructed_across_the_wrap() -> None:
    span = (1 << TIME_BITS) / 1e6  # ≈ 4294.97 s
    img = _blank(160, 96)
    # Sent just before the 32-bit microsecond counter wraps, received just after.
    sent = 3 * span - 0.002
    stamp_frame(img, 1, sent)
    assert decode_stamp_raw(img) == (1, (1 << TIME_BITS) - 2000)
    got = decode_stamp(img, now=3 * span + 0.003)
    assert got is not None and got.sent_at == pytest.approx(sent, abs=1e-6)
    assert got.latency_ms(3 * span + 0.003) == pytest.approx(5.0, abs=1e-3)
    # Sent just after the wrap, decoded with a clock that has not wrapped yet.
    sent = 5 * span + 0.001
    stamp_frame(img, 2, sent)
    got = decode_stamp(img, now=5 * span - 0.004)
    assert got is not None and got.sent_at == pytest.approx(sent, abs=1e-6)


def test_send_time_is_nearest_to_now_within_half_the_span() -> None:
    img = _blank(160, 96)
    sent = 123456.789012  # a machine up for 34 hours
    stamp_frame(img, 3, sent)
    for offset in (-1000.0, -1.0, 0.0, 0.5, 30.0, 2000.0):
        got = decode_stamp(img, now=sent + offset)
        assert got is not None and got.sent_at == pytest.approx(sent, abs=1e-6)


# -- corruption → None, never a wrong number ----------------------------------------


def _cell_slices(width: int, height: int, index: int) -> tuple[slice, slice]:
    x, y, w, _ = stamp_region(width, height)
    c = _cell(width, height)
    cols = w // c
    r, k = divmod(index, cols)
    return slice(y + r * c, y + (r + 1) * c), slice(x + k * c, x + (k + 1) * c)


def test_one_flipped_cell_is_corrected_two_are_refused() -> None:
    w, h = 320, 176
    img = _blank(w, h)
    stamp_frame(img, 77, 9.0)
    for first in range(0, 80, 7):
        bad = img.copy()
        ys, xs = _cell_slices(w, h, first)
        bad[ys, xs] = 255 - bad[ys, xs]
        assert decode_stamp(bad, now=9.0) == FrameStamp(77, 9.0)
        for second in range(first + 1, 80, 11):
            worse = bad.copy()
            ys, xs = _cell_slices(w, h, second)
            worse[ys, xs] = 255 - worse[ys, xs]
            assert decode_stamp(worse, now=9.0) is None


def test_ambiguous_cells() -> None:
    w, h = 160, 96
    img = _blank(w, h)
    stamp_frame(img, 12, 4.0)
    grey = img.copy()
    ys, xs = _cell_slices(w, h, 30)
    grey[ys, xs] = 128  # one unreadable cell: an erasure, corrected
    assert decode_stamp(grey, now=4.0) == FrameStamp(12, 4.0)
    ys, xs = _cell_slices(w, h, 31)
    two = grey.copy()
    two[ys, xs] = 120  # two unreadable cells: refused
    assert decode_stamp(two, now=4.0) is None
    flipped = grey.copy()
    flipped[ys, xs] = 255 - flipped[ys, xs]  # an erasure plus an error: refused
    assert decode_stamp(flipped, now=4.0) is None


def test_unstamped_pictures_decode_to_none() -> None:
    rng = np.random.default_rng(7)
    for value in (0, 255, 128):
        assert decode_stamp(_blank(320, 176, value), now=1.0) is None
    for _ in range(200):
        noise = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
        assert decode_stamp(noise, now=1.0) is None
        # Saturated black/white noise: every cell confident, still refused.
        cells = rng.integers(0, 2, (12, 20), dtype=np.uint8) * 255
        binary = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[:, :, None].repeat(3, axis=2)
        assert decode_stamp(np.ascontiguousarray(binary[:96, :160]), now=1.0) is None
    world = World(320, 176, "an unstamped world")
    assert all(decode_stamp(world.render(i), now=1.0) is None for i in range(0, 60, 7))


def test_stamp_of_the_previous_frame_is_overwritten() -> None:
    img = _blank(176, 320)
    stamp_frame(img, 1, 1.0)
    stamp_frame(img, 2, 2.0)
    assert decode_stamp(img, now=2.0) == FrameStamp(2, 2.0)


# -- through real codecs ------------------------------------------------------------


def _encoder(codec: str, width: int, height: int, bitrate: int) -> VideoCodecContext:
    """An encoder configured the way aiortc configures its own (real-time, CBR)."""
    enc = av.CodecContext.create(codec, "w")
    assert isinstance(enc, VideoCodecContext)
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.bit_rate = bitrate
    enc.time_base = fractions.Fraction(1, 30)
    enc.framerate = fractions.Fraction(30, 1)
    if codec == "libvpx":
        enc.gop_size = 3000
        enc.qmin, enc.qmax = 2, 56
        enc.options = {
            "bufsize": str(bitrate),
            "cpu-used": "-6",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "noise-sensitivity": "4",
            "overshoot-pct": "15",
            "partitions": "0",
            "static-thresh": "1",
            "undershoot-pct": "100",
        }
    else:
        enc.options = {"level": "31", "tune": "zerolatency"}
        enc.profile = "Baseline"
    return enc


def _through_codec(
    codec: str, width: int, height: int, bitrate: int, frames: int, t0: float
) -> Iterator[np.ndarray]:
    world = World(width, height, "A lighthouse on a stormy coast")
    enc = _encoder(codec, width, height, bitrate)
    dec = av.CodecContext.create("vp8" if codec == "libvpx" else "h264", "r")
    for i in range(frames):
        if i == frames // 2:
            world.interact("The storm clears and gulls circle", i)  # a scene cut mid-way
        vf = world.video_frame(i, t0 + i / 30)
        vf.pts, vf.time_base = i, fractions.Fraction(1, 30)
        for packet in enc.encode(vf):
            for decoded in dec.decode(packet):
                yield decoded.to_ndarray(format="rgb24")
    for packet in enc.encode(None):
        for decoded in dec.decode(packet):
            yield decoded.to_ndarray(format="rgb24")


CODEC_CASES = [
    ("libvpx", 160, 96, 250_000, 40),  # aiortc's VP8 floor bitrate
    ("libvpx", 176, 320, 500_000, 40),  # aiortc's VP8 start bitrate
    ("libvpx", 320, 176, 250_000, 40),
    ("libx264", 160, 96, 500_000, 40),  # aiortc's H.264 floor bitrate
    ("libx264", 176, 320, 500_000, 40),
    ("libx264", 320, 176, 1_000_000, 40),
    ("libvpx", 1280, 704, 500_000, 12),  # the one full-size case
]


@pytest.mark.parametrize(("codec", "width", "height", "bitrate", "frames"), CODEC_CASES)
def test_stamps_survive_real_time_encoding(
    codec: str, width: int, height: int, bitrate: int, frames: int
) -> None:
    t0 = 5000.0
    decoded = list(_through_codec(codec, width, height, bitrate, frames, t0))
    assert len(decoded) == frames
    for i, picture in enumerate(decoded):
        stamp = decode_stamp(picture, now=t0 + 0.5)
        assert stamp is not None, f"frame {i} lost its stamp"
        assert stamp.frame == i
        assert abs(stamp.sent_at - (t0 + i / 30)) < 1e-3


def test_random_damage_never_yields_a_wrong_stamp() -> None:
    # 3000 stamps with 1–6 cells overwritten by random levels: each must come back
    # exactly right (≤ 1 bad cell is corrected) or as None, never as another number.
    w, h = 176, 320
    rng = np.random.default_rng(11)
    outcomes = {"exact": 0, "none": 0}
    for trial in range(3000):
        img = _blank(w, h)
        frame, sent = int(rng.integers(0, 1 << 24)), float(rng.uniform(0, 1e5))
        stamp_frame(img, frame, sent)
        damaged = int(rng.integers(1, 7))
        for index in rng.choice(80, size=damaged, replace=False):
            ys, xs = _cell_slices(w, h, int(index))
            img[ys, xs] = int(rng.integers(0, 256))
        got = decode_stamp(img, now=sent)
        if got is None:
            outcomes["none"] += 1
        else:
            assert got.frame == frame, f"trial {trial}: wrong frame"
            assert got.sent_at == pytest.approx(sent, abs=1e-6), f"trial {trial}: wrong time"
            outcomes["exact"] += 1
    assert outcomes["none"] > 500 and outcomes["exact"] > 500
