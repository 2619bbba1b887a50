"""Benchmark YUV 4:2:0 → RGB24 conversion of a real decoded frame (prints a table).

Run from the repo root:  python3 benchmarks/bench_convert.py [--iterations 300]

Compares PyAV ``to_ndarray(format="rgb24")`` (default threading and ``threads=1``),
OpenCV ``cvtColor(COLOR_YUV2RGB_I420)`` (on a pre-packed I420 buffer, packing not
timed), odyssey_sync's NumPy fallback, and the native converter (public
``convert_frame(frame, out=...)`` into a preallocated array, ``FrameRing.write``,
and the bare C call per SIMD tier), against the floor: ``np.copyto`` of an array
the size of the RGB output. GB/s counts the RGB bytes produced per second.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from odyssey_sync import _convert
from odyssey_sync._convert import convert_frame, native_available
from odyssey_sync._frames import FrameRing


def decoded_frame(width: int, height: int) -> av.VideoFrame:
    """Encode a few synthetic frames with libx264 and decode the last one."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 30)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    yy, xx = np.mgrid[0:height, 0:width]
    packets = []
    for i in range(3):
        rgb = np.stack([(xx + i * 9) % 256, yy % 256, (xx ^ yy) % 256], -1).astype(np.uint8)
        src = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        src.pts = i
        packets.extend(enc.encode(src))
    packets.extend(enc.encode(None))
    dec = av.CodecContext.create("h264", "r")
    frames = [f for p in packets for f in dec.decode(p)] + list(dec.decode(None))
    return frames[-1]


def timeit(fn: Callable[[], object], iterations: int) -> np.ndarray:
    for _ in range(max(5, iterations // 20)):
        fn()
    out = np.empty(iterations, np.float64)
    for i in range(iterations):
        t0 = time.perf_counter_ns()
        fn()
        out[i] = (time.perf_counter_ns() - t0) / 1000.0
    return out


def run(width: int, height: int, iterations: int) -> None:
    frame = decoded_frame(width, height)
    rgb_bytes = width * height * 3
    out = np.empty((height, width, 3), np.uint8)
    cases: list[tuple[str, Callable[[], object], int | None]] = [
        ("PyAV to_ndarray (default threads)", lambda: frame.to_ndarray(format="rgb24"), None),
        ("PyAV to_ndarray (threads=1)",
         lambda: frame.to_ndarray(format="rgb24", threads=1), None),
    ]
    try:
        import cv2

        cv2.setNumThreads(1)
        i420 = np.concatenate([
            np.asarray(frame.planes[0]).reshape(height, -1)[:, :width].ravel(),
            np.asarray(frame.planes[1]).reshape(height // 2, -1)[:, :width // 2].ravel(),
            np.asarray(frame.planes[2]).reshape(height // 2, -1)[:, :width // 2].ravel(),
        ]).reshape(height * 3 // 2, width)
        cases.append(("OpenCV cvtColor I420 (1 thread)",
                      lambda: cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420, dst=out), None))
    except ImportError:
        pass

    def numpy_path() -> None:
        _convert._convert_into(frame, "rgb24", out, _convert._NUMPY_CONVERTER)

    cases.append(("odyssey_sync NumPy fallback", numpy_path, None))
    if native_available():
        ffi, lib = _convert._NATIVE  # type: ignore[misc]
        cases.append(("odyssey_sync native convert_frame(out=)",
                      lambda: convert_frame(frame, out=out), None))
        ring = FrameRing(slots=4)
        cases.append(("odyssey_sync native FrameRing.write", lambda: ring.write(frame), None))
        p = frame.planes
        yb, ub, vb = (ffi.from_buffer(x) for x in p)
        ob = ffi.from_buffer(out)
        names = {3: "AVX-512 (BW+VBMI)", 2: "AVX2", 1: "SSE2", 0: "scalar"}
        for tier in range(lib.oys_cpu_level(), -1, -1):
            def bare() -> None:
                lib.oys_convert(yb, p[0].line_size, ub, vb, p[1].line_size, 1, ob, width * 3,
                                width, height, 0, 0, 0)

            cases.append((f"native C call, {names[tier]}", bare, tier))
    floor_src = np.empty_like(out)
    floor_src.fill(7)
    cases.append(("floor: np.copyto of the RGB size", lambda: np.copyto(out, floor_src), None))

    print(f"\n{width}×{height} yuv420p (libx264-decoded, luma line_size "
          f"{frame.planes[0].line_size}), {iterations} iterations")
    print(f"{'case':44} {'median µs':>10} {'p90 µs':>9} {'GB/s':>6} {'× PyAV':>7} "
          f"{'× PyAV t=1':>10}")
    results: list[tuple[str, float, float]] = []
    for name, fn, level in cases:
        slow = "NumPy" in name or (level is not None and level < 2)
        n = max(20, iterations // 10) if slow else iterations
        if level is not None:
            lib.oys_set_level(level)
        try:
            times = timeit(fn, n)
        finally:
            if level is not None:
                lib.oys_set_level(lib.oys_cpu_level())
        results.append((name, float(np.median(times)), float(np.percentile(times, 90))))
    base, base1 = results[0][1], results[1][1]
    for name, med, p90 in results:
        print(f"{name:44} {med:10.1f} {p90:9.1f} {rgb_bytes / med / 1000:6.2f} "
              f"{base / med:6.2f}× {base1 / med:9.2f}×")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    args = ap.parse_args()
    print(f"native available: {native_available()}, PyAV {av.__version__}, "
          f"{os.cpu_count()} CPUs")
    for w, h in ((1280, 704), (704, 1280)):
        run(w, h, args.iterations)


if __name__ == "__main__":
    main()
