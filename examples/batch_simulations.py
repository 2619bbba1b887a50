"""Run several scripted simulations, wait for them, download the videos.

A simulation is an offline job: the script (start / interact / end at given
times) runs on the server and produces one recording per script. This example
submits one batch job per scenario, waits for all of them, then saves each
output video as MP4.

Runs against the embedded local server by default; set ODYSSEY_API_KEY (and
optionally ODYSSEY_API_URL) to use the real service::

    python examples/batch_simulations.py --out sims/
    python examples/batch_simulations.py --out sims/ --small --length 2   # tests
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import open_client

from odyssey_sync.errors import OdysseyStreamError

SCENARIOS = {
    "cat": ["A cat asleep on a windowsill", "The cat wakes up", "The cat stretches"],
    "harbour": ["A fishing harbour at dawn", "A boat leaves the harbour", "Gulls circle overhead"],
    "forest": ["A misty pine forest", "A deer steps onto the path", "Rain starts to fall"],
}


def script_for(prompts: list[str], length_s: float) -> list[dict[str, object]]:
    """start at 0, interactions evenly spaced, end at ``length_s``."""
    step = int(length_s * 1000 / len(prompts))
    entries: list[dict[str, object]] = [{"timestamp_ms": 0, "start": {"prompt": prompts[0]}}]
    entries += [
        {"timestamp_ms": i * step, "interact": {"prompt": p}} for i, p in enumerate(prompts[1:], 1)
    ]
    entries.append({"timestamp_ms": int(length_s * 1000), "end": {}})
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("simulations"), help="output directory")
    parser.add_argument("--length", type=float, default=9.0, help="seconds of video per script")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait per job")
    parser.add_argument("--small", action="store_true", help="small frames (local server only)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with open_client(small=args.small) as client:
        jobs = {}
        for name, prompts in SCENARIOS.items():
            job = client.simulate(script=script_for(prompts, args.length), portrait=False)
            jobs[name] = job.job_id
            print(f"{name}: submitted job {job.job_id} ({job.status})")

        failures = 0
        for name, job_id in jobs.items():
            try:
                job = client.wait_for_simulation(job_id, timeout=args.timeout, progress=False)
            except OdysseyStreamError as exc:  # the job failed or was cancelled
                print(f"{name}: {exc.reason}: {exc.message}")
                failures += 1
                continue
            print(f"{name}: {job.status}")
            for stream in job.streams:
                target = args.out / f"{name}-{stream.stream_id}.mp4"
                client.download_recording(stream.stream_id, target, progress=False)
                print(f"  saved {target} ({target.stat().st_size} bytes)")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
