"""The local server's HTTP half: REST API (PROTOCOL §3), state and recordings.

:class:`LocalBackend` owns the state of one running server (SQLite store,
live allocations, the render executor) and implements the
:class:`~odyssey_sync.local.context.StreamSink` the real-time half calls.
:func:`build_app` wires it into an aiohttp application with the middlewares
every route shares:

* ``//`` in a path is merged before routing (clients append paths to a base
  URL that may end in ``/``, §2.1);
* CORS for browsers (§14): preflights answered for every path, ``*`` origin,
  ``Location`` exposed;
* every error is FastAPI-shaped JSON ``{"detail": ...}``; an unexpected
  exception becomes a logged JSON 500, never a traceback on the wire.

Thread: everything here runs on the server's loop thread except the renderer
(a small named thread pool) and :meth:`LocalBackend.wait_for_recording`
(caller's thread; it only reads the store and waits on a condition).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from . import auth
from .context import ServerConfig, ServerContext
from .faults import Faults
from .store import Row, Store, to_iso

__all__ = ["ApiError", "LocalBackend", "build_app"]

log = logging.getLogger("odyssey_sync.local")

#: bodies of ordinary endpoints (auth, allocation, tokens, telemetry)
SMALL_BODY_LIMIT = 1 << 20
#: bodies of ``POST /simulation-jobs``: scripts carry images as data URLs
LARGE_BODY_LIMIT = 64 << 20
#: media kinds a signed URL may name; each maps to a fixed file name suffix
MEDIA_KINDS: dict[str, tuple[str, str]] = {
    "video": (".mp4", "video/mp4"),
    "thumbnail": (".thumb.jpg", "image/jpeg"),
    "preview": (".preview.mp4", "video/mp4"),
    "events": (".events.json", "application/json"),
}
#: recordings are finished in one of these render states
FINAL_RENDER_STATES = ("ready", "failed", "disabled")

_CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Accept, Origin, "
    "X-Requested-With, If-Match",
    "Access-Control-Expose-Headers": "Location, Content-Length, ETag",
    "Access-Control-Max-Age": "600",
}


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


class ApiError(Exception):
    """An HTTP error answered as ``{"detail": detail}`` (FastAPI style)."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def validation_error(loc: list[Any], msg: str, type_: str = "value_error") -> ApiError:
    """A 422 whose body matches FastAPI's request-validation errors."""
    return ApiError(422, [{"type": type_, "loc": loc, "msg": msg}])


def _json_error(status: int, detail: Any, headers: dict[str, str] | None = None) -> web.Response:
    response = web.json_response({"detail": detail}, status=status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


# ---------------------------------------------------------------------------
# request parsing helpers
# ---------------------------------------------------------------------------


async def read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """Read a body to EOF; None as soon as it exceeds ``limit`` bytes (no buffering past it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


async def read_json(request: web.Request, limit: int, *, required: bool = True) -> Any:
    """Read and decode a JSON body of at most ``limit`` bytes (413 / 422 otherwise)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"Request body too large (limit {limit} bytes)")
    raw = await read_limited(request.content, limit)
    if raw is None:
        raise ApiError(413, f"Request body too large (limit {limit} bytes)")
    if not raw.strip():
        if required:
            raise validation_error(["body"], "Field required", "missing")
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        pos = getattr(exc, "pos", 0)
        raise ApiError(422, [{"type": "json_invalid", "loc": ["body", pos],
                              "msg": "JSON decode error",
                              "ctx": {"error": getattr(exc, "msg", str(exc))}}]) from None


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise validation_error(["body"], "Input should be a valid dictionary or object to "
                               "extract fields from", "model_attributes_type")
    return body


def query_int(request: web.Request, name: str, default: int, lo: int,
              hi: int | None = None) -> int:
    """An integer query parameter within [lo, hi] (422 like FastAPI otherwise)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise validation_error(["query", name], "Input should be a valid integer, unable to "
                               "parse string as an integer", "int_parsing") from None
    if value < lo:
        raise validation_error(["query", name], f"Input should be greater than or equal to {lo}",
                               "greater_than_equal")
    if hi is not None and value > hi:
        raise validation_error(["query", name], f"Input should be less than or equal to {hi}",
                               "less_than_equal")
    return value


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    lowered = raw.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise validation_error(["query", name], "Input should be a valid boolean, unable to "
                           "interpret input", "bool_parsing")


# ---------------------------------------------------------------------------
# rendering (media.py when available, else a plain PyAV fallback)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """What a finished render produced (mirrors media.RenderedMedia)."""

    frame_count: int
    duration_seconds: float
    has_thumbnail: bool
    has_preview: bool


def _media_module() -> Any | None:
    try:
        import importlib

        media = importlib.import_module(f"{__package__}.media")
    except ImportError:  # the renderer is another engineer's module; run without it
        return None
    return media


def _fallback_render(path: Path, width: int, height: int, fps: float, frame_count: int,
                     prompt: str) -> None:
    """Plain-colour H.264 frames: used only when odyssey_sync.local.media is absent."""
    import av
    import numpy as np

    shade = sum(prompt.encode("utf-8")) % 200 + 30
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frame_count):
            pixels = np.full((height, width, 3), shade, dtype=np.uint8)
            pixels[: min(height, 8), : min(width, 8 + (i % max(1, width - 8)))] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def render_stream_recording(paths: dict[str, Path], *, width: int, height: int, fps: float,
                            prompt: str, image: bytes | None,
                            interactions: list[tuple[int, str]], frame_count: int,
                            stamp_origin: float | None = None) -> Rendered:
    """Render a live stream's recording (blocking; runs on a render thread).

    Frame ``i`` is stamped ``sent_at = stamp_origin + i / fps`` (``stamp_origin``:
    the live stream's frame-0 send time on ``time.monotonic()``; None = 0.0, e.g.
    for a recording re-rendered after a restart, when that clock value is gone).
    """
    media = _media_module()
    if media is None:
        _fallback_render(paths["video"], width, height, fps, frame_count, prompt)
        return Rendered(frame_count, frame_count / fps, False, False)
    picture = None if image is None else media.decode_image(image)
    result = media.render_recording(
        paths["video"], width=width, height=height, fps=fps, prompt=prompt, image=picture,
        interactions=interactions, frame_count=frame_count,
        stamp_origin=0.0 if stamp_origin is None else float(stamp_origin),
        thumbnail_path=paths["thumbnail"], preview_path=paths["preview"])
    return Rendered(int(result.frame_count), float(result.duration_seconds),
                    paths["thumbnail"].exists(), paths["preview"].exists())


def render_simulation(paths: dict[str, Path], *, width: int, height: int, fps: float,
                      script: list[dict[str, Any]], image: bytes | None) -> Rendered:
    """Render one simulation script (blocking; runs on a render thread)."""
    media = _media_module()
    if media is None:
        end_ms = int(script[-1]["timestamp_ms"])
        frames = max(1, round(end_ms * fps / 1000))
        _fallback_render(paths["video"], width, height, fps, frames,
                         str(script[0]["start"]["prompt"]))
        return Rendered(frames, frames / fps, False, False)
    picture = None if image is None else media.decode_image(image)
    result = media.render_script(
        paths["video"], width=width, height=height, fps=fps, script=script, image=picture,
        thumbnail_path=paths["thumbnail"], preview_path=paths["preview"])
    return Rendered(int(result.frame_count), float(result.duration_seconds),
                    paths["thumbnail"].exists(), paths["preview"].exists())


# ---------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------


def _next_month_start() -> str:
    """ISO date of the first day of next month (UTC): when a monthly quota resets."""
    import datetime as dt

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
        from .simulations import JobRunner  # local import: simulations imports this module

        self.jobs = JobRunner(self)

    # -- lifecycle ----------------------------------------------------------
    def recover(self) -> None:
        """After a restart: close stale allocations, finish interrupted work.

        Allocations and live streams cannot survive a restart (their sockets
        are gone): allocations are closed, live streams are ended with what
        their event log knows. Recordings whose render was interrupted are
        rendered again. Simulation jobs are handled by :meth:`JobRunner.recover`.
        """
        now = time.time()
        self.store.close_all_allocations(now, "server restarted")
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
                self.spawn(self._render_recording(row["stream_id"]))
            else:  # its job is failed by JobRunner.recover(); so is its output
                self.store.update_stream(row["stream_id"], render_state="failed",
                                         render_error="server stopped during the render")
        self.jobs.recover()

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
        """Free allocations whose client never opened the signaling socket."""
        now = time.monotonic()
        for alloc in list(self.allocations.values()):
            if not alloc.connected and now - alloc.created > self.allocation_timeout:
                log.info("allocation %s expired (no signaling connection)", alloc.session_id)
                self._free(alloc.session_id, "expired")

    def _free(self, session_id: str, reason: str) -> None:
        if self.allocations.pop(session_id, None) is not None:
            self.store.close_allocation(session_id, time.time(), reason)

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
        # allocation is in use and must no longer expire.
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
            self.spawn(self._render_recording(stream_id))
        else:
            self._stamp_origins.pop(stream_id, None)
            self._notify_render()

    def session_closed(self, session_id: str) -> None:
        self._free(session_id, "closed")

    # -- recordings ---------------------------------------------------------
    def media_paths(self, media_key: str) -> dict[str, Path]:
        """Files of one recording: names come from our own uuid, never from user text."""
        return {kind: self.media_dir / f"{media_key}{suffix}"
                for kind, (suffix, _) in MEDIA_KINDS.items()}

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
        try:
            rendered = await loop.run_in_executor(
                self.render_pool, lambda: render_stream_recording(
                    paths, width=row["width"], height=row["height"], fps=row["fps"],
                    prompt=row["prompt"], image=image, interactions=interactions,
                    frame_count=row["frame_count"], stamp_origin=origin))
        except asyncio.CancelledError:
            raise
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
            self._notify_render()

    def _notify_render(self) -> None:
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
                    from ..errors import OdysseyTimeoutError

                    state = row["render_state"] if row else "unknown stream"
                    raise OdysseyTimeoutError(
                        f"recording of stream {stream_id} not ready after {timeout:g} s "
                        f"(state: {state})", stream_id=stream_id)
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
            "allocations": [{"session_id": a.session_id, "key_id": a.key_id, "slot": a.slot,
                             "connected": a.connected, "age_seconds": round(now - a.created, 3)}
                            for a in self.allocations.values()],
            "streams": [{k: r[k] for k in ("stream_id", "key_id", "session_id", "job_id",
                                            "width", "height", "started_at", "ended_at",
                                            "frame_count", "render_state")}
                        for r in self.store.recent_streams(50)],
            "faults": self.ctx.faults.as_dict(),
        }


# ---------------------------------------------------------------------------
# middlewares
# ---------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:
        return  # WebSocket upgrades and streamed bodies: headers are gone already
    for name, value in _CORS_HEADERS.items():
        if name not in response.headers:
            response.headers[name] = value
    # No cookies are involved (origin "*"), so any header a browser asks to
    # send may be allowed: echo the request instead of guessing a list.
    wanted = request.headers.get("Access-Control-Request-Headers")
    if wanted and request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Headers"] = wanted


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every preflight; put ``Access-Control-*`` headers on every answer (§14)."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    _add_cors(request, response)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into FastAPI-style JSON; never leak a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _json_error(exc.status, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json":
            return exc  # already JSON (e.g. from the real-time half)
        reason = {404: "Not Found", 405: "Method Not Allowed",
                  413: "Request body too large"}.get(exc.status, exc.reason)
        return _json_error(exc.status, reason,
                           {k: v for k, v in exc.headers.items() if k.lower() == "allow"})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _json_error(500, "Internal Server Error")


@web.middleware
async def merge_slashes_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Route ``//auth/token`` like ``/auth/token`` (a base URL with a trailing slash).

    Runs innermost: the router already matched (and failed) on the raw path,
    so resolve the merged path again and call that handler directly.
    """
    if "//" not in request.raw_path.split("?", 1)[0]:
        return await handler(request)
    path = request.path
    while "//" in path:
        path = path.replace("//", "/")
    clone = request.clone(rel_url=request.rel_url.with_path(path))
    match = await request.app.router.resolve(clone)
    match.add_app(request.app)
    match.freeze()
    clone._match_info = match
    return await match.handler(clone)


# ---------------------------------------------------------------------------
# handlers
# ---------------------------------------------------------------------------


def backend_of(request: web.Request) -> LocalBackend:
    backend: LocalBackend = request.app[BACKEND_KEY]
    return backend


BACKEND_KEY: web.AppKey[LocalBackend] = web.AppKey("odyssey_local_backend", LocalBackend)


async def auth_token(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT))
    key = body.get("api_key")
    if "api_key" not in body:
        raise validation_error(["body", "api_key"], "Field required", "missing")
    if not isinstance(key, str):
        raise validation_error(["body", "api_key"], "Input should be a valid string",
                               "string_type")
    if not key:
        raise validation_error(["body", "api_key"], "String should have at least 1 character",
                               "string_too_short")
    faults = backend.ctx.faults
    if faults.take("deny_auth"):
        raise ApiError(403, faults.deny_auth_detail)
    key_id = backend.check_api_key(key)
    if key_id is None:
        raise ApiError(401, "Invalid API key")
    ttl = backend.config.auth_token_ttl
    return web.json_response({"access_token": backend.tokens.issue_access(key_id, ttl),
                              "token_type": "bearer", "expires_in": ttl})


async def regions(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    backend.bearer_key_id(request)
    return web.json_response({"regions": [
        {"id": "local", "ping_url": f"{backend.ctx.base_url}/ping"}]})


async def ping(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def sessions_request(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT, required=False))
    latencies = body.get("region_latencies")
    if latencies is not None:
        if not isinstance(latencies, dict):
            raise validation_error(["body", "region_latencies"], "Input should be a valid "
                                   "dictionary", "dict_type")
        for region, value in latencies.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise validation_error(["body", "region_latencies", region],
                                       "Input should be a valid number", "float_type")
    alloc = backend.allocate(key_id)
    log.info("allocation %s (slot %d) for %s", alloc.session_id, alloc.slot, key_id)
    return web.json_response({
        "session_id": alloc.session_id,
        "signalling_url": backend.ctx.signaling_url,
        "capabilities": {"image_to_video": True},
        "streamer_id": f"local-streamer-{alloc.slot}",
        "model": "odyssey-local",
        "region": "local",
    })


async def sessions_token(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT))
    session_id = body.get("session_id")
    if "session_id" not in body:
        raise validation_error(["body", "session_id"], "Field required", "missing")
    if not isinstance(session_id, str):
        raise validation_error(["body", "session_id"], "Input should be a valid string",
                               "string_type")
    alloc = backend.allocations.get(session_id)
    if alloc is None or alloc.key_id != key_id:
        raise ApiError(404, "Session not found")
    ttl = backend.config.session_token_ttl
    return web.json_response({
        "session_token": backend.tokens.issue_session(session_id, key_id, ttl),
        "expires_in": ttl})


def _own_stream(backend: LocalBackend, key_id: str, stream_id: str) -> Row:
    row = backend.store.stream(stream_id)
    # Someone else's stream answers like an unknown one: ids do not leak.
    if row is None or row["key_id"] != key_id:
        raise ApiError(404, "Recording not found")
    return row


async def get_recording(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    row = _own_stream(backend, key_id, request.match_info["stream_id"])
    return web.json_response(backend.recording_json(row))


async def list_stream_recordings(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    limit = query_int(request, "limit", 20, 1, 100)
    offset = query_int(request, "offset", 0, 0)
    rows, total = backend.store.streams_of_key(key_id, limit, offset)
    return web.json_response({
        "recordings": [{"stream_id": r["stream_id"], "width": r["width"],
                        "height": r["height"], "started_at": r["started_at"],
                        "ended_at": r["ended_at"], "duration_seconds": r["duration_seconds"]}
                       for r in rows],
        "total": total, "limit": limit, "offset": offset})


async def get_media(request: web.Request) -> web.StreamResponse:
    """Serve a recording file behind an expiring HMAC signature.

    The file is found from (stream row in the DB, kind from a fixed table):
    nothing in the URL ever becomes part of a filesystem path.
    """
    backend = backend_of(request)
    stream_id = request.match_info["stream_id"]
    kind = request.match_info["kind"]
    if kind not in MEDIA_KINDS:
        raise ApiError(404, "Not Found")
    if not auth.verify_resource_signature(backend.ctx.secret, stream_id, kind,
                                          request.query.get("expires"),
                                          request.query.get("sig")):
        raise ApiError(403, "Invalid or expired signature")
    row = backend.store.stream(stream_id)
    if row is None:
        raise ApiError(404, "Not Found")
    if kind == "events":
        return web.json_response(backend.events_json(row))
    path = backend.media_paths(row["media_key"])[kind]
    if row["render_state"] != "ready" or not path.is_file():
        raise ApiError(404, "Not Found")
    response = web.FileResponse(path)
    response.content_type = MEDIA_KINDS[kind][1]
    return response


async def telemetry(request: web.Request) -> web.StreamResponse:
    # Fire-and-forget from the Py client; body ignored, but bounded.
    if request.content_length is not None and request.content_length > SMALL_BODY_LIMIT:
        raise ApiError(413, "Request body too large")
    await read_limited(request.content, SMALL_BODY_LIMIT)
    return web.json_response({"status": "ok"})


async def admin_set_faults(request: web.Request) -> web.StreamResponse:
    backend = _admin(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT))
    changes = _validate_faults(body)
    backend.ctx.faults.set(**changes)
    log.info("faults set: %s", ", ".join(sorted(changes)) or "(none)")
    return web.json_response(backend.ctx.faults.as_dict())


async def admin_clear_faults(request: web.Request) -> web.StreamResponse:
    backend = _admin(request)
    backend.ctx.faults.clear()
    return web.json_response(backend.ctx.faults.as_dict())


async def admin_add_key(request: web.Request) -> web.StreamResponse:
    """Register another API key (a separate account) on a running server."""
    backend = _admin(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT))
    key = body.get("api_key")
    if not isinstance(key, str) or not key:
        raise validation_error(["body", "api_key"], "Input should be a non-empty string",
                               "string_type")
    key_hash = auth.hash_api_key(key)
    key_id = auth.key_id_for(key_hash)
    backend.store.add_key(key_hash, key_id, "admin")
    log.info("API key %s registered", key_id)
    return web.json_response({"key_id": key_id}, status=201)


async def admin_state(request: web.Request) -> web.StreamResponse:
    return web.json_response(_admin(request).state_json())


def _admin(request: web.Request) -> LocalBackend:
    backend = backend_of(request)
    if not request.headers.get("Authorization"):
        raise ApiError(401, "Not authenticated", {"WWW-Authenticate": "Bearer"})
    if not backend.is_admin(request):
        raise ApiError(403, "Admin routes need the server's API key")
    return backend


def _validate_faults(body: dict[str, Any]) -> dict[str, Any]:
    """Check names and value types against :class:`Faults` before touching it."""
    defaults = Faults().as_dict()
    annotations = {name: str(tp) for name, tp in Faults.__annotations__.items()}
    changes: dict[str, Any] = {}
    for name, value in body.items():
        if name not in defaults:
            raise validation_error(["body", name], f"unknown fault {name!r}", "extra_forbidden")
        kind = annotations[name]
        ok = (value is None and "None" in kind) or (
            kind.startswith("int") and isinstance(value, int) and not isinstance(value, bool)
            and value >= 0) or (
            kind.startswith("float") and isinstance(value, (int, float))
            and not isinstance(value, bool) and value >= 0) or (
            kind.startswith("str") and isinstance(value, str)) or (
            kind.startswith("bool") and isinstance(value, bool)) or (
            kind.startswith("dict") and isinstance(value, dict))
        if not ok:
            raise validation_error(["body", name], f"expected {kind}", "type_error")
        changes[name] = value
    return changes


def build_app(backend: LocalBackend) -> web.Application:
    """The aiohttp application of one server (HTTP half + real-time half if present)."""
    from . import simulations

    app = web.Application(
        client_max_size=LARGE_BODY_LIMIT + (1 << 20),
        middlewares=[cors_middleware, error_middleware, merge_slashes_middleware])
    app[BACKEND_KEY] = backend
    r = app.router
    r.add_post("/auth/token", auth_token)
    r.add_get("/regions", regions)
    r.add_get("/ping", ping)
    r.add_post("/sessions/request", sessions_request)
    r.add_post("/sessions/token", sessions_token)
    r.add_get("/recordings/{stream_id}", get_recording)
    r.add_get("/stream-recordings", list_stream_recordings)
    r.add_get("/media/{stream_id}/{kind}", get_media)
    r.add_post("/telemetry", telemetry)
    r.add_post("/_admin/faults", admin_set_faults)
    r.add_delete("/_admin/faults", admin_clear_faults)
    r.add_get("/_admin/state", admin_state)
    r.add_post("/_admin/api-keys", admin_add_key)
    simulations.add_routes(app)
    try:
        from .signaling import setup_realtime
    except ModuleNotFoundError as exc:
        # The real-time half is another engineer's module; the HTTP API works
        # (and is tested) without it.
        if exc.name != f"{__package__}.signaling":
            raise
        log.debug("real-time half not available: HTTP API only")
    else:
        setup_realtime(app, backend.ctx)
    return app

