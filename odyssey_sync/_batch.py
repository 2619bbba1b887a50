"""Simulation jobs at scale: :func:`simulate_batch`.

Submits any number of simulation scripts while never holding more than
``max_queued`` unfinished jobs (the service queues at most 10 per account,
PROTOCOL §17), waits for them, and downloads every output video with
``parallel`` downloads at once, under one progress bar::

    from odyssey_sync import Odyssey
    from odyssey_sync._batch import simulate_batch

    with Odyssey(api_key="ody_...") as client:
        result = simulate_batch(client, "scripts/", download="videos/", parallel=4)
    for item in result.failed:
        print(item.name, item.error)

What runs where: submission and polling on the calling thread, downloads on
``parallel`` threads named ``odyssey-batch-download-N`` (joined before the
call returns). A job that fails does not stop the batch; it is reported in
the result. The command line's ``odyssey-sync simulate --batch DIR --parallel N
--download OUT`` is this function.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._deadline import Deadline
from ._download import progress_bar
from ._scripts import build_simulation_body
from .errors import (
    AccountSuspendedError,
    MonthlyLimitReachedError,
    OdysseyError,
    OdysseyNotFoundError,
    OdysseyTimeoutError,
    OdysseyUsageError,
)
from .types import SimulationJobDetail, SimulationJobStatus

__all__ = [
    "BatchItem",
    "BatchResult",
    "load_scripts",
    "parse_script",
    "prepare_batch",
    "read_script",
    "simulate_batch",
    "simulate_one",
]

#: the service's limit on one account's unfinished simulation jobs
MAX_QUEUED_JOBS = 10
#: tries of a download whose video is not rendered yet, ``poll_interval`` apart
_DOWNLOAD_TRIES = 30
_SPEC_KEYS = ("script", "scripts", "script_url")


@dataclass(frozen=True)
class BatchItem:
    """What became of one script.

    Attributes:
        name: the script's name (file stem, or the key it was given under).
        job_id: the simulation job, or ``None`` when it was never accepted.
        status: ``"completed"``, ``"failed"``, ``"cancelled"`` or ``"rejected"``
            (the service refused the script).
        videos: the MP4 files written (empty without ``download``).
        stream_ids: the job's output streams.
        error: what went wrong, or ``None``.
    """

    name: str
    job_id: str | None
    status: str
    videos: tuple[Path, ...] = ()
    stream_ids: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class BatchResult:
    """The outcome of :func:`simulate_batch`, one item per script, in input order."""

    items: tuple[BatchItem, ...] = field(default_factory=tuple)
    #: most unfinished jobs this batch held at once (never above ``max_queued``)
    peak_queued: int = 0

    @property
    def ok(self) -> bool:
        """Every script completed (and was downloaded when asked)."""
        return all(item.status == "completed" and item.error is None for item in self.items)

    @property
    def failed(self) -> list[BatchItem]:
        """The items that did not complete."""
        return [item for item in self.items if item.status != "completed" or item.error]


def read_script(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one JSON script file as keyword arguments of ``Odyssey.simulate``.

    Accepted: a list of entries (one script), a list of lists (several
    scripts, one job), or an object with exactly one of ``script``,
    ``scripts``, ``script_url``. Non-blocking file read.

    Raises:
        ValueError: unreadable file, invalid JSON, or none of those shapes.
    """
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"cannot read script {str(target)!r}: {reason}") from None
    return parse_script(text, str(target))


def parse_script(text: str, source: str) -> dict[str, Any]:
    """A script's JSON text as keyword arguments of ``Odyssey.simulate``.

    The shapes of :func:`read_script`; ``source`` names the script in errors.

    Raises:
        ValueError: invalid JSON, or none of those shapes.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"script {source!r} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        keys = [k for k in _SPEC_KEYS if k in data]
        if len(keys) != 1:
            raise ValueError(f"script {source!r}: an object must have exactly one of "
                             "'script', 'scripts', 'script_url'")
        return {keys[0]: data[keys[0]]}
    if isinstance(data, list) and data and all(isinstance(s, list) for s in data):
        return {"scripts": data}
    if isinstance(data, list) and data:
        return {"script": data}
    raise ValueError(f"script {source!r} must be a non-empty JSON list of entries")


def load_scripts(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` file of ``directory`` (sorted by name) as ``{stem: spec}``.

    Raises:
        ValueError: not a directory, no script in it, or a bad script (names the file).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"not a directory: {str(folder)!r}")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise ValueError(f"no *.json script in {str(folder)!r}")
    return {f.stem: read_script(f) for f in files}


def simulate_batch(
    client: Any,
    scripts: Mapping[str, Any] | str | os.PathLike[str],
    *,
    download: str | os.PathLike[str] | None = None,
    parallel: int = 4,
    max_queued: int = MAX_QUEUED_JOBS,
    portrait: bool = False,
    timeout: float | None = 3600.0,
    poll_interval: float = 1.0,
    progress: bool = True,
) -> BatchResult:
    """Run many simulation scripts within the queue limit; download every video.

    Blocking, calling thread (plus ``parallel`` download threads, joined
    before returning). At most ``max_queued`` of this batch's jobs are
    unfinished at any time; the next script is submitted when one finishes.
    When the service still answers a submission with a usage error (the
    account's queue is full, e.g. jobs of another program), the script waits
    for a slot and is submitted again. One progress bar on stderr counts
    finished scripts.

    Args:
        client: an :class:`~odyssey_sync.Odyssey` (only its REST methods are used;
            no connection needed).
        scripts: a directory of ``*.json`` scripts (see :func:`load_scripts`), or
            ``{name: spec}`` where a spec is a list of entries or a dict with
            one of ``script`` / ``scripts`` / ``script_url``.
        download: directory for the videos (created if missing): ``NAME.mp4``,
            or ``NAME-K.mp4`` for a job of several scripts. ``None``: no download.
        parallel: downloads at once (>= 1).
        max_queued: unfinished jobs at once (1..10 by the service's rules).
        portrait: 704×1280 videos when True, 1280×704 when False.
        timeout: seconds for the whole batch, or ``None``.
        poll_interval: seconds between status polls of the unfinished jobs.
        progress: show the progress bar.

    Returns:
        :class:`BatchResult`: one :class:`BatchItem` per script, in order.

    Raises:
        TypeError / ValueError: bad arguments or scripts (before any request).
        OdysseyTimeoutError: the batch did not finish within ``timeout`` (jobs
            already accepted keep running on the service).
        OdysseyAuthError, MonthlyLimitReachedError, AccountSuspendedError:
            account problems that would fail every script.
    """
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"parallel must be an int >= 1, not {parallel!r}")
    specs, out_dir = prepare_batch(scripts, download, max_queued=max_queued, portrait=portrait,
                                   poll_interval=poll_interval)
    run = _BatchRun(client, specs, out_dir, max_queued, portrait, Deadline(timeout),
                    float(poll_interval))
    with concurrent.futures.ThreadPoolExecutor(
        parallel, thread_name_prefix="odyssey-batch-download"
    ) as pool, progress_bar(total=len(specs), desc="simulations", unit="script",
                            disable=not progress, file=sys.stderr) as bar:
        try:
            run.drive(pool, bar)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return BatchResult(tuple(run.items[name] for name in specs), run.peak)


def prepare_batch(
    scripts: Mapping[str, Any] | str | os.PathLike[str],
    download: str | os.PathLike[str] | None,
    *,
    max_queued: int,
    portrait: bool,
    poll_interval: float,
) -> tuple[dict[str, dict[str, Any]], Path | None]:
    """Check a batch's arguments and every script; create the download directory.

    Non-blocking apart from reading script files. Returns ``({name: spec}, out_dir)``.

    Raises:
        TypeError / ValueError: the first bad argument or script (named).
    """
    specs = _normalise(scripts)
    if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 1:
        raise ValueError(f"max_queued must be an int >= 1, not {max_queued!r}")
    if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)) or (
            poll_interval <= 0):
        raise ValueError("poll_interval must be > 0 seconds")
    for name, spec in specs.items():  # every rule of the script format, before any request
        try:
            build_simulation_body(**spec, portrait=portrait)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"script {name!r}: {exc}") from None
    out_dir = None if download is None else Path(download)
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"download must be a directory: {str(out_dir)!r}")
        out_dir.mkdir(parents=True, exist_ok=True)
    return specs, out_dir


def simulate_one(
    client: Any,
    name: str,
    spec: dict[str, Any],
    out_dir: Path | None,
    *,
    portrait: bool = False,
    timeout: float | None = 3600.0,
    poll_interval: float = 1.0,
) -> BatchItem:
    """Submit one script, wait for its job and download its videos (blocking).

    The unit of work of a batch spread over several workers (the fleet's Ray
    version of :func:`simulate_batch`); ``spec`` as prepared by
    :func:`prepare_batch`. A refused script or a failed job is returned as
    an item with its error, never raised.

    Raises:
        OdysseyTimeoutError: ``timeout`` ran out.
        OdysseyAuthError, MonthlyLimitReachedError, AccountSuspendedError.
    """
    run = _BatchRun(client, {name: spec}, out_dir, 1, portrait, Deadline(timeout),
                    float(poll_interval))
    try:
        job = client.simulate(**spec, portrait=portrait, timeout=run._left())
    except (MonthlyLimitReachedError, AccountSuspendedError):
        raise
    except (OdysseyError, ValueError, TypeError) as exc:
        if isinstance(exc, OdysseyTimeoutError) and run.deadline.expired:
            raise
        return BatchItem(name, None, "rejected", error=str(exc))
    try:
        done = client.wait_for_simulation(job.job_id, timeout=run._left(),
                                          poll_interval=poll_interval, progress=False)
    except OdysseyError as exc:
        if isinstance(exc, OdysseyTimeoutError):
            raise
        done = client.get_simulate_status(job.job_id, timeout=run._left())
    if done.status != SimulationJobStatus.COMPLETED or out_dir is None:
        return _finished(name, done)
    return run._download(name, done)


class _BatchRun:
    """The state of one :func:`simulate_batch` call (calling thread only)."""

    def __init__(self, client: Any, specs: dict[str, dict[str, Any]], out_dir: Path | None,
                 max_queued: int, portrait: bool, deadline: Deadline, poll: float) -> None:
        self.client = client
        self.specs = specs
        self.out_dir = out_dir
        self.max_queued = max_queued
        self.portrait = portrait
        self.deadline = deadline
        self.poll = poll
        self.items: dict[str, BatchItem] = {}
        self.peak = 0

    def drive(self, pool: concurrent.futures.Executor, bar: Any) -> None:
        waiting = deque(self.specs)
        active: dict[str, str] = {}  # job id -> script name
        downloads: dict[concurrent.futures.Future[BatchItem], str] = {}
        while waiting or active or downloads:
            while waiting and len(active) < self.max_queued:
                name = waiting[0]
                job_id = self._submit(name)
                if job_id is None and name not in self.items:
                    break  # the account's queue is full: wait for a job to finish
                waiting.popleft()
                if job_id is None:
                    bar.update(1)  # rejected: recorded in self.items
                else:
                    active[job_id] = name
                    self.peak = max(self.peak, len(active))
            for job_id, name in list(active.items()):
                job = self.client.get_simulate_status(job_id, timeout=self._left())
                if not SimulationJobStatus(job.status).is_final:
                    continue
                del active[job_id]
                if job.status == SimulationJobStatus.COMPLETED and self.out_dir is not None:
                    downloads[pool.submit(self._download, name, job)] = name
                else:
                    self.items[name] = _finished(name, job)
                    bar.update(1)
            for fut in [f for f in downloads if f.done()]:
                self.items[downloads.pop(fut)] = fut.result()
                bar.update(1)
            bar.set_postfix_str(f"queued={len(active)} downloading={len(downloads)}")
            if not (waiting or active or downloads):
                break
            if self.deadline.expired:
                raise OdysseyTimeoutError(
                    f"simulation batch not finished within {self.deadline.timeout:g} s: "
                    f"{len(waiting)} waiting, {len(active)} running, {len(downloads)} downloading")
            time.sleep(self.deadline.clamp(self.poll) or 0.0)

    def _left(self) -> float | None:
        left = self.deadline.remaining()
        if left is not None and left <= 0:
            raise OdysseyTimeoutError(
                f"simulation batch not finished within {self.deadline.timeout:g} s")
        return left

    def _submit(self, name: str) -> str | None:
        """Submit one script; its job id, or None (queue full, or rejected and recorded)."""
        try:
            job = self.client.simulate(**self.specs[name], portrait=self.portrait,
                                       timeout=self._left())
        except (MonthlyLimitReachedError, AccountSuspendedError):
            raise
        except OdysseyUsageError:
            return None  # the account's queue is full: retry once a job finished
        except (OdysseyError, ValueError, TypeError) as exc:
            if isinstance(exc, OdysseyTimeoutError) and self.deadline.expired:
                raise
            self.items[name] = BatchItem(name, None, "rejected", error=str(exc))
            return None
        job_id: str = job.job_id
        return job_id

    def _download(self, name: str, job: SimulationJobDetail) -> BatchItem:
        """Download a completed job's videos (a download thread)."""
        assert self.out_dir is not None
        ids = tuple(s.stream_id for s in job.streams)
        videos: list[Path] = []
        base = _safe_name(name)
        try:
            for k, stream_id in enumerate(ids):
                target = self.out_dir / (f"{base}.mp4" if len(ids) == 1 else f"{base}-{k}.mp4")
                videos.append(self._download_one(stream_id, target))
        except OdysseyError as exc:
            return BatchItem(name, job.job_id, "completed", tuple(videos), ids, error=str(exc))
        return BatchItem(name, job.job_id, "completed", tuple(videos), ids)

    def _download_one(self, stream_id: str, target: Path) -> Path:
        for attempt in range(_DOWNLOAD_TRIES):
            try:
                path: Path = self.client.download_recording(
                    stream_id, target, progress=False, timeout=self._left())
                return path
            except OdysseyNotFoundError:
                # The video of a finished job may still be rendering.
                if attempt == _DOWNLOAD_TRIES - 1 or self.deadline.expired:
                    raise
                time.sleep(self.deadline.clamp(self.poll) or 0.0)
        raise AssertionError("unreachable")


def _finished(name: str, job: SimulationJobDetail) -> BatchItem:
    status = SimulationJobStatus(job.status).value
    ids = tuple(s.stream_id for s in job.streams)
    error = None if status == "completed" else (job.error_message or status)
    return BatchItem(name, job.job_id, status, (), ids, error)


def _normalise(scripts: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    if isinstance(scripts, (str, os.PathLike)):
        return load_scripts(scripts)
    if not isinstance(scripts, Mapping):
        raise TypeError("scripts must be a directory or a mapping {name: script}")
    if not scripts:
        raise ValueError("no scripts given")
    specs: dict[str, dict[str, Any]] = {}
    for name, spec in scripts.items():
        if not isinstance(name, str) or not name:
            raise TypeError("script names must be non-empty strings")
        if isinstance(spec, list):
            specs[name] = {"script": spec}
        elif isinstance(spec, Mapping) and sum(k in spec for k in _SPEC_KEYS) == 1:
            specs[name] = {k: spec[k] for k in _SPEC_KEYS if k in spec}
        else:
            raise ValueError(f"script {name!r}: give a list of entries or a dict with one of "
                             "'script', 'scripts', 'script_url'")
    safe = [_safe_name(n) for n in specs]
    if len(set(safe)) != len(safe):
        raise ValueError("two script names map to the same file name")
    return specs


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "script"
