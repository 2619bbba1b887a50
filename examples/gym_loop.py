"""A Gymnasium loop with a hand-written policy over a live Odyssey stream.

The environment runs in real time: the world keeps moving between steps and
``step()`` returns the newest frame at the next 10 Hz tick. The policy looks
at the observation (128×72, resized by the client in its native conversion
pass), steers toward the brighter half of the picture, and only sends an
interaction when its decision changes (action 0 is the no-op).

Runs against the embedded local server by default; set ODYSSEY_API_KEY (and
optionally ODYSSEY_API_URL) to use the real service::

    python examples/gym_loop.py --steps 100
    python examples/gym_loop.py --steps 20 --small      # what the tests run
"""

from __future__ import annotations

import argparse
import statistics

import gymnasium
import numpy as np
from _common import service_settings

import odyssey_sync.gym  # noqa: F401  (registers "odyssey_sync/Odyssey-v0")

PROMPTS = ["The camera turns left", "The camera turns right", "The camera moves forward"]


def policy(obs: np.ndarray) -> int:
    """1 = left, 2 = right, 3 = forward (0, the no-op, is chosen by the loop)."""
    grey = obs.mean(axis=2)
    half = grey.shape[1] // 2
    left, right = float(grey[:, :half].mean()), float(grey[:, half:].mean())
    if abs(left - right) < 4.0:
        return 3
    return 1 if left > right else 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hz", type=float, default=10.0, help="control rate")
    parser.add_argument("--small", action="store_true", help="small frames (local server only)")
    args = parser.parse_args()

    with service_settings(small=args.small) as settings:
        env = gymnasium.make(
            "odyssey_sync/Odyssey-v0", **settings, prompt="A forest trail at dawn",
            prompts=PROMPTS, obs_size=(128, 72), control_hz=args.hz,
            max_episode_steps=args.steps,
        )
        try:
            obs, info = env.reset(seed=0)
            print(f"episode on stream {info['stream_id']}")
            last_choice, ages, lates, acks = 0, [], [], 0
            while True:
                choice = policy(obs)
                action = choice if choice != last_choice else 0  # interact only on change
                last_choice = choice
                obs, _, terminated, truncated, info = env.step(action)
                ages.append(info["frame_age"] * 1000)
                lates.append(info["late"] * 1000)
                if info["ack"]:
                    acks += 1
                    print(f"step {info['step']:3d}: acknowledged {info['ack']!r}")
                if terminated or truncated:
                    break
        finally:
            env.close()
    print(f"steps={len(ages)} acks={acks} frame_age_ms_p50={statistics.median(ages):.1f} "
          f"late_ms_max={max(lates):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
