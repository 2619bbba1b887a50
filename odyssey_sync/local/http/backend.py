"""State of one running local server, and the real-time half's :class:`StreamSink`.

:class:`LocalBackend` owns the SQLite store, the live allocations (capacity
slots), the render pool and the simulation :class:`~.jobs.JobRunner`, and
implements the :class:`~odyssey_sync.local.context.StreamSink` the real-time
half calls when streams start, change and end. Recordings are rendered again
from a stream's event log when it ends (:mod:`odyssey_sync.local.render.media`).

Thread: everything here runs on the server's loop thread except the renderer
(a small named thread pool) and :meth:`LocalBackend.wait_for_recording`
(caller's thread; it only reads the store and waits on a condition).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import auth
from ..context import ServerConfig, ServerContext
from ..faults import Faults
from ..render.media import PART_SUFFIX, RenderedMedia, decode_image, render_recording
from ..store import Row, Store, to_iso
from .errors import ApiError
from .jobs import JobRunner

__all__ = ["BACKEND_KEY", "FINAL_RENDER_STATES", "MEDIA_KINDS", "Allocation", "LocalBackend",
           "backend_of"]

log = logging.getLogger("odyssey_sync.local")

#: media kinds a signed URL may name; each maps to a fixed file name suffix
MEDIA_KINDS: dict[str, tuple[str, str]] = {
    "video": (".mp4", "video/mp4"),
    "thumbnail": (".thumb.jpg", "image/jpeg"),
    "preview": (".preview.mp4", "video/mp4"),
    "events": (".events.json", "application/json"),
}
#: recordings are finished in one of these render states
FINAL_RENDER_STATES = ("ready", "failed", "disabled")


def _next_month_start() -> str:
    """ISO date of the first day of next month (UTC): when a monthly quota resets."""
    today = dt.datetime.now(tz=dt.timezone.utc).date()
    year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
    return dt.date(year, month, 1).isoformat()


@dataclass
class Allocation:
    """A streamer slot handed to one client (in memory; mirrored in the store)."""

    session_id: str
    key_id: str
    slot: int
    created: float  # time.monotonic()
    connected: bool = False
    #: time.monotonic() when its client vanished without client_disconnecting;
    #: the slot stays taken until ``stale_session_timeout`` after it
    stale_since: float | None = None


class LocalBackend:
    """State of one running local server; the :class:`StreamSink` of the real-time half.

    Thread: created and used on the server loop thread; :meth:`wait_for_recording`
    and :meth:`recording_row` may be called from any thread.
    """

    def __init__(self, config: ServerConfig, faults: Faults, store: Store, data_dir: Path,
                 *, primary_key_id: str, allocation_timeout: float = 60.0,
                 job_delay: float = 0.2) -> None:
        secret = store.meta_set_default("secret", secrets.token_bytes(32))
        self.config = config
        self.store = store
        self.data_dir = data_dir
        self.media_dir = data_dir / "media"
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self.primary_key_id = primary_key_id
        self.allocation_timeout = allocation_timeout
        self.job_delay = job_delay
        self.tokens = auth.TokenIssuer(secret)
        self.ctx = ServerContext(config=config, sink=self, faults=faults, secret=secret)
        self.allocations: dict[str, Allocation] = {}
        self.render_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="odyssey-local-render")
        self._tasks: set[asyncio.Task[Any]] = set()
        #: stream_id -> monotonic stamp origin of frame 0 (live streams and those
        #: awaiting their render). In memory only: a monotonic value means nothing
        #: after a restart, so a re-render falls back to origin 0.0.
        self._stamp_origins: dict[str, float] = {}
        self._render_done = threading.Condition()
        self.jobs = JobRunner(self)
        #: allocations held (stale ones included), for readers on other threads:
        #: an int replaced on the loop thread, read anywhere
        self.sessions_in_use = 0
        #: recordings scheduled or rendering (an int replaced on the loop thread,
        #: read anywhere: the interpreter-exit hook waits for it to reach 0)
        self.renders_pending = 0

    # -- lifecycle ----------------------------------------------------------
    def recover(self) -> None:
        """After a restart: close stale allocations, finish interrupted work.

        Allocations and live streams cannot survive a restart (their sockets
        are gone): allocations are closed, live streams are ended with what
        their event log knows. Recordings whose render was interrupted are
        rendered again. Temporary ``*.part`` files a killed render left behind
        are removed. Simulation jobs are handled by :meth:`JobRunner.recover`.
        """
        now = time.time()
        self.store.close_all_allocations(now, "server restarted")
        for leftover in self.media_dir.glob(f"*{PART_SUFFIX}"):
            log.info("removing %s left behind by an interrupted render", leftover.name)
            leftover.unlink(missing_ok=True)
        for row in self.store.streams_in_state(["live"]):
            events = self.store.events(row["stream_id"])
            last = max((e["frame"] for e in events), default=0)
            self.store.update_stream(row["stream_id"], ended_at=to_iso(now), ended_ts=now,
                                     frame_count=last + 1,
                                     duration_seconds=(last + 1) / row["fps"],
                                     render_state="failed",
                                     render_error="server stopped while the stream was live")
        for row in self.store.streams_in_state(["rendering"]):
            if row["job_id"] is None:
                self.schedule_render(row["stream_id"])
            else:  # its job is failed by JobRunner.recover(); so is its output
                self.store.update_stream(row["stream_id"], render_state="failed",
                                         render_error="server stopped during the render")
        for row in self.store.open_streams():  # any stream still without an end
            self.store.update_stream(row["stream_id"], ended_at=to_iso(now), ended_ts=now)
        self.jobs.recover()

    def start_housekeeping(self) -> None:
        """Free expired and stale allocations in the background (loop thread)."""
        self.spawn(self._housekeeping())

    async def _housekeeping(self) -> None:
        period = max(0.05, min(1.0, self.config.stale_session_timeout / 4,
                               self.allocation_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.expire_allocations()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run a background coroutine on the loop, tracked for shutdown."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        """Cancel background work and stop the render pool (loop thread)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        # Renders already running finish on their own thread; do not wait on
        # them from the loop (that would block it), the caller joins the pool.
        self.render_pool.shutdown(wait=False, cancel_futures=True)
        with self._render_done:
            self._render_done.notify_all()

    # -- API keys / bearer --------------------------------------------------
    def check_api_key(self, api_key: str) -> str | None:
        """key_id of a known API key (constant-time comparison), else None."""
        hashes = self.store.key_hashes()
        found = auth.match_api_key(api_key, hashes)
        return hashes[found] if found is not None else None

    def bearer_key_id(self, request: web.Request) -> str:
        """key_id of the caller's valid access token (401 otherwise)."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Not authenticated", {"WWW-Authenticate": "Bearer"})
        claims = self.tokens.verify_access(token.strip())
        if claims is None:
            raise ApiError(401, "Invalid or expired token", {"WWW-Authenticate": "Bearer"})
        return claims.key_id

    def is_admin(self, request: web.Request) -> bool:
        """Bearer is the server's own API key, or an access token issued for it."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        claims = self.tokens.verify_access(token)
        if claims is not None:
            return claims.key_id == self.primary_key_id
        return self.check_api_key(token) == self.primary_key_id

    # -- allocations --------------------------------------------------------
    def expire_allocations(self) -> None:
        """Free allocations whose client never opened the signaling socket, and
        those whose client vanished more than ``stale_session_timeout`` ago."""
        now = time.monotonic()
        for alloc in list(self.allocations.values()):
            if alloc.stale_since is not None:
                if now - alloc.stale_since > self.config.stale_session_timeout:
                    log.info("allocation %s freed (client vanished %.1f s ago)",
                             alloc.session_id, now - alloc.stale_since)
                    self._free(alloc.session_id, "stale")
            elif not alloc.connected and now - alloc.created > self.allocation_timeout:
                log.info("allocation %s expired (no signaling connection)", alloc.session_id)
                self._free(alloc.session_id, "expired")

    def _free(self, session_id: str, reason: str) -> None:
        if self.allocations.pop(session_id, None) is not None:
            self.store.close_allocation(session_id, time.time(), reason)
        self.sessions_in_use = len(self.allocations)

    def allocate(self, key_id: str) -> Allocation:
        """Take a slot for ``key_id`` or raise the 429/503 the clients expect."""
        self.expire_allocations()
        faults = self.ctx.faults
        if faults.take("refuse_sessions"):
            raise ApiError(503, "No streamers available (injected)")
        if faults.take("usage_error_count"):
            raise ApiError(429, faults.usage_error or {
                "error": "RATE_LIMITED", "message": "Too many requests (injected)",
                "action": "Retry later", "details": {"retry_after_seconds": 1}})
        cfg = self.config
        mine = [a for a in self.allocations.values() if a.key_id == key_id]
        if len(mine) >= cfg.max_concurrent_per_key:
            raise ApiError(429, {
                "error": "CONCURRENT_LIMIT_REACHED",
                "message": f"This API key already holds {len(mine)} concurrent sessions",
                "action": "Close an open session before starting another",
                "action_url": "https://portal.odyssey.systems/dashboard",
                "details": {"active_count": len(mine), "limit": cfg.max_concurrent_per_key}})
        if cfg.quota_seconds is not None:
            used = self.store.streamed_seconds(key_id, time.time())
            if used >= cfg.quota_seconds:
                raise ApiError(429, {
                    "error": "MONTHLY_LIMIT_REACHED",
                    "message": "Streaming quota of this API key is used up",
                    "action": "Upgrade plan",
                    "action_url": "https://portal.odyssey.systems/dashboard",
                    "details": {"used_hours": round(used / 3600, 4),
                                "limit_hours": round(cfg.quota_seconds / 3600, 4),
                                "reset_date": _next_month_start()}})
        busy = {a.slot for a in self.allocations.values()}
        free = [slot for slot in range(cfg.capacity) if slot not in busy]
        if not free:
            raise ApiError(503, "No streamers available, retry shortly")
        alloc = Allocation(session_id="sess_" + uuid.uuid4().hex, key_id=key_id,
                           slot=free[0], created=time.monotonic())
        self.allocations[alloc.session_id] = alloc
        self.sessions_in_use = len(self.allocations)
        self.store.add_allocation(alloc.session_id, key_id, time.time())
        return alloc

    # -- StreamSink (called by the real-time half on the loop thread) --------
    def session_owner(self, session_id: str) -> str | None:
        alloc = self.allocations.get(session_id)
        return alloc.key_id if alloc is not None else None

    def verify_session_token(self, token: str, session_id: str) -> bool:
        self.expire_allocations()  # a client arriving after its allocation expired is refused
        alloc = self.allocations.get(session_id)
        if alloc is None or not self.tokens.verify_session(token, session_id):
            return False
        # A verified token means the signaling socket is being opened: the
        # allocation is in use and must no longer expire (nor stay stale: a
        # client coming back takes its slot again).
        alloc.stale_since = None
        if not alloc.connected:
            alloc.connected = True
            self.store.mark_allocation_connected(session_id)
        return True

    def stream_started(self, *, stream_id: str, session_id: str, width: int, height: int,
                       fps: float, prompt: str, applied_prompt: str, portrait: bool,
                       image: bytes | None, broadcast: bool,
                       stamp_origin: float | None = None) -> None:
        alloc = self.allocations.get(session_id)
        if alloc is None:
            log.warning("stream %s started on unknown allocation %s", stream_id, session_id)
            return
        if stamp_origin is not None:
            self._stamp_origins[stream_id] = float(stamp_origin)
        alloc.connected = True
        media_key = uuid.uuid4().hex
        if image is not None:
            (self.media_dir / f"{media_key}.input").write_bytes(image)
        now = time.time()
        self.store.add_stream(
            stream_id=stream_id, key_id=alloc.key_id, session_id=session_id, width=width,
            height=height, fps=fps, prompt=prompt, applied_prompt=applied_prompt,
            portrait=int(portrait), broadcast=int(broadcast), started_at=to_iso(now),
            started_ts=now, media_key=media_key, has_input_image=int(image is not None),
            render_state="live")
        self.store.add_event(stream_id, "start", 0, prompt)

    def stream_interacted(self, stream_id: str, frame: int, prompt: str) -> None:
        if self.store.stream(stream_id) is None:
            log.warning("interaction on unknown stream %s", stream_id)
            return
        self.store.add_event(stream_id, "interact", int(frame), prompt)

    def stream_ended(self, stream_id: str, frame_count: int) -> None:
        row = self.store.stream(stream_id)
        if row is None or row["ended_ts"] is not None:
            return
        now = time.time()
        frame_count = max(0, int(frame_count))
        state = "rendering" if self.config.recordings and frame_count > 0 else "disabled"
        self.store.add_event(stream_id, "end", frame_count, None)
        self.store.update_stream(stream_id, ended_at=to_iso(now), ended_ts=now,
                                 frame_count=frame_count,
                                 duration_seconds=frame_count / row["fps"],
                                 render_state=state)
        if state == "rendering":
            self.schedule_render(stream_id)
        else:
            self._stamp_origins.pop(stream_id, None)
            self.notify_render()

    def session_closed(self, session_id: str, *, vanished: bool = False) -> None:
        alloc = self.allocations.get(session_id)
        if vanished and alloc is not None:
            log.info("allocation %s: client vanished without client_disconnecting; its slot "
                     "is kept for %g s", session_id, self.config.stale_session_timeout)
            alloc.stale_since = time.monotonic()
            return
        self._free(session_id, "closed")

    # -- recordings ---------------------------------------------------------
    def media_paths(self, media_key: str) -> dict[str, Path]:
        """Files of one recording: names come from our own uuid, never from user text."""
        return {kind: self.media_dir / f"{media_key}{suffix}"
                for kind, (suffix, _) in MEDIA_KINDS.items()}

    def schedule_render(self, stream_id: str) -> None:
        """Render the recording of an ended stream in the background (loop thread)."""
        self.renders_pending += 1

        async def render() -> None:
            try:
                await self._render_recording(stream_id)
            finally:
                self.renders_pending -= 1

        self.spawn(render())

    async def _render_recording(self, stream_id: str) -> None:
        row = self.store.stream(stream_id)
        if row is None:
            return
        events = self.store.events(stream_id)
        interactions = [(int(e["frame"]), str(e["prompt"])) for e in events
                        if e["kind"] == "interact"]
        image: bytes | None = None
        if row["has_input_image"]:
            image_path = self.media_dir / f"{row['media_key']}.input"
            image = image_path.read_bytes() if image_path.exists() else None
        paths = self.media_paths(row["media_key"])
        origin = self._stamp_origins.pop(stream_id, None)
        loop = asyncio.get_running_loop()

        def render() -> RenderedMedia:
            # stamp_origin None (a re-render after a restart: that clock value is
            # gone) stamps frame i at i / fps.
            return render_recording(
                paths["video"], width=row["width"], height=row["height"], fps=row["fps"],
                prompt=row["prompt"], image=None if image is None else decode_image(image),
                interactions=interactions, frame_count=row["frame_count"],
                stamp_origin=0.0 if origin is None else origin,
                thumbnail_path=paths["thumbnail"], preview_path=paths["preview"])

        try:
            rendered = await loop.run_in_executor(self.render_pool, render)
        except asyncio.CancelledError:
            raise  # stays "rendering" in the store: the next start renders it
        except RuntimeError as exc:
            if not self._render_pool_down(exc):
                raise
            # The interpreter is exiting (or the server stopping) under us: the
            # row stays "rendering", so the next start on this data directory
            # renders it. Nothing is lost.
            log.warning("recording of stream %s left for the next start: %s", stream_id, exc)
        except Exception as exc:
            log.exception("rendering the recording of stream %s failed", stream_id)
            self.store.update_stream(stream_id, render_state="failed",
                                     render_error=f"{type(exc).__name__}: {exc}"[:500])
        else:
            self.store.update_stream(stream_id, render_state="ready",
                                     frame_count=rendered.frame_count,
                                     duration_seconds=rendered.duration_seconds,
                                     has_thumbnail=int(rendered.has_thumbnail),
                                     has_preview=int(rendered.has_preview))
            log.info("recording of stream %s ready (%d frames)", stream_id,
                     rendered.frame_count)
        finally:
            self.notify_render()

    @staticmethod
    def _render_pool_down(exc: RuntimeError) -> bool:
        return "shutdown" in str(exc)

    def notify_render(self) -> None:
        """Wake every :meth:`wait_for_recording` (a render finished or failed)."""
        with self._render_done:
            self._render_done.notify_all()

    def recording_row(self, stream_id: str) -> Row | None:
        return self.store.stream(stream_id)

    def wait_for_recording(self, stream_id: str, timeout: float) -> Row:
        """Block (any thread but the loop's) until the recording is final; return its row."""
        deadline = time.monotonic() + timeout
        with self._render_done:
            while True:
                row = self.store.stream(stream_id)
                if row is not None and row["render_state"] in FINAL_RENDER_STATES:
                    return row
                left = deadline - time.monotonic()
                if left <= 0:
                    state = row["render_state"] if row else "unknown stream"
                    raise TimeoutError(
                        f"recording of stream {stream_id} not ready after {timeout:g} s "
                        f"(state: {state})")
                self._render_done.wait(min(left, 0.5))

    def signed_url(self, resource: str, kind: str, prefix: str = "media") -> str:
        expires = int(time.time()) + self.config.signed_url_ttl
        sig = auth.sign_resource(self.ctx.secret, resource, kind, expires)
        return f"{self.ctx.base_url}/{prefix}/{resource}/{kind}?expires={expires}&sig={sig}"

    def recording_json(self, row: Row) -> dict[str, Any]:
        """Recording object (§3.7); URLs are null until the files exist."""
        ready = row["render_state"] == "ready"
        ended = row["ended_ts"] is not None
        sid = row["stream_id"]
        return {
            "stream_id": sid,
            "video_url": self.signed_url(sid, "video") if ready else None,
            "events_url": self.signed_url(sid, "events") if ended else None,
            "thumbnail_url": self.signed_url(sid, "thumbnail")
            if ready and row["has_thumbnail"] else None,
            "preview_url": self.signed_url(sid, "preview")
            if ready and row["has_preview"] else None,
            "frame_count": row["frame_count"] if ended else None,
            "duration_seconds": row["duration_seconds"] if ended else None,
        }

    def events_json(self, row: Row) -> dict[str, Any]:
        return {
            "stream_id": row["stream_id"], "width": row["width"], "height": row["height"],
            "fps": row["fps"], "portrait": bool(row["portrait"]), "prompt": row["prompt"],
            "applied_prompt": row["applied_prompt"], "started_at": row["started_at"],
            "ended_at": row["ended_at"], "frame_count": row["frame_count"],
            "job_id": row["job_id"], "script_index": row["script_index"],
            "events": [{"type": e["kind"], "frame": e["frame"], "prompt": e["prompt"],
                        "at": e["at"]} for e in self.store.events(row["stream_id"])],
        }

    def state_json(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "capacity": self.config.capacity,
            "sessions_in_use": len(self.allocations),
            "free_capacity": self.config.capacity - len(self.allocations),
            "allocations": [{"session_id": a.session_id, "key_id": a.key_id, "slot": a.slot,
                             "connected": a.connected, "age_seconds": round(now - a.created, 3),
                             "stale_seconds": None if a.stale_since is None
                             else round(now - a.stale_since, 3)}
                            for a in self.allocations.values()],
            "streams": [{k: r[k] for k in ("stream_id", "key_id", "session_id", "job_id",
                                            "width", "height", "started_at", "ended_at",
                                            "frame_count", "render_state")}
                        for r in self.store.recent_streams(50)],
            "faults": self.ctx.faults.as_dict(),
        }


BACKEND_KEY: web.AppKey[LocalBackend] = web.AppKey("odyssey_local_backend", LocalBackend)


def backend_of(request: web.Request) -> LocalBackend:
    """The :class:`LocalBackend` of the application serving ``request``."""
    return request.app[BACKEND_KEY]
