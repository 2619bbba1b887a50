"""A fleet of Odyssey sessions on Ray writing a rollout dataset, then reading it back.

``run_fleet`` starts one Ray actor per session, never more than
``--max-sessions`` at once (the account's concurrent-stream limit; 5 on the
free tier), each driving its environment with a schedule of prompts and
writing one Parquet shard per episode. The dataset is then read back with
pyarrow (``ray.data.read_parquet`` reads the same files when ``ray[data]`` is
installed) and the observations decoded to an ``N×H×W×3`` array.

Runs a local Ray runtime and the embedded local server by default; set
ODYSSEY_API_KEY (and optionally ODYSSEY_API_URL) to use the service, and
RAY_ADDRESS to join a cluster (``--out`` must then be storage every node sees)::

    python examples/ray_fleet.py --actors 4 --max-sessions 2 --out rollouts/
    python examples/ray_fleet.py --actors 3 --max-sessions 2 --steps 10 --small
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import ray
from _common import service_settings

from odyssey_sync.fleet import observations, prompt_schedule, read_rollouts, run_fleet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, default=4, help="sessions in total")
    parser.add_argument("--max-sessions", type=int, default=2, help="sessions at once")
    parser.add_argument("--episodes", type=int, default=1, help="episodes per actor")
    parser.add_argument("--steps", type=int, default=50, help="steps per episode")
    parser.add_argument("--out", type=Path, default=Path("rollouts"))
    parser.add_argument("--small", action="store_true", help="small frames (local server only)")
    args = parser.parse_args()

    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    try:
        with service_settings(small=args.small, capacity=args.max_sessions) as settings:
            env_options = {"prompt": "A delivery robot in a corridor", "obs_size": (96, 96),
                           "control_hz": 10}
            if "api_url" in settings:
                env_options["api_url"] = settings["api_url"]
            result = run_fleet(
                settings["api_key"], args.out, num_actors=args.actors,
                episodes_per_actor=args.episodes, steps_per_episode=args.steps,
                max_sessions=args.max_sessions, env_options=env_options,
                policy=prompt_schedule(["The robot turns left", "The robot turns right"],
                                       every=10),
                actor_options={"num_cpus": 0.5},
            )
    finally:
        ray.shutdown()
    print(f"wrote {result.observations} observations in {len(result.shards)} shards "
          f"({result.observations_per_second:.1f} obs/s, at most {result.peak_sessions} "
          f"sessions at once, failures: {result.failures or 'none'})")

    table = read_rollouts(args.out)
    frames = observations(table)
    sent = [p for p in table.column("prompt").to_pylist() if p]
    acks = [a for a in table.column("ack").to_pylist() if a]
    ages = np.array(table.column("frame_age_s").to_pylist()) * 1000
    print(f"read back {table.num_rows} rows, observations {frames.shape} {frames.dtype}, "
          f"{len(table.column('episode_id').unique())} episodes, {len(sent)} prompts sent, "
          f"{len(acks)} acknowledged, frame age p50 {np.median(ages):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
