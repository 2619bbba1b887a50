"""A fixed-rate, robotics-style control loop over a live Odyssey stream.

Every 100 ms the loop reads the *latest* frame (never a backlog), turns its
pixels into a toy "action" (steer toward the brighter half of the picture,
throttle from contrast), and every few seconds tells the world model what the
agent is doing with ``interact()``. The interaction runs on a helper thread, so
a slow round trip never makes the loop miss a tick. The client runs with
``resume=True``: the service ends every stream after 150 s, and the loop
must not stop there — the session moves to a new stream (starting from the
last frame) and the loop keeps reading frames.

Runs against the embedded local server by default; set ODYSSEY_API_KEY (and
optionally ODYSSEY_API_URL) to use the real service::

    python examples/control_loop.py --seconds 20
    python examples/control_loop.py --seconds 3 --small     # what the tests run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time

import numpy as np
from _common import open_client

PERIOD_S = 0.100  # control rate: 10 Hz


def policy(rgb: np.ndarray) -> tuple[float, float]:
    """Toy policy: (steer in [-1, 1], throttle in [0, 1]) from the pixels."""
    gray = rgb.mean(axis=2, dtype=np.float32)
    half = gray.shape[1] // 2
    steer = float(gray[:, half:].mean() - gray[:, :half].mean()) / 255.0
    throttle = min(1.0, float(gray.std()) / 64.0)
    return max(-1.0, min(1.0, steer * 4)), throttle


def describe(steer: float, throttle: float) -> str:
    if abs(steer) <= 0.05:
        direction = "goes straight"
    else:
        direction = "turns right" if steer > 0 else "turns left"
    pace = "quickly" if throttle > 0.5 else "slowly"
    return f"The camera {direction} and moves forward {pace}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to run")
    parser.add_argument(
        "--interact-every", type=float, default=3.0, help="seconds between interactions"
    )
    parser.add_argument("--small", action="store_true", help="small frames (local server only)")
    args = parser.parse_args()

    # resume: outlive the 150 s stream limit of the real service
    with (
        open_client(small=args.small, resume=True) as client,
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="interact") as pool,
    ):
        client.connect()
        stream_id = client.start_stream("A rover on a red desert plain", portrait=False)
        print(f"stream {stream_id}: control loop at {1 / PERIOD_S:.0f} Hz for {args.seconds:g} s")

        ticks = overruns = acks = 0
        seen: set[int] = set()
        ages: list[float] = []
        pending: concurrent.futures.Future[str] | None = None
        last_interact = time.monotonic()
        start = next_tick = time.monotonic()
        while (now := time.monotonic()) - start < args.seconds:
            frame = client.get_latest_frame(timeout=2.0)
            try:
                steer, throttle = policy(frame.data)
                seen.add(frame.seq)
                ages.append(now - frame.received_at)
            finally:
                frame.release()  # give the ring slot back at once

            if pending is not None and pending.done():
                print(f"  acknowledged: {pending.result()}")
                acks += 1
                pending = None
            if pending is None and now - last_interact >= args.interact_every:
                pending = pool.submit(client.interact, describe(steer, throttle))
                last_interact = now

            ticks += 1
            next_tick += PERIOD_S
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:  # we are late: count it and re-anchor instead of bursting
                overruns += 1
                next_tick = time.monotonic()
        if pending is not None:
            print(f"  acknowledged: {pending.result(timeout=10)}")
            acks += 1
        client.end_stream()

    mean_age_ms = 1000 * sum(ages) / len(ages) if ages else 0.0
    print(
        f"ticks={ticks} overruns={overruns} distinct_frames={len(seen)} "
        f"interactions={acks} mean_frame_age_ms={mean_age_ms:.1f} "
        f"streams={len(client.stream_ids)} resume=on"
    )
    return 0 if ticks and seen else 1


if __name__ == "__main__":
    raise SystemExit(main())
