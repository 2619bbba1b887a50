"""Many Odyssey sessions as Ray actors writing rollouts: :func:`run_fleet`.

Needs the ``ray`` extra (``pip install "odyssey-sync[ray]"``: Ray, pyarrow and
Gymnasium). A fleet is ``num_actors`` rollout actors, each owning one
:class:`~odyssey_sync.gym.OdysseyEnv`, driven by your policy (or a list of
prompts on a schedule) and writing one Parquet shard per episode::

    import ray
    from odyssey_sync.fleet import prompt_schedule, read_rollouts, run_fleet

    ray.init()                      # or ray.init(address="auto") on a cluster
    result = run_fleet(
        "ody_...", "rollouts/", num_actors=20, max_sessions=5,
        steps_per_episode=200, policy=prompt_schedule(["look left", "look right"], every=20),
        env_options={"prompt": "A city street", "obs_size": (128, 128), "control_hz": 10},
    )
    table = read_rollouts("rollouts/")   # or ray.data.read_parquet("rollouts/")

Scheduling. The account's concurrent-stream limit (5 on the free tier) is
kept by placing work: the driver starts an actor only while fewer than
``max_sessions`` actors are running (Ray's ``ray.wait`` pattern for bounding
work in flight); the others wait their turn, and each actor process ends
when its rollouts are written. So 20 actors under a limit of 5 never hold
more than 5 sessions, whatever resources the cluster has.

Failures. Actors are created with ``max_restarts`` and ``max_task_retries``:
when an actor's process dies, Ray restarts it and runs its rollouts again
(waiting up to two minutes for a stream slot, since the service keeps a dead
session's slot until it times it out).
Episodes whose shard already exists are skipped, the interrupted one is
recorded again from a new stream. A shard is written to a hidden temporary
name (``.NAME.parquet.tmp-PID``, ignored by pyarrow and Ray Data) and renamed
into place, so a reader never sees half a shard; a restarted actor removes
the temporaries of its predecessor.

Shards: ``{out_dir}/{run_id}-a{actor:04d}-e{episode:05d}.parquet``, one row
per observation (step 0 is the reset), columns :data:`ROLLOUT_SCHEMA`;
the observation shape is also in the schema metadata (``odyssey_sync.obs_shape``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
except ModuleNotFoundError as exc:  # pragma: no cover - only without the extra
    raise ModuleNotFoundError(
        f"odyssey_sync.fleet needs Ray and pyarrow ({exc}); pip install \"odyssey-sync[ray]\"",
        name=exc.name) from exc

from ._batch import MAX_QUEUED_JOBS, BatchItem, BatchResult, prepare_batch, simulate_one
from ._download import progress_bar
from .errors import ConcurrentLimitReachedError

__all__ = [
    "ROLLOUT_SCHEMA",
    "FleetResult",
    "RolloutActor",
    "observations",
    "prompt_schedule",
    "read_rollouts",
    "run_fleet",
    "simulate_batch_on_ray",
]

#: One row per observation; row 0 of an episode is the reset (``action`` null).
ROLLOUT_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),     # one run_fleet() call
    pa.field("episode_id", pa.string(), nullable=False),  # "{run_id}-a{actor}-e{episode}"
    pa.field("actor", pa.int32(), nullable=False),
    pa.field("episode", pa.int32(), nullable=False),
    pa.field("step", pa.int32(), nullable=False),         # 0 = reset, k = k-th step
    pa.field("obs", pa.binary(), nullable=False),         # H*W*3 bytes, RGB uint8, row-major
    pa.field("action", pa.string()),                      # JSON of the action that led here
    pa.field("prompt", pa.string()),                      # interaction sent by that action
    pa.field("ack", pa.string()),                         # acknowledged prompt since last row
    pa.field("reward", pa.float64(), nullable=False),
    pa.field("terminated", pa.bool_(), nullable=False),
    pa.field("truncated", pa.bool_(), nullable=False),
    pa.field("stream_id", pa.string()),
    pa.field("frame_seq", pa.int64(), nullable=False),
    pa.field("frame_timestamp_ms", pa.int64(), nullable=False),
    pa.field("frame_age_s", pa.float64(), nullable=False),  # age of the frame at return
    pa.field("late_s", pa.float64(), nullable=False),       # how late the step was called
    pa.field("frames_skipped", pa.int32(), nullable=False),
    pa.field("wall_time", pa.float64(), nullable=False),    # time.time() at return
])

Policy = Callable[[Any, dict[str, Any]], Any]

#: how long an actor waits for a free stream slot (a crashed session still held)
_LIMIT_WAIT = 120.0
_LIMIT_RETRY = 2.0


@dataclass(frozen=True)
class FleetResult:
    """What :func:`run_fleet` wrote.

    Attributes:
        run_id: the prefix of this run's shards and episode ids.
        shards: the Parquet files, sorted.
        observations: rows written (all shards).
        seconds: wall time of the run.
        peak_sessions: most actors running at once (never above ``max_sessions``).
        failures: ``{actor index: error}`` of actors that failed beyond their retries.
    """

    run_id: str
    shards: tuple[Path, ...]
    observations: int
    seconds: float
    peak_sessions: int
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def observations_per_second(self) -> float:
        """Observations written per second of the whole run."""
        return self.observations / self.seconds if self.seconds > 0 else 0.0


def prompt_schedule(prompts: Sequence[str], every: int = 20) -> Policy:
    """A policy sending ``prompts`` in turn, one every ``every`` steps (a no-op between).

    For the default ``Text`` action space. Picklable, so Ray can ship it.
    """
    if isinstance(prompts, str) or not prompts or not all(
            isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError("every must be an int >= 1")
    return _PromptSchedule(tuple(prompts), every)


class _PromptSchedule:
    def __init__(self, prompts: tuple[str, ...], every: int) -> None:
        self.prompts = prompts
        self.every = every

    def __call__(self, obs: Any, info: dict[str, Any]) -> str:
        step = int(info["step"])
        if step % self.every:
            return ""
        return self.prompts[(step // self.every) % len(self.prompts)]


class RolloutActor:
    """One session writing rollouts (the class behind each Ray actor).

    Created by :func:`run_fleet` as ``ray.remote(RolloutActor)``; usable
    directly (without Ray) for a single process.
    """

    def __init__(self, index: int, api_key: str, env_options: dict[str, Any],
                 out_dir: str, run_id: str) -> None:
        self.index = index
        self.api_key = api_key
        self.env_options = dict(env_options)
        self.out_dir = Path(out_dir)
        self.run_id = run_id
        self.recorded = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A predecessor that died mid-write left a temporary: never a shard.
        for stale in self.out_dir.glob(f".{self._prefix()}-e*.parquet.tmp-*"):
            stale.unlink(missing_ok=True)

    def _prefix(self) -> str:
        return f"{self.run_id}-a{self.index:04d}"

    def progress(self) -> int:
        """Observations recorded so far by this actor (non-blocking)."""
        return self.recorded

    def run(self, episodes: int, steps: int, policy: Policy | None) -> list[str]:
        """Record ``episodes`` episodes of at most ``steps`` steps; return the shard paths.

        Blocking (the session runs for the whole call). Episodes whose shard
        exists (written before a restart) are skipped.
        """
        from .gym import OdysseyEnv

        shards: list[str] = []
        env: OdysseyEnv | None = None
        try:
            for episode in range(episodes):
                shard = self.out_dir / f"{self._prefix()}-e{episode:05d}.parquet"
                if not shard.exists():
                    if env is None:
                        env = OdysseyEnv(self.api_key, **self.env_options)
                    rows = self._episode(env, episode, steps, policy)
                    _write_shard(rows, shard, env.observation_space.shape)
                shards.append(str(shard))
        finally:
            if env is not None:
                env.close()
        return shards

    def _episode(self, env: Any, episode: int, steps: int,
                 policy: Policy | None) -> dict[str, list[Any]]:
        rows: dict[str, list[Any]] = {name: [] for name in ROLLOUT_SCHEMA.names}
        episode_id = f"{self._prefix()}-e{episode:05d}"
        obs, info = _reset_within_limit(env, episode)
        self._add(rows, episode_id, episode, obs, None, 0.0, False, False, info)
        for _ in range(steps):
            context = {**info, "actor": self.index, "episode": episode}
            action = policy(obs, context) if policy is not None else _no_op(env.action_space)
            obs, reward, terminated, truncated, info = env.step(action)
            self._add(rows, episode_id, episode, obs, action, float(reward), bool(terminated),
                      bool(truncated), info)
            if terminated or truncated:
                break
        return rows

    def _add(self, rows: dict[str, list[Any]], episode_id: str, episode: int, obs: Any,
             action: Any, reward: float, terminated: bool, truncated: bool,
             info: dict[str, Any]) -> None:
        values = {
            "run_id": self.run_id, "episode_id": episode_id, "actor": self.index,
            "episode": episode, "step": info["step"], "obs": np.ascontiguousarray(obs).tobytes(),
            "action": None if action is None else json.dumps(_plain(action)),
            "prompt": info["prompt"], "ack": info["ack"], "reward": reward,
            "terminated": terminated, "truncated": truncated, "stream_id": info["stream_id"],
            "frame_seq": info["frame_seq"], "frame_timestamp_ms": info["frame_timestamp_ms"],
            "frame_age_s": info["frame_age"], "late_s": info["late"],
            "frames_skipped": info["frames_skipped"], "wall_time": time.time(),
        }
        for name, value in values.items():
            rows[name].append(value)
        self.recorded += 1


def run_fleet(
    api_key: str,
    out_dir: str | os.PathLike[str],
    *,
    num_actors: int = 4,
    episodes_per_actor: int = 1,
    steps_per_episode: int = 100,
    policy: Policy | None = None,
    max_sessions: int = 5,
    env_options: dict[str, Any] | None = None,
    actor_options: dict[str, Any] | None = None,
    max_restarts: int = 2,
    run_id: str | None = None,
    progress: bool = True,
    timeout: float | None = None,
) -> FleetResult:
    """Run ``num_actors`` rollout actors on Ray, at most ``max_sessions`` at once.

    Blocking, the calling (driver) thread; a progress bar of observations
    written on stderr. Uses the running Ray runtime (``ray.init()`` is called
    with defaults when there is none, as Ray itself would on first use).

    Args:
        api_key: the account's API key (handed to each actor).
        out_dir: where the shards go (created; on a cluster, storage every
            node can write, e.g. a shared file system).
        num_actors: sessions to run in total (each one actor, one env).
        episodes_per_actor: episodes each actor records (one shard each).
        steps_per_episode: steps of each episode (it ends earlier when the
            environment terminates or truncates).
        policy: ``policy(obs, info) -> action`` (``info`` is the env's, plus
            ``actor`` and ``episode``); picklable. ``None``: no-op actions.
            :func:`prompt_schedule` gives a schedule of prompts.
        max_sessions: the account's concurrent-stream limit (or less).
        env_options: keyword arguments of :class:`~odyssey_sync.gym.OdysseyEnv`
            (``api_url``, ``prompt``, ``obs_size``, ``control_hz``, ``prompts``...).
        actor_options: extra ``ray.remote`` options of each actor
            (``num_cpus`` defaults to 1: decoding is most of a session's cost).
        max_restarts: restarts of an actor whose process died (its rollouts
            are retried as often).
        run_id: shard prefix (default: a fresh random id).
        timeout: seconds for the whole run, or ``None``.

    Returns:
        :class:`FleetResult`.

    Raises:
        TypeError / ValueError: bad arguments (before any actor starts).
        TimeoutError: ``timeout`` ran out (running actors are killed).
    """
    for label, value, low in (("num_actors", num_actors, 1), ("max_sessions", max_sessions, 1),
                              ("episodes_per_actor", episodes_per_actor, 1),
                              ("steps_per_episode", steps_per_episode, 0),
                              ("max_restarts", max_restarts, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an int >= {low}, not {value!r}")
    if not isinstance(api_key, str) or not api_key:
        raise TypeError("api_key must be a non-empty str")
    if policy is not None and not callable(policy):
        raise TypeError("policy must be callable or None")
    options = dict(env_options or {})
    from gymnasium import spaces

    from .gym import OdysseyEnv

    probe = OdysseyEnv(api_key, **options)  # every env argument checked here, no I/O
    probe.close()
    if policy is None and not isinstance(probe.action_space, (spaces.Text, spaces.Discrete)):
        raise ValueError("give a policy: the action space has no no-op action")
    run = run_id or uuid.uuid4().hex[:8]
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init()
    remote_options: dict[str, Any] = {"num_cpus": 1, "max_concurrency": 2}
    remote_options.update(actor_options or {})
    remote_options.update(max_restarts=max_restarts, max_task_retries=max_restarts)
    actor_class = ray.remote(RolloutActor).options(**remote_options)

    started = time.monotonic()
    waiting = deque(range(num_actors))
    running: dict[Any, tuple[int, Any]] = {}  # run() ref -> (index, actor handle)
    shards: list[str] = []
    failed: dict[int, str] = {}
    done_rows = peak = 0
    total = num_actors * episodes_per_actor * (steps_per_episode + 1)
    with progress_bar(total=total, desc="rollouts", unit="obs", disable=not progress,
                      file=sys.stderr) as bar:
        try:
            while waiting or running:
                while waiting and len(running) < max_sessions:
                    index = waiting.popleft()
                    actor: Any = actor_class.remote(index, api_key, options, str(folder), run)
                    ref = actor.run.remote(episodes_per_actor, steps_per_episode, policy)
                    running[ref] = (index, actor)
                    peak = max(peak, len(running))
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    index, actor = running.pop(ref)
                    try:
                        written = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        failed[index] = str(exc)  # beyond its retries: the others go on
                    else:
                        shards.extend(written)
                        done_rows += _rows(written)
                    ray.kill(actor)  # its session is closed; free the process
                bar.n = done_rows + _in_flight(running)
                bar.refresh()
                if timeout is not None and time.monotonic() - started > timeout:
                    raise TimeoutError(f"fleet not finished within {timeout:g} s")
        finally:
            for _, actor in running.values():
                ray.kill(actor)
    paths = tuple(sorted(Path(s) for s in shards))
    return FleetResult(run, paths, sum(_rows([str(p)]) for p in paths),
                       time.monotonic() - started, peak, dict(sorted(failed.items())))


def simulate_batch_on_ray(
    api_key: str,
    scripts: Mapping[str, Any] | str | os.PathLike[str],
    *,
    api_url: str | None = None,
    download: str | os.PathLike[str] | None = None,
    max_queued: int = MAX_QUEUED_JOBS,
    portrait: bool = False,
    timeout: float | None = 3600.0,
    poll_interval: float = 1.0,
    progress: bool = True,
) -> BatchResult:
    """:func:`~odyssey_sync._batch.simulate_batch` spread over a Ray cluster.

    Blocking, the driver thread. Each script is one Ray task (``num_cpus=0``:
    it mostly waits) that submits it, waits for the job and downloads its
    videos; at most ``max_queued`` tasks run at once, which keeps the
    account's queue limit (10 simulation jobs). Downloads run in parallel on
    whichever nodes run the tasks, so ``download`` must be storage they all
    see. One progress bar counts finished scripts.

    Raises:
        TypeError / ValueError: bad arguments or scripts (before any task starts).
        TimeoutError: ``timeout`` ran out (running tasks are cancelled).
    """
    specs, out_dir = prepare_batch(scripts, download, max_queued=max_queued, portrait=portrait,
                                   poll_interval=poll_interval)
    if not isinstance(api_key, str) or not api_key:
        raise TypeError("api_key must be a non-empty str")
    if not ray.is_initialized():
        ray.init()
    task = ray.remote(_simulate_task).options(num_cpus=0, max_retries=0)
    client_options = {} if api_url is None else {"api_url": api_url}
    started = time.monotonic()
    waiting = deque(specs)
    running: dict[Any, str] = {}
    items: dict[str, BatchItem] = {}
    peak = 0
    with progress_bar(total=len(specs), desc="simulations", unit="script",
                      disable=not progress, file=sys.stderr) as bar:
        try:
            while waiting or running:
                while waiting and len(running) < max_queued:
                    name = waiting.popleft()
                    running[task.remote(api_key, client_options, name, specs[name], out_dir,
                                        portrait, timeout, poll_interval)] = name
                    peak = max(peak, len(running))
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    name = running.pop(ref)
                    try:
                        items[name] = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        items[name] = BatchItem(name, None, "failed", error=str(exc))
                    bar.update(1)
                if timeout is not None and time.monotonic() - started > timeout:
                    raise TimeoutError(f"simulation batch not finished within {timeout:g} s")
        finally:
            for ref in running:
                ray.cancel(ref)
    return BatchResult(tuple(items[name] for name in specs), peak)


def _simulate_task(api_key: str, client_options: dict[str, Any], name: str,
                   spec: dict[str, Any], out_dir: Path | None, portrait: bool,
                   timeout: float | None, poll_interval: float) -> BatchItem:
    """One script on a Ray worker: its own REST client, closed at the end."""
    from .client import Odyssey

    with Odyssey(api_key, **client_options) as client:
        return simulate_one(client, name, spec, out_dir, portrait=portrait, timeout=timeout,
                            poll_interval=poll_interval)


def read_rollouts(path: str | os.PathLike[str]) -> pa.Table:
    """Read a fleet's shards (a directory or one file) as one pyarrow Table.

    Blocking (reads the files). Temporaries of an interrupted write are never
    read (hidden names). The schema is :data:`ROLLOUT_SCHEMA`, with the
    observation shape in its metadata (see :func:`observations`).

    Raises:
        ValueError: the files are not rollouts of this schema.

    ``ray.data.read_parquet(path)`` reads the same files (needs ``ray[data]``).
    """
    table: pa.Table = pq.read_table(path)
    if not table.schema.remove_metadata().equals(ROLLOUT_SCHEMA):
        raise ValueError(f"{str(path)!r} does not hold odyssey_sync rollouts (schema differs)")
    return table


def observations(table: pa.Table) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The ``obs`` column as an ``N×H×W×3`` uint8 array (shape from the metadata)."""
    meta = table.schema.metadata or {}
    raw = meta.get(b"odyssey_sync.obs_shape")
    if raw is None:
        raise ValueError("the table has no odyssey_sync.obs_shape metadata")
    shape = tuple(int(v) for v in raw.decode().split(","))
    column = table.column("obs").combine_chunks()
    flat = np.frombuffer(column.buffers()[2], np.uint8) if len(column) else np.empty(0, np.uint8)
    offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset:][: len(column) + 1]
    data = flat[offsets[0]:offsets[-1]]
    return data.reshape((len(column), *shape))


def _write_shard(rows: dict[str, list[Any]], shard: Path, shape: Any) -> None:
    """Write ``rows`` to ``shard`` atomically: a hidden temporary, then a rename."""
    meta = {b"odyssey_sync.obs_shape": ",".join(str(v) for v in shape).encode()}
    table = pa.Table.from_pydict(rows, schema=ROLLOUT_SCHEMA.with_metadata(meta))
    tmp = shard.with_name(f".{shard.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, shard)
    finally:
        tmp.unlink(missing_ok=True)


def _rows(paths: list[str]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def _in_flight(running: dict[Any, tuple[int, Any]]) -> int:
    """Observations recorded by the running actors (0 for one that is restarting)."""
    refs = [actor.progress.remote() for _, actor in running.values()]
    counts = 0
    for ref in refs:
        with contextlib.suppress(ray.exceptions.RayError):
            counts += int(ray.get(ref, timeout=2.0))
    return counts


def _reset_within_limit(env: Any, seed: int) -> tuple[Any, dict[str, Any]]:
    """``env.reset``, waiting while the account is at its concurrent-stream limit.

    After an actor crash, the service keeps the dead session's slot until its
    own clean-up times it out (PROTOCOL §17), so the restarted actor can find
    the account full although the fleet runs no more than ``max_sessions``.
    """
    waited = 0.0
    while True:
        try:
            result: tuple[Any, dict[str, Any]] = env.reset(seed=seed)
            return result
        except ConcurrentLimitReachedError:
            if waited >= _LIMIT_WAIT:
                raise
            time.sleep(_LIMIT_RETRY)
            waited += _LIMIT_RETRY


def _no_op(space: Any) -> Any:
    from gymnasium import spaces

    return "" if isinstance(space, spaces.Text) else 0


def _plain(action: Any) -> Any:
    if isinstance(action, np.ndarray):
        return action.tolist()
    if isinstance(action, np.generic):
        return action.item()
    return action
