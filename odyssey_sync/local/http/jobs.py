"""Simulation jobs of the local server (PROTOCOL §3.9 and §9): scripts and their runner.

A job is validated completely when it is submitted (bad scripts are a 422
naming the script, entry index and key), stored, and then run in the
background through ``pending → dispatched → processing → completed`` (or
``failed`` / ``cancelled``), ``job_delay`` seconds per step so clients can
observe and cancel the early states. Each script is rendered to an MP4 by
:func:`odyssey_sync.local.render.media.render_script` on the render pool and
recorded as a stream of the submitting key (``script_index`` set), so
``/recordings/{stream_id}`` serves simulation outputs as well.

``script_url`` is fetched only when it points at this server (the emulator
makes no outbound requests): upload a script with ``POST /scripts`` and pass
the returned signed ``script_url``. Any other URL fails the job with a clear
``error_message``.

After a restart, jobs that were still pending, dispatched or processing are
marked ``failed`` ("server restarted") rather than resumed: their render may
have been half written, and a failed job is honest and can be resubmitted.
"""


from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from yarl import URL

from ..context import ServerConfig, ServerContext
from ..limits import JsonProblem, decode_json, prompt_problem
from ..render.media import decode_data_url, decode_image, render_script
from ..store import ACTIVE_JOB_STATUSES, Row, Store, to_iso
from .parsing import read_limited

__all__ = ["CANCELLABLE", "JOB_STATUSES", "MAX_BATCH", "JobHost", "JobRunner", "Script",
           "ScriptError", "parse_scripts_document", "validate_script"]

log = logging.getLogger("odyssey_sync.local")

#: bodies of ``POST /simulation-jobs`` and fetched scripts: they carry images as data URLs
LARGE_BODY_LIMIT = 64 << 20
JOB_STATUSES = ("pending", "dispatched", "processing", "completed", "failed", "cancelled")
CANCELLABLE = ("pending", "dispatched")
#: longest script the emulator renders (keeps a typo from rendering for an hour)
MAX_SCRIPT_MS = 10 * 60 * 1000
MAX_BATCH = 16
_ACTIONS = ("start", "interact", "end")




class JobHost(Protocol):
    """What a :class:`JobRunner` needs from the server state (``LocalBackend``)."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def ctx(self) -> ServerContext: ...

    @property
    def store(self) -> Store: ...

    @property
    def job_delay(self) -> float: ...

    @property
    def render_pool(self) -> Executor: ...

    def spawn(self, coro: Any) -> asyncio.Task[Any]: ...

    def media_paths(self, media_key: str) -> dict[str, Path]: ...

    def notify_render(self) -> None: ...

    def recording_json(self, row: Row) -> dict[str, Any]: ...


class ScriptError(ValueError):
    """A script broke a rule of §9; ``loc`` points at the offending entry/key."""

    def __init__(self, loc: list[Any], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.msg = msg


@dataclass
class Script:
    """One validated script: normalized entries plus the decoded start image."""

    entries: list[dict[str, Any]]
    image: bytes | None


def _decode_data_url(value: str, loc: list[Any]) -> bytes:
    if not value.startswith("data:image/"):
        raise ScriptError(loc, "image must be a data URL 'data:image/<type>;base64,<data>'")
    try:
        data, _ = decode_data_url(value, field="image data URL")
    except ValueError as exc:
        raise ScriptError(loc, str(exc)) from None
    return data


def validate_script(entries: Any, loc: list[Any]) -> Script:
    """Check one script against §9; raise :class:`ScriptError` naming index and key."""
    if not isinstance(entries, list):
        raise ScriptError(loc, "script must be a list of entries")
    if len(entries) < 2:
        raise ScriptError(loc, "script needs at least a 'start' entry and an 'end' entry")
    normalized: list[dict[str, Any]] = []
    image: bytes | None = None
    previous = 0
    for i, entry in enumerate(entries):
        here = [*loc, i]
        if not isinstance(entry, dict):
            raise ScriptError(here, f"entry {i} must be an object")
        ts = entry.get("timestamp_ms")
        if "timestamp_ms" not in entry:
            raise ScriptError([*here, "timestamp_ms"], f"entry {i}: 'timestamp_ms' is required")
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise ScriptError([*here, "timestamp_ms"],
                              f"entry {i}: 'timestamp_ms' must be an integer")
        if ts < 0:
            raise ScriptError([*here, "timestamp_ms"], f"entry {i}: 'timestamp_ms' must be >= 0")
        if ts < previous:
            raise ScriptError([*here, "timestamp_ms"],
                              f"entry {i}: entries must be in chronological order "
                              f"({ts} ms comes after {previous} ms)")
        if ts > MAX_SCRIPT_MS:
            raise ScriptError([*here, "timestamp_ms"],
                              f"entry {i}: scripts are limited to {MAX_SCRIPT_MS} ms")
        previous = ts
        actions = [a for a in _ACTIONS if a in entry]
        if len(actions) != 1:
            raise ScriptError(here, f"entry {i} must have exactly one of 'start', 'interact', "
                                    f"'end' (found {', '.join(actions) or 'none'})")
        action = actions[0]
        value = entry[action]
        if not isinstance(value, dict):
            raise ScriptError([*here, action], f"entry {i}: '{action}' must be an object")
        if action == "start" and i != 0:
            raise ScriptError([*here, "start"], f"entry {i}: 'start' must be the first entry")
        if action == "end" and i != len(entries) - 1:
            raise ScriptError([*here, "end"], f"entry {i}: 'end' must be the last entry")
        if i == 0 and action != "start":
            raise ScriptError(here, "entry 0 must be a 'start' entry")
        if i == 0 and ts != 0:
            raise ScriptError([*here, "timestamp_ms"], "entry 0: 'start' must be at 0 ms")
        if i == len(entries) - 1 and action != "end":
            raise ScriptError(here, f"entry {i}: the last entry must be an 'end' entry")
        if action == "end" and ts == 0:
            raise ScriptError([*here, "timestamp_ms"],
                              f"entry {i}: 'end' must come after the start (> 0 ms)")
        clean: dict[str, Any] = {}
        if action in ("start", "interact"):
            prompt = value.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ScriptError([*here, action, "prompt"],
                                  f"entry {i}: '{action}.prompt' must be a non-empty string")
            problem = prompt_problem(prompt)
            if problem is not None:
                raise ScriptError([*here, action, "prompt"], f"entry {i}: {problem}")
            clean["prompt"] = prompt
        if action == "start":
            img = value.get("image")
            if img is not None and img != "":
                if not isinstance(img, str):
                    raise ScriptError([*here, "start", "image"],
                                      f"entry {i}: 'start.image' must be a data URL string")
                image = _decode_data_url(img, [*here, "start", "image"])
        normalized.append({"timestamp_ms": ts, action: clean})
    return Script(normalized, image)


def parse_scripts_document(doc: Any) -> list[Script]:
    """A fetched ``script_url`` body: a script, a list of scripts, or {script|scripts}."""
    if isinstance(doc, dict):
        if "scripts" in doc:
            doc = doc["scripts"]
        elif "script" in doc:
            doc = doc["script"]
    if isinstance(doc, list) and doc and all(isinstance(s, list) for s in doc):
        if len(doc) > MAX_BATCH:
            raise ScriptError(["scripts"], f"at most {MAX_BATCH} scripts per job")
        return [validate_script(s, ["scripts", n]) for n, s in enumerate(doc)]
    return [validate_script(doc, ["script"])]


class JobRunner:
    """Runs simulation jobs as tasks on the server loop (thread: loop only)."""

    def __init__(self, backend: JobHost) -> None:
        self.backend = backend
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def recover(self) -> None:
        """Mark jobs interrupted by a shutdown as failed (see module docstring)."""
        now = time.time()
        for row in self.backend.store.jobs_in_status(ACTIVE_JOB_STATUSES):
            self.backend.store.update_job(
                row["job_id"], status="failed", completed_at=to_iso(now),
                error_message="the local server restarted while the job was in progress; "
                              "submit it again")

    def submit(self, key_id: str, portrait: bool, scripts: list[Script] | None,
               script_url: str | None) -> Row:
        job_id = "job_" + uuid.uuid4().hex
        now = time.time()
        payload = None if scripts is None else json.dumps(
            [{"entries": s.entries,
              "image": None if s.image is None else base64.b64encode(s.image).decode()}
             for s in scripts])
        self.backend.store.add_job(
            job_id=job_id, key_id=key_id, status="pending", priority="normal",
            created_at=to_iso(now), created_ts=now, portrait=int(portrait),
            script_url=script_url, scripts_json=payload)
        task = self.backend.spawn(self._run(job_id))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        row = self.backend.store.job(job_id)
        assert row is not None
        return row

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending/dispatched job; False when it is past that."""
        changed = self.backend.store.update_job(
            job_id, only_if_status=CANCELLABLE, status="cancelled",
            completed_at=to_iso(time.time()))
        if changed:
            task = self._tasks.pop(job_id, None)
            if task is not None:
                task.cancel()
        return changed

    async def _run(self, job_id: str) -> None:
        store = self.backend.store
        delay = self.backend.job_delay
        try:
            await asyncio.sleep(delay)
            if not store.update_job(job_id, only_if_status=("pending",), status="dispatched",
                                    dispatched_at=to_iso(time.time()),
                                    assigned_region="local"):
                return
            await asyncio.sleep(delay)
            if not store.update_job(job_id, only_if_status=("dispatched",), status="processing",
                                    started_at=to_iso(time.time())):
                return
            row = store.job(job_id)
            assert row is not None
            scripts = await self._load_scripts(row)
            await asyncio.gather(*(self._render(row, n, s) for n, s in enumerate(scripts)))
            store.update_job(job_id, only_if_status=("processing",), status="completed",
                             completed_at=to_iso(time.time()))
            log.info("simulation job %s completed (%d stream(s))", job_id, len(scripts))
        except asyncio.CancelledError:
            raise
        except JobFailure as exc:
            self._fail(job_id, str(exc))
        except Exception as exc:
            log.exception("simulation job %s failed", job_id)
            self._fail(job_id, f"internal error: {type(exc).__name__}: {exc}")

    def _fail(self, job_id: str, message: str) -> None:
        self.backend.store.update_job(job_id, only_if_status=ACTIVE_JOB_STATUSES,
                                      status="failed", error_message=message[:2000],
                                      completed_at=to_iso(time.time()))

    async def _load_scripts(self, row: Row) -> list[Script]:
        if row["scripts_json"] is not None:
            return [Script(s["entries"], None if s["image"] is None
                           else base64.b64decode(s["image"]))
                    for s in json.loads(row["scripts_json"])]
        url = str(row["script_url"])
        if not self._is_own_url(url):
            raise JobFailure(f"script_url {url!r} is not served by this local server; the "
                             "emulator does not fetch external URLs (upload the script with "
                             "POST /scripts and use the returned script_url)")
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as http, \
                    http.get(url) as response:
                if response.status != 200:
                    raise JobFailure(f"fetching script_url failed: HTTP {response.status}")
                raw = await read_limited(response.content, LARGE_BODY_LIMIT)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise JobFailure(f"fetching script_url failed: {type(exc).__name__}") from None
        if raw is None:
            raise JobFailure("script_url document is too large")
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                None, lambda: parse_scripts_document(decode_json(raw)))
        except JsonProblem:
            raise JobFailure("script_url did not return usable JSON") from None
        except ScriptError as exc:
            raise JobFailure(f"invalid script at {'.'.join(map(str, exc.loc))}: {exc.msg}") \
                from None

    def _is_own_url(self, url: str) -> bool:
        try:
            target = URL(url)
            own = URL(self.backend.ctx.base_url)
        except ValueError:
            return False
        local_hosts = {own.host, "127.0.0.1", "localhost", "::1"}
        return (target.scheme == own.scheme and target.port == own.port
                and target.host in local_hosts)

    async def _render(self, job: Row, index: int, script: Script) -> None:
        backend = self.backend
        portrait = bool(job["portrait"])
        width, height = backend.ctx.frame_size(portrait)
        fps = backend.config.fps
        stream_id = str(uuid.uuid4())
        media_key = uuid.uuid4().hex
        now = time.time()
        prompt = str(script.entries[0]["start"]["prompt"])
        backend.store.add_stream(
            stream_id=stream_id, key_id=job["key_id"], job_id=job["job_id"],
            script_index=index, width=width, height=height, fps=fps, prompt=prompt,
            applied_prompt=prompt, portrait=int(portrait), started_at=to_iso(now),
            started_ts=now, media_key=media_key, has_input_image=int(script.image is not None),
            render_state="rendering")
        for entry in script.entries:
            frame = round(entry["timestamp_ms"] * fps / 1000)
            for kind in _ACTIONS:
                if kind in entry:
                    backend.store.add_event(stream_id, kind, frame, entry[kind].get("prompt"))
        paths = backend.media_paths(media_key)
        loop = asyncio.get_running_loop()
        try:
            rendered = await loop.run_in_executor(
                backend.render_pool, lambda: render_script(
                    paths["video"], width=width, height=height, fps=fps, script=script.entries,
                    image=None if script.image is None else decode_image(script.image),
                    thumbnail_path=paths["thumbnail"], preview_path=paths["preview"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("rendering script %d of job %s failed", index, job["job_id"])
            backend.store.update_stream(stream_id, render_state="failed",
                                        render_error=str(exc)[:500])
            raise JobFailure(f"rendering script {index} failed: {type(exc).__name__}") from None
        finally:
            backend.notify_render()
        end = time.time()
        backend.store.update_stream(
            stream_id, render_state="ready", ended_at=to_iso(end), ended_ts=end,
            frame_count=rendered.frame_count, duration_seconds=rendered.duration_seconds,
            has_thumbnail=int(rendered.has_thumbnail), has_preview=int(rendered.has_preview))
        backend.notify_render()

    # -- JSON shapes ----------------------------------------------------------
    def detail_json(self, row: Row) -> dict[str, Any]:
        """SimulationJobDetail (§3.9)."""
        backend = self.backend
        streams = [] if row["status"] != "completed" else [
            {**backend.recording_json(s), "script_index": s["script_index"]}
            for s in backend.store.streams_of_job(row["job_id"])
            if s["render_state"] == "ready"]
        waiting = row["status"] in CANCELLABLE
        return {
            "job_id": row["job_id"], "status": row["status"], "priority": row["priority"],
            "created_at": row["created_at"], "dispatched_at": row["dispatched_at"],
            "started_at": row["started_at"], "completed_at": row["completed_at"],
            "error_message": row["error_message"], "assigned_region": row["assigned_region"],
            "retry_count": row["retry_count"],
            "estimated_wait_minutes": round(backend.job_delay * 2 / 60, 4) if waiting else None,
            "streams": streams,
        }


class JobFailure(Exception):
    """A job ends ``failed`` with this text as ``error_message``."""
