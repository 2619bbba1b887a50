"""Receive latency of plain aiortc vs the low-latency jitter buffer (issue 6).

A plain aiortc sender streams stamped frames (odyssey_sync.local.render.stamp: frame
number + send time drawn into the picture) to a plain aiortc receiver over
loopback; the receiver decodes each frame, reads the stamp and records
sender-stamp → decoded-frame latency. Run once with aiortc's stock video
jitter buffer and once with ``odyssey_sync._jitter.apply_low_latency`` on the
receiver, and print latency p50/p90/p99, fps, receiver CPU ms/frame and the
ratio. The two modes alternate over several rounds (``--rounds``) so that
load from other processes on a shared machine hits both alike::

    python3 benchmarks/bench_latency.py                  # 1280x704@30, 10 s per mode, VP8
    python3 benchmarks/bench_latency.py --codec H264 --seconds 5
    python3 benchmarks/bench_latency.py --drop-every 50 --reorder-every 40

The sender runs in its own process (spawned; SDP exchanged over a pipe) so
that the receiver's CPU time is its own and the two sides do not share a GIL.
The latency includes encoding, packetisation, loopback, jitter buffer,
decoding and one RGB conversion, identically in both modes; the difference
is the jitter buffer's wait.

The rig itself lives in ``tests/loopback.py``, shared with
``tests/sdk/test_jitter_e2e.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the source tree importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.loopback import (  # the rig is shared with the tests
    Received,
    run_with_sender_process,
)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` by linear interpolation; NaN if empty."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q * 100.0))


@dataclass
class Pooled:
    """Several runs of one mode, pooled (the first ``skip`` frames of each left out)."""

    latency_ms: list[float] = field(default_factory=list)
    frames: int = 0
    unreadable: int = 0
    broken: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    on_marker: int = 0
    on_timestamp: int = 0
    intervals: int = 0  # frames after the first of each run (what wall_s and cpu_s cover)

    def add(self, got: Received, skip: int) -> None:
        self.intervals += max(0, len(got.frames) - 1)
        self.latency_ms += got.latency_ms[skip:]
        self.frames += len(got.frames)
        self.unreadable += got.unreadable
        self.broken += got.broken
        self.cpu_s += got.cpu_s
        self.wall_s += got.wall_s
        if got.stats is not None:
            self.on_marker += got.stats.frames_on_marker
            self.on_timestamp += got.stats.frames_on_timestamp


def summarise(name: str, pooled: Pooled, low_latency: bool) -> dict[str, float]:
    """Print and return the figures of one mode."""
    lat = pooled.latency_ms
    n = pooled.frames
    row = {
        "p50": percentile(lat, 0.5),
        "p90": percentile(lat, 0.9),
        "p99": percentile(lat, 0.99),
        "mean": statistics.fmean(lat) if lat else float("nan"),
        "fps": pooled.intervals / pooled.wall_s if pooled.wall_s else float("nan"),
        "cpu_ms_per_frame": (
            1000.0 * pooled.cpu_s / pooled.intervals if pooled.intervals else float("nan")
        ),
        "frames": float(n),
    }
    extra = ""
    if low_latency:
        extra = f"  released on marker {pooled.on_marker} / next timestamp {pooled.on_timestamp}"
    print(
        f"{name:<14} p50 {row['p50']:6.1f}  p90 {row['p90']:6.1f}  p99 {row['p99']:6.1f} ms"
        f"  fps {row['fps']:5.1f}  receiver CPU {row['cpu_ms_per_frame']:5.2f} ms/frame"
        f"  frames {n} (unreadable {pooled.unreadable}, broken {pooled.broken}){extra}"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", choices=["VP8", "H264"], default="VP8")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="per mode, all rounds")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="alternate the modes this many times (evens out load from other processes)",
    )
    parser.add_argument("--drop-every", type=int, default=0)
    parser.add_argument("--reorder-every", type=int, default=0)
    args = parser.parse_args(argv)
    rounds = max(1, args.rounds)
    frames = max(2, round(args.seconds * args.fps / rounds))
    skip = min(int(args.fps // 2), frames // 4)
    print(
        f"aiortc loopback {args.width}x{args.height}@{args.fps:g} {args.codec}, "
        f"{rounds} rounds x {frames} frames per mode (first {skip} of each not counted), "
        f"drop_every={args.drop_every} reorder_every={args.reorder_every}"
    )
    modes = {"stock aiortc": False, "low-latency": True}
    pooled = {name: Pooled() for name in modes}
    for r in range(rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        for name in order:
            got = run_with_sender_process(
                codec=args.codec,
                width=args.width,
                height=args.height,
                fps=args.fps,
                frames=frames,
                low_latency=modes[name],
                drop_every=args.drop_every,
                reorder_every=args.reorder_every,
            )
            pooled[name].add(got, skip)
    rows = {name: summarise(name, pooled[name], modes[name]) for name in modes}
    stock, ours = rows["stock aiortc"], rows["low-latency"]
    with contextlib.suppress(ZeroDivisionError):
        print(
            f"low-latency / stock: p50 {ours['p50'] / stock['p50']:.2f}  "
            f"(saves {stock['p50'] - ours['p50']:.1f} ms; one frame interval = "
            f"{1000.0 / args.fps:.1f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
