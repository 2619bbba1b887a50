"""run_fleet: rollout actors on a local Ray runtime against the local server."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pytest.importorskip("gymnasium")

from odyssey_sync.client import Odyssey  # noqa: E402
from odyssey_sync.fleet import (  # noqa: E402
    ROLLOUT_SCHEMA,
    RolloutActor,
    observations,
    prompt_schedule,
    read_rollouts,
    run_fleet,
    simulate_batch_on_ray,
)
from odyssey_sync.local import LocalOdyssey  # noqa: E402
from tests.support import (  # noqa: E402
    ActiveJobWatcher,
    server_state,
    simulation_script,
    warm_up,
    warm_up_simulations,
)

pytestmark = pytest.mark.e2e

SIZE = (320, 176)


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)

    @ray.remote
    def ping() -> int:
        return 1

    ray.get(ping.remote())  # Ray's driver-side threads start here, before any test
    # Ray workers cannot import a test module: ship this module's policies by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOdyssey]:
    # One slot more than the fleet may use: the limit under test is the fleet's own.
    # The key may hold 2 sessions, as the fleet; a crashed actor's session keeps
    # its slot for the (short) stale timeout, as the service does.
    with LocalOdyssey(size=SIZE, fps=10, capacity=3, max_concurrent_per_key=2,
                      stale_session_timeout=2.0, recordings=False,
                      data_dir=tmp_path_factory.mktemp("fleet")) as srv:
        warm_up(srv)
        warm_up_simulations(srv)
        yield srv


class SessionWatcher:
    """Samples the server's live sessions on a thread of its own (joined on exit).

    A crashed client's session lingers as *stale* until the server's timeout:
    it holds a slot but no process runs it, so it is not counted as live.
    """

    def __init__(self, server: LocalOdyssey) -> None:
        self.server = server
        self.peak = 0
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-session-watcher")

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            allocations = server_state(self.server)["allocations"]
            live = [a for a in allocations if a["stale_seconds"] is None]
            self.peak = max(self.peak, len(live))
            self.samples += 1

    def __enter__(self) -> SessionWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


class CrashOnce:
    """A policy that kills its actor's process once (the first time actor 1 reaches step 3)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)
        self.schedule = prompt_schedule(["pan left", "pan right"], every=2)

    def __call__(self, obs: Any, info: dict[str, Any]) -> str:
        if info["actor"] == 1 and info["step"] == 3 and not os.path.exists(self.marker):
            Path(self.marker).write_text("crashed")
            os._exit(1)  # the actor's process dies mid-episode
        action: str = self.schedule(obs, info)
        return action


def test_fleet_keeps_the_session_limit_writes_shards_and_survives_a_killed_actor(
    ray_runtime: None, server: LocalOdyssey, tmp_path: Path
) -> None:
    out = tmp_path / "rollouts"
    marker = tmp_path / "crashed"
    with SessionWatcher(server) as watcher:
        result = run_fleet(
            server.api_key, out, num_actors=3, episodes_per_actor=2, steps_per_episode=5,
            max_sessions=2, policy=CrashOnce(marker), run_id="t1",
            env_options={"api_url": server.url, "obs_size": SIZE, "control_hz": 10,
                         "prompt": "A warehouse aisle"},
            actor_options={"num_cpus": 0}, max_restarts=2, progress=False, timeout=240,
        )
    assert result.failures == {}
    assert marker.exists()  # actor 1 really died once
    assert watcher.samples > 0 and 1 <= watcher.peak <= 2
    assert result.peak_sessions == 2
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"t1-a{a:04d}-e{e:05d}.parquet" for a in range(3) for e in range(2)]
    assert [p.name for p in result.shards] == names
    table = read_rollouts(out)
    assert table.schema.remove_metadata() == ROLLOUT_SCHEMA
    assert table.num_rows == result.observations == 3 * 2 * 6
    obs = observations(table)
    assert obs.shape == (table.num_rows, SIZE[1], SIZE[0], 3) and obs.any()
    rows = table.to_pylist()
    for episode_id in {r["episode_id"] for r in rows}:
        episode = [r for r in rows if r["episode_id"] == episode_id]
        assert [r["step"] for r in episode] == list(range(6))
        assert episode[0]["action"] is None and all(r["action"] for r in episode[1:])
        assert len({r["stream_id"] for r in episode}) == 1  # the redone episode: a new stream
    sent = [r["prompt"] for r in rows if r["prompt"]]
    assert set(sent) == {"pan left", "pan right"}


def test_rollout_actor_without_ray_and_bad_arguments(server: LocalOdyssey, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        run_fleet(server.api_key, tmp_path, max_sessions=0)
    with pytest.raises(ValueError, match="control_hz"):
        run_fleet(server.api_key, tmp_path, env_options={"control_hz": -1})
    # Stale temporaries of a dead predecessor are removed; a finished shard is kept.
    stale = tmp_path / ".t2-a0000-e00000.parquet.tmp-123"
    stale.write_bytes(b"half")
    actor = RolloutActor(0, server.api_key, {"api_url": server.url, "obs_size": SIZE,
                                             "control_hz": 20}, str(tmp_path), "t2")
    assert not stale.exists()
    shards = actor.run(1, 3, None)
    table = read_rollouts(shards[0])
    assert table.num_rows == 4 and actor.progress() == 4
    assert actor.run(1, 3, None) == shards and actor.progress() == 4  # skipped: exists


def test_batch_simulations_through_ray_keep_the_queue_limit(
    ray_runtime: None, server: LocalOdyssey, tmp_path: Path
) -> None:
    scripts = {f"clip{i}": simulation_script(f"clip {i}") for i in range(4)}
    scripts["refused"] = {"script_url": "https://127.0.0.1:9/missing.json"}
    with Odyssey(server.api_key, api_url=server.url) as client, ActiveJobWatcher(client) as jobs:
        result = simulate_batch_on_ray(server.api_key, scripts, api_url=server.url,
                                       download=tmp_path, max_queued=2, poll_interval=0.1,
                                       timeout=120, progress=False)
    assert 1 <= jobs.peak <= 2
    assert [item.name for item in result.items] == list(scripts)
    assert result.peak_queued == 2
    assert [item.name for item in result.failed] == ["refused"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"clip{i}.mp4" for i in range(4)]
