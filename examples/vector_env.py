"""Several Odyssey sessions as one Gymnasium vector environment.

``gymnasium.make_vec(..., vectorization_mode="async")`` runs each session in
its own process (decoding and conversion of every stream then run on all
cores); ``"sync"`` runs them in this process, one after the other within a
step. Random ``Discrete`` actions (0 = no-op) drive both worlds at 10 Hz.

Runs against the embedded local server by default (capacity = number of
envs); set ODYSSEY_API_KEY (and optionally ODYSSEY_API_URL) for the service::

    python examples/vector_env.py --envs 2 --steps 50
    python examples/vector_env.py --envs 2 --steps 10 --small --mode sync
"""

from __future__ import annotations

import argparse
import time

import gymnasium
import numpy as np
from _common import service_settings

import odyssey_sync.gym  # noqa: F401  (registers "odyssey_sync/Odyssey-v0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--mode", choices=["async", "sync"], default="async")
    parser.add_argument("--small", action="store_true", help="small frames (local server only)")
    args = parser.parse_args()

    with service_settings(small=args.small, capacity=args.envs) as settings:
        envs = gymnasium.make_vec(
            "odyssey_sync/Odyssey-v0", num_envs=args.envs, vectorization_mode=args.mode,
            **settings, prompt="A busy crossroads seen from above",
            prompts=["A bus arrives", "It starts to rain"], obs_size=(84, 84), control_hz=10,
        )
        try:
            obs, infos = envs.reset(seed=42)
            print(f"{args.envs} streams: {list(infos['stream_id'])}, observations {obs.shape}")
            rng = np.random.default_rng(0)
            started = time.monotonic()
            ages = []
            for _ in range(args.steps):
                # Mostly no-ops, an interaction now and then.
                actions = np.where(rng.random(args.envs) < 0.1, rng.integers(1, 3, args.envs), 0)
                obs, _, _, _, infos = envs.step(actions)
                ages.extend(infos["frame_age"] * 1000)
            elapsed = time.monotonic() - started
        finally:
            envs.close()
    print(f"mode={args.mode} envs={args.envs} steps={args.steps} "
          f"rate_hz={args.steps / elapsed:.2f} frame_age_ms_p50={np.median(ages):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
