"""FrameRing and VideoFrame: leases, drops, resolution changes, concurrency, allocation."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import pytest

from odyssey_sync._frames import FrameGeometry, FrameRing, RingStats, VideoFrame, convert_frame

U8 = npt.NDArray[np.uint8]


def make_frame(rng: np.random.Generator, width: int = 64, height: int = 48,
               pts: int | None = None) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane in frame.planes:
        buf = np.frombuffer(memoryview(plane), np.uint8)
        buf[:] = rng.integers(0, 256, buf.size, dtype=np.uint8)
    if pts is not None:
        frame.pts = pts
        frame.time_base = Fraction(1, 90000)
    return frame


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(99)


@pytest.fixture
def sources(rng: np.random.Generator) -> list[tuple[av.VideoFrame, U8]]:
    """Distinct source frames with their expected RGB."""
    out = []
    for _ in range(7):
        f = make_frame(rng)
        out.append((f, convert_frame(f)))
    return out


# --------------------------------------------------------------------------- basics


def test_empty_ring(rng: np.random.Generator) -> None:
    ring = FrameRing()
    assert ring.latest() is None
    assert ring.last_seq == 0
    assert ring.wait_newer(0, timeout=0) is None
    assert not ring.closed
    assert ring.stats == RingStats(0, 0, 0, 0.0, 0.0)


def test_write_publishes_in_order_with_metadata(sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing()
    for i, (src, want) in enumerate(sources[:3], start=1):
        assert ring.write(src, timestamp_ms=100 * i) == i
        with ring.latest() as f:  # type: ignore[union-attr]
            assert (f.seq, f.timestamp_ms, f.width, f.height) == (i, 100 * i, 64, 48)
            np.testing.assert_array_equal(f.data, want)
            assert not f.data.flags.writeable
            with pytest.raises(ValueError):
                f.data[0, 0, 0] = 1
    assert ring.last_seq == 3


def test_timestamp_defaults_to_pts(rng: np.random.Generator) -> None:
    ring = FrameRing()
    ring.write(make_frame(rng, pts=90000 * 2 + 4500))  # 2.05 s
    f = ring.latest()
    assert f is not None and f.timestamp_ms == 2050
    f.release()
    ring.write(make_frame(rng))  # no pts
    f = ring.latest()
    assert f is not None and f.timestamp_ms == 0
    f.release()


def test_rgba_and_bgr_rings(sources: list[tuple[av.VideoFrame, U8]]) -> None:
    src, want = sources[0]
    for fmt, expect in (("rgba", None), ("bgr24", want[..., ::-1])):
        ring = FrameRing(frame_format=fmt)  # type: ignore[arg-type]
        ring.write(src)
        with ring.latest() as f:  # type: ignore[union-attr]
            if expect is None:
                assert f.data.shape == (48, 64, 4)
                np.testing.assert_array_equal(f.data[..., :3], want)
                assert (f.data[..., 3] == 255).all()
            else:
                np.testing.assert_array_equal(f.data, expect)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        FrameRing(slots=1)
    with pytest.raises(TypeError):
        FrameRing(slots=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FrameRing(frame_format="yuv")  # type: ignore[arg-type]
    ring = FrameRing()
    with pytest.raises(TypeError):
        ring.write(np.zeros((4, 4, 3), np.uint8))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ring.wait_newer(0, timeout=-1)
    with pytest.raises(TypeError):
        ring.wait_newer("0")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- leases


def test_held_slot_is_never_overwritten(sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing(slots=3)
    ring.write(sources[0][0])
    held = ring.latest()
    assert held is not None
    for i in range(20):
        assert ring.write(sources[1 + i % 6][0]) is not None
    np.testing.assert_array_equal(held.data, sources[0][1])
    assert held.seq == 1
    held.release()


def test_drop_when_every_slot_is_held(sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing(slots=4)
    leases = []
    for i in range(4):
        assert ring.write(sources[i][0]) == i + 1
        lease = ring.latest()
        assert lease is not None
        leases.append(lease)
    assert ring.stats.held == 4
    assert ring.write(sources[4][0]) is None  # writer does not wait: drops
    assert ring.write(sources[4][0]) is None
    s = ring.stats
    assert (s.written, s.dropped, s.held) == (4, 2, 4)
    for i, lease in enumerate(leases):
        np.testing.assert_array_equal(lease.data, sources[i][1])
    leases[1].release()
    assert ring.write(sources[5][0]) == 5  # reuses the freed slot
    with ring.latest() as f:  # type: ignore[union-attr]
        np.testing.assert_array_equal(f.data, sources[5][1])
    for i in (0, 2, 3):
        np.testing.assert_array_equal(leases[i].data, sources[i][1])
        leases[i].release()
    assert ring.stats.held == 0


def test_newest_frame_stays_readable_while_others_held(
        sources: list[tuple[av.VideoFrame, U8]]) -> None:
    # Three distinct frames held, the newest unheld: the next write must not reuse the
    # newest frame's slot (latest() could otherwise hand out a half-written frame).
    ring = FrameRing(slots=4)
    leases = []
    for i in range(3):
        ring.write(sources[i][0])
        leases.append(ring.latest())
    ring.write(sources[3][0])
    assert ring.write(sources[4][0]) is None
    with ring.latest() as f:  # type: ignore[union-attr]
        assert f.seq == 4
        np.testing.assert_array_equal(f.data, sources[3][1])
    for lease in leases:
        lease.release()  # type: ignore[union-attr]


def test_leases_are_refcounted(sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing(slots=2)
    ring.write(sources[0][0])
    a, b = ring.latest(), ring.latest()
    assert a is not None and b is not None and a.seq == b.seq == 1
    ring.write(sources[1][0])  # the other slot
    a.release()
    a.release()  # idempotent: must not drop b's reference
    assert ring.stats.held == 1
    assert ring.write(sources[2][0]) is None  # slot of seq 1 still held by b, seq 2 is newest
    np.testing.assert_array_equal(b.data, sources[0][1])
    b.release()
    assert ring.write(sources[2][0]) == 3


def test_release_invalidates_data_and_copy_survives(
        sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing()
    ring.write(sources[0][0], timestamp_ms=5)
    lease = ring.latest()
    assert lease is not None
    copy = lease.copy()
    with lease:
        pass
    assert lease.released
    with pytest.raises(RuntimeError, match="released"):
        _ = lease.data
    with pytest.raises(RuntimeError):
        lease.copy()
    for src, _want in sources[1:]:
        ring.write(src)
    np.testing.assert_array_equal(copy.data, sources[0][1])
    assert copy.data.flags.writeable and copy.data.base is None
    assert (copy.seq, copy.timestamp_ms) == (1, 5)
    copy.release()  # owned frames: harmless
    assert "released" in repr(lease)


def test_forgotten_lease_is_returned_when_collected(
        sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing()
    ring.write(sources[0][0])
    lease = ring.latest()
    assert ring.stats.held == 1
    del lease
    gc.collect()
    assert ring.stats.held == 0


def test_user_constructed_frame() -> None:
    data = np.zeros((4, 6, 3), np.uint8)
    f = VideoFrame(data, 6, 4, 123)
    assert (f.width, f.height, f.timestamp_ms, f.seq) == (6, 4, 123, 0)
    assert f.data is data and f.received_at > 0
    with pytest.raises(ValueError):
        VideoFrame(data, 4, 6, 0)
    with pytest.raises(TypeError):
        VideoFrame(data.astype(np.float32), 6, 4, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        VideoFrame(data, 6.0, 4, 0)  # type: ignore[arg-type]
    with f:
        pass
    assert f.released
    assert (f.source_width, f.source_height) == (6, 4)  # default: the frame's own size
    g = VideoFrame(data, 6, 4, 0, source_width=1280, source_height=704)
    assert (g.source_width, g.source_height) == (1280, 704)
    assert (g.copy().source_width, g.copy().source_height) == (1280, 704)
    with pytest.raises(TypeError, match="source_width must be an int"):
        VideoFrame(data, 6, 4, 0, source_width=2.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- output geometry


def test_ring_resizes_into_slots_of_the_output_size(rng: np.random.Generator) -> None:
    geometry = FrameGeometry((16, 12), (8, 0, 48, 48), "area")
    ring = FrameRing(slots=3, frame_format="bgr24", geometry=geometry)
    assert ring.geometry is geometry
    src = make_frame(rng, 64, 48)
    assert ring.write(src, timestamp_ms=5) == 1
    with ring.latest() as f:  # type: ignore[union-attr]
        assert (f.width, f.height, f.source_width, f.source_height) == (16, 12, 64, 48)
        assert f.data.shape == (12, 16, 3)
        np.testing.assert_array_equal(
            f.data, convert_frame(src, "bgr24", size=(16, 12), crop=(8, 0, 48, 48)))
        assert (f.copy().source_width, f.copy().height) == (64, 12)
    assert "geometry=FrameGeometry(size=(16, 12)" in repr(ring)


def test_full_size_converts_the_kept_decoded_picture(rng: np.random.Generator) -> None:
    ring = FrameRing(slots=3, geometry=FrameGeometry((16, 12)))
    first, second = make_frame(rng, 64, 48), make_frame(rng, 64, 48)
    ring.write(first, stream_id="s1")
    held = ring.latest()
    assert held is not None
    ring.write(second, stream_id="s1")  # a newer frame does not change the held one's source
    full = ring.full_size(held)
    assert (full.width, full.height, full.seq, full.stream_id) == (64, 48, held.seq, "s1")
    np.testing.assert_array_equal(full.data, convert_frame(first))
    held.release()
    with pytest.raises(ValueError, match="this ring"):
        ring.full_size(full)  # an owned frame, not a lease of the ring
    plain = FrameRing(slots=3)
    plain.write(first)
    with plain.latest() as f:  # type: ignore[union-attr]
        np.testing.assert_array_equal(plain.full_size(f).data, f.data)


def test_fixed_size_ring_keeps_its_slots_across_source_resolutions(
        rng: np.random.Generator) -> None:
    ring = FrameRing(geometry=FrameGeometry((20, 10), None, "bilinear"))
    ring.write(make_frame(rng, 64, 48))
    first = ring.latest()
    assert first is not None
    arrays = [s.array for s in ring._slots]
    ring.write(make_frame(rng, 96, 40))  # the source changes size, the output does not
    assert [s.array for s in ring._slots] == arrays
    with ring.latest() as f:  # type: ignore[union-attr]
        assert (f.width, f.height, f.source_width, f.source_height) == (20, 10, 96, 40)
    assert (first.source_width, first.source_height) == (64, 48)
    first.release()


def test_crop_only_ring_follows_the_crop(rng: np.random.Generator) -> None:
    ring = FrameRing(geometry=FrameGeometry(None, (2, 2, 30, 20)))
    src = make_frame(rng, 64, 48)
    ring.write(src)
    with ring.latest() as f:  # type: ignore[union-attr]
        assert f.data.shape == (20, 30, 3) and (f.source_width, f.source_height) == (64, 48)
        np.testing.assert_array_equal(f.data, convert_frame(src)[2:22, 2:32])


def test_crop_that_does_not_fit_the_frame_raises_and_publishes_nothing(
        rng: np.random.Generator) -> None:
    ring = FrameRing(geometry=FrameGeometry((16, 16), (40, 0, 48, 48)))
    with pytest.raises(ValueError, match=r"does not fit inside the 64×48 frame"):
        ring.write(make_frame(rng, 64, 48))
    assert ring.latest() is None and ring.last_seq == 0
    assert ring.stats.written == 0
    assert ring.write(make_frame(rng, 96, 48)) == 1  # a frame it fits is fine


def test_ring_rejects_a_geometry_of_the_wrong_type() -> None:
    with pytest.raises(TypeError, match="geometry must be a FrameGeometry"):
        FrameRing(geometry=(84, 84))  # type: ignore[arg-type]
    assert FrameRing().geometry == FrameGeometry()


# --------------------------------------------------------------------------- resolution change


def test_resolution_change_reallocates_and_keeps_old_leases(
        rng: np.random.Generator) -> None:
    ring = FrameRing(slots=2)
    small = make_frame(rng, 32, 16)
    ring.write(make_frame(rng))
    old = ring.latest()
    assert old is not None
    old_pixels = old.data.copy()
    assert ring.write(small) == 2
    with ring.latest() as f:  # type: ignore[union-attr]
        assert f.data.shape == (16, 32, 3)
        np.testing.assert_array_equal(f.data, convert_frame(small))
    for _ in range(5):  # all new-size slots free: old lease does not block writes
        assert ring.write(small) is not None
    np.testing.assert_array_equal(old.data, old_pixels)
    assert ring.stats.held == 1  # the old-resolution slot still counts
    old.release()
    assert ring.stats.held == 0


def test_same_resolution_does_not_reallocate(sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing(slots=2)
    buffers = set()
    for src, _ in sources * 2:
        ring.write(src)
        with ring.latest() as f:  # type: ignore[union-attr]
            buffers.add(f.data.__array_interface__["data"][0])
    assert len(buffers) == 2


def test_odd_height_and_foreign_formats_go_through(rng: np.random.Generator) -> None:
    ring = FrameRing()
    odd = make_frame(rng, 33, 15)
    ring.write(odd)
    with ring.latest() as f:  # type: ignore[union-attr]
        np.testing.assert_array_equal(f.data, odd.to_ndarray(format="rgb24"))
    rgb = av.VideoFrame.from_ndarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8),
                                     format="rgb24")
    ring.write(rgb)
    with ring.latest() as f:  # type: ignore[union-attr]
        np.testing.assert_array_equal(f.data, rgb.to_ndarray())


# --------------------------------------------------------------------------- waiting, closing


def test_wait_newer(sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing()
    assert ring.wait_newer(0, timeout=0.01) is None and not ring.closed
    ring.write(sources[0][0])
    ring.write(sources[1][0])
    with ring.wait_newer(0, timeout=0) as f:  # type: ignore[union-attr]
        assert f.seq == 2  # the newest, not the next
    assert ring.wait_newer(2, timeout=0) is None

    got: list[VideoFrame | None] = []
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        got.append(ring.wait_newer(2, timeout=30))

    t = threading.Thread(target=waiter, name="test-wait-newer")
    t.start()
    waiting.wait(5)
    ring.write(sources[2][0])
    t.join(10)
    assert not t.is_alive()
    assert got[0] is not None and got[0].seq == 3
    got[0].release()


def test_wait_newer_on_an_empty_ring_waits_for_the_first_frame(
    sources: list[tuple[av.VideoFrame, U8]],
) -> None:
    """after_seq below the first seq (e.g. -1) must still wait for a frame to exist."""
    ring = FrameRing()
    assert ring.wait_newer(-1, timeout=0) is None
    got: list[VideoFrame | None] = []
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        got.append(ring.wait_newer(-1, timeout=30))

    t = threading.Thread(target=waiter, name="test-wait-first")
    t.start()
    waiting.wait(5)
    time.sleep(0.05)  # let the waiter block before the write
    ring.write(sources[0][0])
    t.join(10)
    assert not t.is_alive()
    assert got[0] is not None and got[0].seq == 1
    got[0].release()


def test_close_wakes_waiters_and_stops_everything(
        sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing()
    ring.write(sources[0][0])
    held = ring.latest()
    results: list[VideoFrame | None] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        results.append(ring.wait_newer(1, timeout=None))

    t = threading.Thread(target=waiter, name="test-close-waiter")
    t.start()
    started.wait(5)
    ring.close()
    t.join(10)
    assert not t.is_alive() and results == [None]
    ring.close()  # idempotent
    assert ring.closed
    assert ring.latest() is None
    assert ring.wait_newer(0, timeout=None) is None
    assert ring.write(sources[1][0]) is None
    assert held is not None
    np.testing.assert_array_equal(held.data, sources[0][1])  # outstanding lease still valid
    held.release()


def test_stats_timing(sources: list[tuple[av.VideoFrame, U8]]) -> None:
    ring = FrameRing()
    for src, _ in sources:
        ring.write(src)
    s = ring.stats
    assert s.written == len(sources) and s.dropped == 0 and s.held == 0
    assert 0 < s.convert_us_p50 <= s.convert_us_p99


# --------------------------------------------------------------------------- concurrency


def test_stress_one_writer_four_readers_never_torn(rng: np.random.Generator) -> None:
    """10 000 writes of 64×48 frames against 4 readers holding leases.

    The content of seq N is source[N % K] (the single writer knows the next seq),
    and timestamp_ms = N; every reader checks both, twice, while holding the lease.
    """
    k = 11
    srcs = [make_frame(rng) for _ in range(k)]
    expected = [convert_frame(s) for s in srcs]
    ring = FrameRing(slots=4)
    total = 10_000
    errors: list[str] = []
    seen = [0] * 4

    def check(frame: VideoFrame) -> None:
        want = expected[frame.seq % k]
        if frame.timestamp_ms != frame.seq or not np.array_equal(frame.data, want):
            errors.append(f"torn/mismatched frame seq={frame.seq}")

    def reader(idx: int) -> None:
        last = 0
        spare: VideoFrame | None = None
        while not ring.closed:
            frame = ring.wait_newer(last, timeout=5.0)
            if frame is None:
                continue
            with frame:
                if frame.seq <= last:
                    errors.append(f"reader {idx}: seq went back {last} -> {frame.seq}")
                last = frame.seq
                check(frame)
                seen[idx] += 1
                # Reader 3 keeps one extra lease across iterations, so the writer
                # sometimes finds every slot held and must drop.
                if idx == 3:
                    if spare is not None:
                        check(spare)
                        spare.release()
                    spare = ring.latest()
                check(frame)
        if spare is not None:
            spare.release()

    def writer() -> None:
        for _ in range(total):
            nxt = ring.last_seq + 1
            seq = ring.write(srcs[nxt % k], timestamp_ms=nxt)
            if seq is not None and seq != nxt:
                errors.append(f"writer: expected seq {nxt}, got {seq}")
            time.sleep(0)  # yield the GIL so readers interleave with every write
        ring.close()

    readers = [threading.Thread(target=reader, args=(i,), name=f"stress-reader-{i}")
               for i in range(4)]
    w = threading.Thread(target=writer, name="stress-writer")
    for t in readers:
        t.start()
    w.start()
    w.join(120)
    for t in readers:
        t.join(30)
    assert not w.is_alive() and not any(t.is_alive() for t in readers)
    assert errors == []
    s = ring.stats
    assert s.written + s.dropped == total
    assert s.written > 0 and all(n > 0 for n in seen)
    assert s.held == 0


@pytest.mark.parametrize("geometry", [None, FrameGeometry((16, 12)),
                                      FrameGeometry((20, 20), (3, 3, 40, 40), "bilinear")])
def test_no_per_frame_allocation_in_steady_state(
        sources: list[tuple[av.VideoFrame, U8]], geometry: FrameGeometry | None) -> None:
    ring = FrameRing(geometry=geometry)
    srcs = [s for s, _ in sources]

    def cycle(n: int) -> None:
        for i in range(n):
            ring.write(srcs[i % len(srcs)], timestamp_ms=i)
            lease = ring.latest()
            assert lease is not None
            lease.release()

    cycle(600)  # warm up: slots, timing window, caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        cycle(1000)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(d.size_diff for d in after.compare_to(before, "filename"))
    # 1 000 frames × 9 KiB each would be ~9 MB; allow a few KiB of interpreter noise.
    assert growth < 8 * 1024, f"net growth {growth} bytes over 1000 writes"
