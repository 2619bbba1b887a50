"""Stored-video commands: ``simulate``, ``recordings list|get|download`` and
``simulations list|get|cancel``.

Each runs on the calling thread over the SDK's REST calls and returns an exit
code. ``simulate --wait`` interrupted with Ctrl-C leaves the job running on the
server and says how to check on it or cancel it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._batch import load_scripts, parse_script, read_script, simulate_batch
from ..client import Odyssey
from ..types import (
    SimulationJobDetail,
    SimulationJobsList,
    SimulationJobStatus,
    StreamRecordingInfo,
    StreamRecordingsList,
)
from .inputs import check_out_path, open_client, safe_file_name
from .output import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROG,
    CommandFailed,
    Output,
    UsageError,
    to_jsonable,
)

__all__ = [
    "cmd_recordings_download",
    "cmd_recordings_get",
    "cmd_recordings_list",
    "cmd_simulate",
    "cmd_simulations_cancel",
    "cmd_simulations_get",
    "cmd_simulations_list",
    "load_script",
]

_Item = TypeVar("_Item")


def load_script(path: Path) -> dict[str, Any]:
    """Read a simulation script file (``-`` = stdin) as ``simulate()`` keyword arguments.

    The shapes of :func:`odyssey_sync._batch.parse_script`. Blocking (file
    read). Raises :class:`UsageError` for an unreadable file, invalid JSON or
    another shape; the entries themselves are checked by the SDK.
    """
    try:
        if str(path) == "-":
            return parse_script(sys.stdin.read(), "-")
        return read_script(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _download_streams(
    client: Odyssey, job: SimulationJobDetail, directory: Path, out: Output
) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    saved: list[str] = []
    for stream in job.streams:
        target = directory / safe_file_name(stream.stream_id)
        path = client.download_recording(stream.stream_id, target, progress=True)
        saved.append(str(path))
        out.info(f"downloaded {saved[-1]}")
    return saved


def _simulate_batch(args: argparse.Namespace, out: Output) -> int:
    """``simulate --batch DIR [--parallel N] [--download OUT]``: every script, queue-limited."""
    try:
        load_scripts(args.batch)  # bad scripts are usage errors, before any request
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with open_client(args) as client:
        result = simulate_batch(client, args.batch, download=args.download,
                                parallel=args.parallel, portrait=args.portrait,
                                timeout=args.timeout, progress=True)
    items = [to_jsonable(item) for item in result.items]

    def human() -> None:
        for item in result.items:
            detail = item.error or ", ".join(str(v) for v in item.videos) or ""
            out.line(f"{item.name}: {item.status}  {item.job_id or ''}  {detail}".rstrip())
        out.line(f"{len(result.items) - len(result.failed)} of {len(result.items)} completed")

    out.result({"items": items, "ok": result.ok}, human)
    if not result.ok:
        raise CommandFailed(f"{len(result.failed)} of {len(result.items)} scripts failed")
    return EXIT_OK


def _still_running(job_id: str, out: Output) -> int:
    out.info(f"{PROG}: interrupted; simulation job {job_id} keeps running on the server.")
    out.info(f"  check it:  {PROG} simulations get {job_id}")
    out.info(f"  cancel it: {PROG} simulations cancel {job_id}")
    out.event({"event": "interrupted", "job_id": job_id})
    return EXIT_INTERRUPTED


def cmd_simulate(args: argparse.Namespace, out: Output) -> int:
    """``simulate SCRIPT.json [--wait] [--download DIR]`` or ``simulate --batch DIR``."""
    if (args.script is None) == (args.batch is None):
        raise UsageError("give either SCRIPT.json or --batch DIR")
    if args.batch is not None:
        return _simulate_batch(args, out)
    spec = load_script(args.script)
    if args.download is not None and args.download.exists() and not args.download.is_dir():
        raise UsageError(f"--download must be a directory: {str(args.download)!r}")
    with open_client(args) as client:
        job: Any = client.simulate(**spec, portrait=args.portrait)
        out.info(f"simulation job {job.job_id}: {job.status}")
        if args.wait or args.download is not None:
            # Raises OdysseyStreamError when the job fails or is cancelled;
            # the progress line goes to stderr, so --json output stays clean.
            try:
                job = client.wait_for_simulation(job.job_id, timeout=args.timeout,
                                                 progress=True)
            except KeyboardInterrupt:
                return _still_running(job.job_id, out)
        saved: list[str] = []
        if args.download is not None:
            saved = _download_streams(client, job, args.download, out)
    result = to_jsonable(job)
    if saved:
        result["downloaded"] = saved

    def human() -> None:
        out.line(f"job {job.job_id}: {job.status}")
        for s in getattr(job, "streams", []):
            out.line(f"  stream {s.stream_id}  {s.duration_seconds or '?'} s  {s.video_url or ''}")
        if getattr(job, "error_message", None):
            out.line(f"  error: {job.error_message}")

    out.result(result, human)
    return EXIT_OK


def _show_page(
    out: Output, page: StreamRecordingsList | SimulationJobsList, items: Sequence[_Item],
    describe: Callable[[_Item], str],
) -> int:
    """Show one page of a listing: as is with ``--json``, else a line per item (from
    *describe*) and then how many of the total these are."""

    def human() -> None:
        for item in items:
            out.line(describe(item))
        out.line(f"{len(items)} of {page.total}")

    out.result(page, human)
    return EXIT_OK


def cmd_recordings_list(args: argparse.Namespace, out: Output) -> int:
    """``recordings list [--limit N] [--offset N]``."""
    with open_client(args) as client:
        page = client.list_stream_recordings(limit=args.limit, offset=args.offset)

    def describe(r: StreamRecordingInfo) -> str:
        dur = f"{r.duration_seconds:.1f} s" if r.duration_seconds is not None else "live"
        return f"{r.stream_id}  {r.width}x{r.height}  {dur}  {r.started_at}"

    return _show_page(out, page, page.recordings, describe)


def cmd_recordings_get(args: argparse.Namespace, out: Output) -> int:
    """``recordings get STREAM_ID``."""
    with open_client(args) as client:
        rec = client.get_recording(args.stream_id)

    def human() -> None:
        for f in dataclasses.fields(rec):
            out.line(f"{f.name}: {getattr(rec, f.name)}")

    out.result(rec, human)
    return EXIT_OK


def cmd_recordings_download(args: argparse.Namespace, out: Output) -> int:
    """``recordings download STREAM_ID [PATH]`` (PATH: a file or a directory)."""
    name = safe_file_name(args.stream_id)
    target: Path = args.path if args.path is not None else Path(name)
    if target.is_dir():
        target = target / name
    check_out_path(target)
    with open_client(args) as client:
        saved = Path(client.download_recording(args.stream_id, target, progress=True))
    out.result({"stream_id": args.stream_id, "path": str(saved)},
               lambda: out.line(f"saved {saved}"))
    return EXIT_OK


def cmd_simulations_list(args: argparse.Namespace, out: Output) -> int:
    """``simulations list [--status S] [--active] [--limit N] [--offset N]``."""
    status = SimulationJobStatus(args.status) if args.status else None
    with open_client(args) as client:
        page = client.list_simulations(status=status, active=args.active, limit=args.limit,
                                       offset=args.offset)

    return _show_page(out, page, page.jobs, lambda j: f"{j.job_id}  {j.status}  {j.created_at}")


def cmd_simulations_get(args: argparse.Namespace, out: Output) -> int:
    """``simulations get JOB_ID``."""
    with open_client(args) as client:
        job = client.get_simulate_status(args.job_id)

    def human() -> None:
        out.line(f"job {job.job_id}: {job.status}")
        for s in job.streams:
            out.line(f"  stream {s.stream_id}  {s.video_url or ''}")

    out.result(job, human)
    return EXIT_OK


def cmd_simulations_cancel(args: argparse.Namespace, out: Output) -> int:
    """``simulations cancel JOB_ID``."""
    with open_client(args) as client:
        info = client.cancel_simulation(args.job_id)
    out.result(info, lambda: out.line(f"job {info.job_id}: {info.status}"))
    return EXIT_OK
