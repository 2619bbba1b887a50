"""``odyssey-sync fleet``: sessions as Ray actors writing rollouts (:mod:`odyssey_sync.fleet`).

Needs the ``[ray]`` extra; without it the command is a usage error naming
the install command. The driver runs here (a progress bar of observations on
stderr); actors run on the local Ray runtime or the cluster of
``--ray-address``.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from .inputs import require_key
from .output import EXIT_OK, CommandFailed, Output, UsageError

__all__ = ["cmd_fleet"]


def cmd_fleet(args: argparse.Namespace, out: Output) -> int:
    """Run ``--actors`` sessions, at most ``--max-sessions`` at once; print where the shards are."""
    key = require_key(args)
    if importlib.util.find_spec("ray") is None:
        raise UsageError('fleet needs Ray: pip install "odyssey-sync[ray]"')
    import ray

    from ..fleet import prompt_schedule, run_fleet

    env_options: dict[str, Any] = {"prompt": args.prompt, "obs_size": tuple(args.obs_size),
                                   "control_hz": args.hz}
    if args.api_url:
        env_options["api_url"] = args.api_url
    policy = prompt_schedule(args.prompts, every=args.every) if args.prompts else None
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        result = run_fleet(key, args.out, num_actors=args.actors,
                           episodes_per_actor=args.episodes, steps_per_episode=args.steps,
                           policy=policy, max_sessions=args.max_sessions,
                           env_options=env_options, progress=True)
    finally:
        if started_ray:
            ray.shutdown()
    summary = {"run_id": result.run_id, "shards": [str(s) for s in result.shards],
               "observations": result.observations, "seconds": round(result.seconds, 3),
               "peak_sessions": result.peak_sessions, "failures": result.failures}

    def human() -> None:
        out.line(f"fleet {result.run_id}: {result.observations} observations in "
                 f"{len(result.shards)} shards under {args.out} ({result.seconds:.1f} s, "
                 f"at most {result.peak_sessions} sessions at once)")
        for actor, error in sorted(result.failures.items()):
            out.line(f"  actor {actor} failed: {error}")

    out.result(summary, human)
    if result.failures:
        raise CommandFailed(f"{len(result.failures)} actors failed")
    return EXIT_OK
