"""Benchmark convert + resize of fresh decoded 1280×704 frames (prints a table).

Run from the repo root:  python3 benchmarks/bench_resize.py [--iterations 200]
                         [--markdown benchmarks/README.md] [--docs docs/frames.md]

Every timed call gets a frame that was decoded just before it and never
converted: the situation in the client, where the track reader converts each
frame right after the decoder wrote it (on a 2-core machine the planes then
come mostly from memory: see the floor). Cases, for each target size:

* ``ours``: ``convert_frame(frame, size=(w, h), out=...)`` -- resampled (area)
  and converted in one native pass into a preallocated array;
* ``(a) PyAV``: ``frame.to_ndarray(width=w, height=h, format="rgb24",
  interpolation="AREA")``, with its default threading and with ``threads=1``;
* ``(b) OpenCV``: ``cv2.cvtColor(i420, COLOR_YUV2RGB_I420)`` then
  ``cv2.resize(..., INTER_AREA)``, one OpenCV thread; the planes are packed into
  the contiguous I420 buffer OpenCV needs before the clock starts (not timed);
* ``(c) ours full + cv2``: our full-size ``convert_frame(out=...)`` then
  ``cv2.resize(INTER_AREA)``;
* ``floor``: reading the source planes once (``np.copyto`` of the Y, U and V
  planes, 1.35 MB), the cost of touching the input at all.

Cases run interleaved (one fresh frame each, round robin), so machine load hits
them alike; medians and p90 in µs, ratios against ours.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction

import av
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from odyssey_sync._frames import convert_frame, native_available

WIDTH, HEIGHT = 1280, 704
SIZES = ((84, 84), (224, 224), (320, 176), (640, 352))
BEGIN, END = "<!-- bench_resize:begin -->", "<!-- bench_resize:end -->"


def encode_clip(count: int = 48) -> list[av.Packet]:
    """A moving synthetic clip with hard edges, H.264 (libx264 ultrafast)."""
    enc: av.VideoCodecContext = av.CodecContext.create("libx264", "w")  # type: ignore[assignment]
    enc.width, enc.height, enc.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    enc.time_base = Fraction(1, 30)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    packets: list[av.Packet] = []
    for i in range(count):
        rgb = np.stack([(xx + 7 * i) % 256, (yy * 255 // HEIGHT) % 256,
                        ((xx ^ yy) + 13 * i) % 256], -1).astype(np.uint8)
        rgb[(yy // 16 + xx // 16 + i) % 2 == 0] //= 2
        src = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        src.pts = i
        packets.extend(enc.encode(src))
    packets.extend(enc.encode(None))
    return packets


def fresh_frames(packets: list[av.Packet]) -> Iterator[av.VideoFrame]:
    """Decode the clip over and over (a new decoder per pass), one frame at a time."""
    while True:
        dec = av.CodecContext.create("h264", "r")
        for pkt in packets:
            yield from dec.decode(pkt)
        yield from dec.decode(None)


Case = Callable[[av.VideoFrame], Callable[[], object]]  # frame -> timed call


def build_cases(size: tuple[int, int]) -> dict[str, Case]:
    import cv2

    cv2.setNumThreads(1)
    w, h = size
    out = np.empty((h, w, 3), np.uint8)
    full = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    i420 = np.empty((HEIGHT * 3 // 2, WIDTH), np.uint8)

    def pack(frame: av.VideoFrame) -> np.ndarray:
        flat = i420.reshape(-1)
        n = WIDTH * HEIGHT
        flat[:n] = np.asarray(frame.planes[0]).reshape(HEIGHT, -1)[:, :WIDTH].ravel()
        for k in (1, 2):
            plane = np.asarray(frame.planes[k]).reshape(HEIGHT // 2, -1)[:, :WIDTH // 2]
            flat[n + (k - 1) * n // 4:n + k * n // 4] = plane.ravel()
        return i420

    def ours(f: av.VideoFrame) -> Callable[[], object]:
        return lambda: convert_frame(f, size=size, out=out)

    def pyav(f: av.VideoFrame) -> Callable[[], object]:
        return lambda: f.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")

    def pyav1(f: av.VideoFrame) -> Callable[[], object]:
        return lambda: f.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA",
                                    threads=1)

    def opencv(f: av.VideoFrame) -> Callable[[], object]:
        buf = pack(f)
        return lambda: cv2.resize(cv2.cvtColor(buf, cv2.COLOR_YUV2RGB_I420), (w, h),
                                  interpolation=cv2.INTER_AREA)

    def ours_full_cv2(f: av.VideoFrame) -> Callable[[], object]:
        return lambda: cv2.resize(convert_frame(f, out=full), (w, h),
                                  interpolation=cv2.INTER_AREA)

    return {"ours (area)": ours, "(a) PyAV to_ndarray AREA": pyav,
            "(a) PyAV to_ndarray AREA threads=1": pyav1,
            "(b) OpenCV cvtColor+resize AREA": opencv,
            "(c) ours full-size + cv2.resize": ours_full_cv2}


def floor_case() -> Case:
    dst = [np.empty(WIDTH * HEIGHT, np.uint8), np.empty(WIDTH * HEIGHT // 4, np.uint8),
           np.empty(WIDTH * HEIGHT // 4, np.uint8)]

    def read(f: av.VideoFrame) -> Callable[[], object]:
        src = [np.frombuffer(p, np.uint8)[:d.size] for p, d in zip(f.planes, dst, strict=True)]

        def run() -> None:
            for s, d in zip(src, dst, strict=True):
                np.copyto(d, s)

        return run

    return read


def measure(cases: dict[str, Case], frames: Iterator[av.VideoFrame],
            iterations: int) -> dict[str, np.ndarray]:
    names = list(cases)
    times = {n: np.empty(iterations) for n in names}
    for _ in range(3):  # warm-up: imports, SwsContexts, page faults of the outputs
        for n in names:
            cases[n](next(frames))()
    for i in range(iterations):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            call = cases[name](next(frames))
            t0 = time.perf_counter_ns()
            call()
            times[name][i] = (time.perf_counter_ns() - t0) / 1000.0
    return times


def load_line() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def run(iterations: int, sizes: tuple[tuple[int, int], ...] = SIZES) -> tuple[
        list[str], list[str]]:
    frames = fresh_frames(encode_clip())
    load_before = load_line()
    rows: list[tuple[str, str, float, float, float]] = []
    summary: list[str] = []
    floor = measure({"floor": floor_case()}, frames, iterations)["floor"]
    floor_med = float(np.median(floor))
    rows.append(("all", "floor: read the planes once (np.copyto)", floor_med,
                 float(np.percentile(floor, 90)), 0.0))
    for size in sizes:
        cases = build_cases(size)
        cases["floor"] = floor_case()
        times = measure(cases, frames, iterations)
        ours = float(np.median(times["ours (area)"]))
        label = f"{size[0]}×{size[1]}"
        for name in cases:
            med = float(np.median(times[name]))
            rows.append((label, name, med, float(np.percentile(times[name], 90)), med / ours))
        pyav = min(float(np.median(times[n])) for n in cases if n.startswith("(a)"))
        ocv = float(np.median(times["(b) OpenCV cvtColor+resize AREA"]))
        full = float(np.median(times["(c) ours full-size + cv2.resize"]))
        fl = float(np.median(times["floor"]))
        summary.append(
            f"- {label}: ours {ours:.0f} µs; {pyav / ours:.1f}× faster than PyAV (faster of "
            f"its two rows; goal ≥ 3), {ocv / ours:.1f}× faster than OpenCV (goal ≥ 3), "
            f"{full / ours:.1f}× faster than our full size + cv2.resize (goal ≥ 1), "
            f"{ours / fl:.2f}× the read floor measured alongside ({fl:.0f} µs; goal ≤ 2)")
    header = [
        f"Source 1280×704 yuv420p (libx264-decoded, each call on a frame decoded just "
        f"before it), {iterations} calls per case, native converter: {native_available()}, "
        f"PyAV {av.__version__}, OpenCV {__import__('cv2').__version__}.",
        f"Machine: {load_before} at start, {load_line()} at the end (2-core machine "
        f"shared with other work).",
        "",
        "| target | case | median µs | p90 µs | × ours |",
        "|---|---|---|---|---|",
    ]
    table = [f"| {t} | {n} | {m:.1f} | {p:.1f} | {r:.2f} |" if r else
             f"| {t} | {n} | {m:.1f} | {p:.1f} | |" for t, n, m, p, r in rows]
    return header + table, summary


def splice(path: str, block: str) -> None:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    section = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--markdown", help="splice the table into this file (between markers)")
    ap.add_argument("--docs", help="splice the table into this file too")
    ap.add_argument("--sizes", help="target sizes, e.g. 84x84,640x352 (default: the four)")
    args = ap.parse_args()
    sizes = SIZES if not args.sizes else tuple(
        (int(w), int(h)) for w, h in (s.split("x") for s in args.sizes.split(",")))
    table, summary = run(args.iterations, sizes)
    cmd = "python3 benchmarks/bench_resize.py " + " ".join(sys.argv[1:])
    block = "\n".join([f"Command: `{cmd.strip()}`", "", *table, "", *summary])
    print(block)
    for path in (args.markdown, args.docs):
        if path:
            splice(path, block)


if __name__ == "__main__":
    main()
