"""Cost of the local server's world: per-frame render/stamp/convert and recording renders.

Run from the repository root::

    python3 benchmarks/bench_world.py            # full run (≈ 20 s)
    python3 benchmarks/bench_world.py --quick    # fewer frames

Prints a table; asserts nothing (timings depend on the machine and its load).
The streamer's per-frame budget is 4 ms for ``World.video_frame`` at 1280×704.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from odyssey_sync.local.limits import MAX_PROMPT_CHARS
from odyssey_sync.local.render.media import render_recording
from odyssey_sync.local.render.stamp import decode_stamp, stamp_frame
from odyssey_sync.local.render.world import World


def _timings(fn: Callable[[int], object], n: int, warmup: int = 10) -> tuple[float, float, float]:
    """(median wall ms, p90 wall ms, median CPU ms of this thread).

    The CPU column is what the call costs; wall time also counts waiting for a
    core, which on a shared 2-core machine can dominate the p90.
    """
    for i in range(warmup):
        fn(i)
    wall, cpu = [], []
    for i in range(warmup, warmup + n):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        fn(i)
        wall.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.thread_time() - c0) * 1000.0)
    wall.sort()
    return statistics.median(wall), wall[int(len(wall) * 0.9)], statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer frames")
    args = parser.parse_args()
    n = 100 if args.quick else 300
    rec_frames = 60 if args.quick else 150

    print(f"{'operation':<38}{'size':>10}{'median ms':>11}{'p90 ms':>9}{'cpu ms':>9}")
    for width, height in ((1280, 704), (704, 1280), (320, 176)):
        world = World(width, height, "A lighthouse on a stormy coast, gulls circling")
        world.interact("The storm clears", 40)  # exercise a scene change inside the run
        size = f"{width}x{height}"
        img = world.render(0).copy()

        def stamp(i: int, img: np.ndarray = img) -> None:
            stamp_frame(img, i, 1.0)

        def decode(i: int, img: np.ndarray = img) -> object:
            return decode_stamp(img, now=1.0)

        rows: list[tuple[str, Callable[[int], object]]] = [
            ("World.render", world.render),
            ("stamp_frame", stamp),
            ("decode_stamp", decode),
            ("World.video_frame (yuv + stamp)", world.video_frame),
        ]
        for name, fn in rows:
            med, p90, cpu = _timings(fn, n)
            print(f"{name:<38}{size:>10}{med:>11.3f}{p90:>9.3f}{cpu:>9.3f}")

    print()
    print(f"{'scene build (once per prompt)':<38}{'size':>10}{'median ms':>11}")
    for width, height in ((1280, 704), (704, 1280), (320, 176)):
        size = f"{width}x{height}"
        builds, changes = [], []
        for i in range(5):
            t0 = time.perf_counter()
            world = World(width, height, f"Prompt number {i}")
            t1 = time.perf_counter()
            world.interact(f"Interaction {i}", 10)
            t2 = time.perf_counter()
            builds.append((t1 - t0) * 1000.0)
            changes.append((t2 - t1) * 1000.0)
        print(f"{'World(...)':<38}{size:>10}{statistics.median(builds):>11.1f}")
        print(f"{'World.interact':<38}{size:>10}{statistics.median(changes):>11.1f}")

    print()
    # Scene cost must not grow with the prompt (a long prompt once froze the server):
    # the same build with a 40-character prompt and with the largest accepted one.
    print(f"{'scene build vs prompt length':<38}{'size':>10}{'40 ch ms':>10}"
          f"{f'{MAX_PROMPT_CHARS} ch ms':>14}{'ratio':>7}")
    longest = ("a very long prompt " * MAX_PROMPT_CHARS)[:MAX_PROMPT_CHARS]
    for width, height in ((1280, 704), (320, 176)):
        cost: dict[int, list[float]] = {40: [], MAX_PROMPT_CHARS: []}
        for i in range(5):
            for text in (longest[:40], longest):
                t0 = time.perf_counter()
                World(width, height, f"{i} {text}").interact(f"{i} {text}", 5)
                cost[len(text)].append((time.perf_counter() - t0) * 1000.0)
        short, long_ = (statistics.median(cost[40]), statistics.median(cost[MAX_PROMPT_CHARS]))
        print(f"{'World(...) + interact':<38}{f'{width}x{height}':>10}{short:>10.1f}"
              f"{long_:>14.1f}{long_ / short:>7.2f}")

    print()
    print(f"{'render_recording':<38}{'size':>10}{'frames':>8}{'fps':>8}{'x realtime':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in ((1280, 704), (320, 176)):
            t0 = time.perf_counter()
            render_recording(
                Path(tmp) / f"{width}x{height}.mp4",
                width=width,
                height=height,
                fps=30.0,
                prompt="A lighthouse on a stormy coast",
                image=None,
                interactions=[(rec_frames // 2, "The storm clears")],
                frame_count=rec_frames,
            )
            elapsed = time.perf_counter() - t0
            fps = rec_frames / elapsed
            print(
                f"{'H.264 MP4 (libx264 veryfast)':<38}{f'{width}x{height}':>10}"
                f"{rec_frames:>8}{fps:>8.1f}{fps / 30.0:>12.2f}"
            )


if __name__ == "__main__":
    main()
