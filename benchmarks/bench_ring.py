"""Benchmark FrameRing throughput: write → hold → release, with 0, 1 and 4 readers.

Run from the repo root:  python3 benchmarks/bench_ring.py [--seconds 2]

One writer thread converts a real decoded frame into the ring as fast as it can;
each reader thread loops ``wait_newer`` → touch the pixels (optionally hold the
lease for a while, sleeping, as GIL-releasing consumer work would) → ``release``. Prints
frames written per second, drops, frames each reader got per second, the
publish → lease latency (received_at to the reader's wake-up), and conversion
time percentiles from ``ring.stats``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_convert import decoded_frame

from odyssey_sync._frames import FrameRing, native_available


def run(width: int, height: int, readers: int, seconds: float, hold_us: float) -> str:
    frame = decoded_frame(width, height)
    ring = FrameRing(slots=4)
    stop = threading.Event()
    got = [0] * readers
    latencies: list[list[float]] = [[] for _ in range(readers)]

    def reader(idx: int) -> None:
        last = 0
        lat = latencies[idx]
        while True:
            f = ring.wait_newer(last, timeout=1.0)
            if f is None:
                if ring.closed:
                    return
                continue
            woke = time.monotonic()
            with f:
                last = f.seq
                lat.append((woke - f.received_at) * 1e6)
                _ = int(f.data[0, 0, 0]) + int(f.data[-1, -1, -1])  # touch the pixels
                if hold_us:
                    # Consumer work that releases the GIL (NumPy, I/O, a GPU upload).
                    time.sleep(hold_us / 1e6)
            got[idx] += 1

    def writer() -> None:
        while not stop.is_set():
            ring.write(frame)
        ring.close()

    threads = [threading.Thread(target=reader, args=(i,), name=f"bench-reader-{i}")
               for i in range(readers)]
    w = threading.Thread(target=writer, name="bench-writer")
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    w.start()
    time.sleep(seconds)
    stop.set()
    w.join(30)
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join(30)
    s = ring.stats
    all_lat = np.array([x for lat in latencies for x in lat]) if readers else np.array([])
    per_reader = (f"{np.mean(got) / elapsed:8.0f}" if readers else f"{'-':>8}")
    lat_txt = (f"{np.median(all_lat):8.0f} {np.percentile(all_lat, 99):8.0f}"
               if all_lat.size else f"{'-':>8} {'-':>8}")
    return (f"{width}×{height:<5} {readers:>7} {hold_us:>7.0f} {s.written / elapsed:9.0f} "
            f"{s.dropped / elapsed:8.0f} {per_reader} {lat_txt} "
            f"{s.convert_us_p50:8.1f} {s.convert_us_p99:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    print(f"native available: {native_available()}, {os.cpu_count()} CPUs, 4 slots, "
          f"{args.seconds:g} s per row")
    print(f"{'size':11} {'readers':>7} {'hold µs':>7} {'writes/s':>9} {'drops/s':>8} "
          f"{'reads/s':>8} {'lat p50':>8} {'lat p99':>8} {'conv p50':>8} {'conv p99':>8}")
    print(f"{'':11} {'':>7} {'':>7} {'':>9} {'':>8} {'(each)':>8} {'µs':>8} {'µs':>8} "
          f"{'µs':>8} {'µs':>8}")
    for w, h in ((1280, 704), (320, 176)):
        for readers, hold in ((0, 0.0), (1, 0.0), (4, 0.0), (4, 2000.0)):
            print(run(w, h, readers, args.seconds, hold), flush=True)


if __name__ == "__main__":
    main()
