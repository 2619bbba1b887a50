"""``LocalOdyssey``: the embedded Odyssey-compatible server, in-process.

::

    with LocalOdyssey(size=(320, 176), fps=15, data_dir=tmp) as server:
        client = Odyssey(api_key=server.api_key, api_url=server.url)

The server runs one asyncio loop on a named background thread
(``odyssey-local-server``) that serves the HTTP half (:mod:`.http`: REST API,
simulation jobs) and the real-time half (:mod:`.realtime`: signaling, WebRTC
streamer, WHEP) on one port. State lives in SQLite
under ``data_dir`` (:mod:`.store`), so stopping and starting a server on the
same directory keeps keys, recordings and jobs. The loop's default executor
(renders, encodes, image decodes) is the server's own pool of
``odyssey-local-exec_N`` threads, all started by :meth:`LocalOdyssey.start`
and joined by :meth:`LocalOdyssey.stop`, so none appear later.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from . import auth
from .context import ServerConfig, ServerContext
from .datadir import DB_NAME, DataDirLock, default_data_dir, stored_or_new_key
from .faults import Faults
from .http.app import build_app
from .http.backend import LocalBackend
from .http.middleware import protocol_error_logger
from .limits import check_frame_size, check_seconds
from .realtime.signaling import REALTIME_KEY, RealtimeHub
from .store import Row, Store

__all__ = ["LocalOdyssey"]

log = logging.getLogger("odyssey_sync.local")

T = TypeVar("T")

#: threads of the loop's default executor (renders, encodes, image decodes,
#: getaddrinfo): the size asyncio would pick by default.
_EXECUTOR_WORKERS = min(32, (os.cpu_count() or 1) + 4)
#: longest wait at interpreter exit for a forgotten server's pending recordings
_EXIT_RENDER_WAIT = 30.0


def _prestarted_executor(workers: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool whose ``workers`` threads all exist when this returns.

    ``ThreadPoolExecutor`` creates threads lazily, one per submit that finds no
    idle worker, so a server's pool would otherwise grow in the middle of
    whatever runs later (a test's thread-leak check sees those as leaks).
    Each of ``workers`` tasks holds its thread at a barrier until all have
    arrived, which forces the pool to its full size; blocking ≤ 10 s.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    barrier = threading.Barrier(workers + 1, timeout=10.0)
    futures = [pool.submit(barrier.wait) for _ in range(workers)]
    try:
        barrier.wait()
        concurrent.futures.wait(futures, timeout=10.0)
    except threading.BrokenBarrierError:
        # Could not start every thread in time (an overloaded machine): the pool
        # still works, it only grows lazily again.
        log.warning("server executor: not all %d threads started in time", workers)
    return pool


def _check_config(config: ServerConfig) -> None:
    """Reject bad options in the caller's thread, before anything starts."""
    if not isinstance(config.host, str) or not config.host:
        raise TypeError("host must be a non-empty string")
    if isinstance(config.port, bool) or not isinstance(config.port, int) \
            or not 0 <= config.port <= 65535:
        raise ValueError("port must be an int in 0..65535")
    if config.api_key is not None and (not isinstance(config.api_key, str) or not config.api_key):
        raise ValueError("api_key must be a non-empty string or None")
    if isinstance(config.fps, bool) or not isinstance(config.fps, (int, float)) \
            or not 0 < config.fps <= 240:
        raise ValueError("fps must be a number in (0, 240]")
    check_frame_size(config.size)
    if config.codec not in ("vp8", "h264", "any"):
        raise ValueError("codec must be 'vp8', 'h264' or 'any'")
    for name in ("capacity", "max_concurrent_per_key", "auth_token_ttl", "session_token_ttl",
                 "signed_url_ttl"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1")
    for name in ("stream_limit", "connection_limit", "stale_session_timeout"):
        check_seconds(getattr(config, name), name)
    if config.quota_seconds is not None and (
            not isinstance(config.quota_seconds, (int, float)) or config.quota_seconds < 0):
        raise ValueError("quota_seconds must be a number >= 0 or None")


class LocalOdyssey:
    """An Odyssey-compatible server running on a background thread of this process.

    Construction does nothing but validate options; :meth:`start` (or
    ``with``) binds the socket and returns once the server is accepting
    connections, or raises the start-up error (e.g. ``OSError`` for a port in
    use) in the calling thread.

    Args:
        faults: a :class:`Faults` to share (default: a fresh one, see :attr:`faults`).
        extra_api_keys: more keys the server accepts besides :attr:`api_key`
            (each is a separate account: its own allocations, streams, jobs).
        allocation_timeout: seconds an allocation may wait for its signaling
            connection before its slot is reclaimed.
        job_delay: seconds a simulation job spends in ``pending`` and again in
            ``dispatched`` (so clients can observe and cancel those states).
        **options: fields of :class:`ServerConfig` (``host``, ``port``,
            ``api_key``, ``data_dir``, ``fps``, ``size``, ``codec``,
            ``capacity``, ``stream_limit``, ``connection_limit``,
            ``stale_session_timeout``, ...). Unknown names raise ``TypeError``;
            bad values ``ValueError`` naming the allowed range (``size`` below
            160×96, for one). ``session_timeout`` is the deprecated name of
            ``stream_limit`` (a ``DeprecationWarning``).

    Service limits (PROTOCOL §17), with the service's defaults:
    ``stream_limit=150.0`` seconds per stream (then ``interactive_stream_error``
    with reason ``session_timeout``, "Stream ended: credit lease expired", and
    the server closes the connection), ``connection_limit=3600.0`` seconds per
    connection, and ``stale_session_timeout=30.0``: how long a session whose
    client vanished without ``client_disconnecting`` keeps its capacity slot.
    """

    def __init__(self, *, faults: Faults | None = None, extra_api_keys: Iterable[str] = (),
                 allocation_timeout: float = 60.0, job_delay: float = 0.2,
                 **options: Any) -> None:
        if "data_dir" in options and options["data_dir"] is not None:
            options["data_dir"] = Path(options["data_dir"])
        if "size" in options and isinstance(options["size"], list):
            options["size"] = tuple(options["size"])
        if "session_timeout" in options:
            warnings.warn("LocalOdyssey(session_timeout=...) is deprecated; use stream_limit=",
                          DeprecationWarning, stacklevel=2)
            legacy = options.pop("session_timeout")
            options.setdefault("stream_limit", legacy)
        self._config = ServerConfig(**options)
        _check_config(self._config)
        if faults is not None and not isinstance(faults, Faults):
            raise TypeError("faults must be a Faults instance")
        extra = list(extra_api_keys)
        if not all(isinstance(k, str) and k for k in extra):
            raise TypeError("extra_api_keys must be non-empty strings")
        if allocation_timeout <= 0 or job_delay < 0:
            raise ValueError("allocation_timeout must be > 0 and job_delay >= 0")
        self._faults = faults if faults is not None else Faults()
        self._extra_keys = extra
        self._allocation_timeout = float(allocation_timeout)
        self._job_delay = float(job_delay)
        self._data_dir = self._config.data_dir or default_data_dir()
        self._api_key: str | None = None
        self._url = ""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: Store | None = None
        self._backend: LocalBackend | None = None
        self._runner: web.AppRunner | None = None
        self._stopped = False
        self._dir_lock = DataDirLock(self._data_dir)
        self._sole_user = True

    def __repr__(self) -> str:  # no API key here, ever
        state = "running" if self.running else "stopped"
        return f"<LocalOdyssey {self._url or '(not started)'} {state}>"

    # -- properties ---------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the API (``http://127.0.0.1:PORT``); "" before :meth:`start`."""
        return self._url

    @property
    def api_key(self) -> str:
        """The server's development API key (fixed by ``api_key=`` or generated and kept
        in ``data_dir``). Raises ``RuntimeError`` before :meth:`start`."""
        if self._api_key is None:
            raise RuntimeError("the server has not been started")
        return self._api_key

    @property
    def faults(self) -> Faults:
        """The live fault switches (thread-safe; changes apply to the next request)."""
        return self._faults

    @property
    def config(self) -> ServerConfig:
        return self._config

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def sessions_in_use(self) -> int:
        """Capacity slots held right now: live sessions, sessions waiting for their
        signaling socket, and stale ones (client vanished, within
        ``stale_session_timeout``). Non-blocking, any thread; 0 before :meth:`start`."""
        return self._backend.sessions_in_use if self._backend is not None else 0

    @property
    def free_capacity(self) -> int:
        """``capacity - sessions_in_use``: sessions a client could be given now.
        Non-blocking, any thread."""
        return self._config.capacity - self.sessions_in_use

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    @property
    def context(self) -> ServerContext:
        """The shared :class:`ServerContext` (advanced use and tests)."""
        return self._require_backend().ctx

    @property
    def backend(self) -> LocalBackend:
        """The HTTP half's state object (advanced use and tests)."""
        return self._require_backend()

    @property
    def realtime(self) -> RealtimeHub:
        """The real-time half: live signaling connections and their streamers
        (advanced use and tests; its objects belong to the server's loop thread)."""
        if self._runner is None:
            raise RuntimeError("the server has not been started")
        return self._runner.app[REALTIME_KEY]

    def _require_backend(self) -> LocalBackend:
        if self._backend is None:
            raise RuntimeError("the server has not been started")
        return self._backend

    # -- lifecycle ----------------------------------------------------------
    def start(self, timeout: float = 30.0) -> LocalOdyssey:
        """Start serving; blocks until listening (at most ``timeout`` seconds).

        Returns ``self``. Raises the start-up error in this thread (``OSError``
        when the port is taken, ``sqlite3.Error`` for an unusable data
        directory), ``TimeoutError`` when not
        ready in time, ``RuntimeError`` when started twice.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("LocalOdyssey can be started only once")
            self._prepare_state()
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            self._thread = threading.Thread(target=self._thread_main, args=(ready,),
                                            name="odyssey-local-server", daemon=True)
            # daemon: a test that forgets stop() must not hang interpreter exit;
            # stop() still joins it explicitly.
            self._thread.start()
        try:
            ready.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self.stop()
            raise TimeoutError(f"local server not ready after {timeout:g} s") from None
        except BaseException:
            self._thread.join(timeout=10.0)
            self._close_store()
            self._stopped = True
            raise
        _finish_renders_at_exit(self)
        log.info("local Odyssey server listening on %s (data: %s)", self._url, self._data_dir)
        return self

    def _prepare_state(self) -> None:
        """Open the store and register keys (caller's thread, before the loop starts)."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._sole_user = self._dir_lock.acquire()
        try:
            store = Store(self._data_dir / DB_NAME)
        except BaseException:
            self._dir_lock.release()
            raise
        try:
            key = self._config.api_key or stored_or_new_key(self._data_dir,
                                                            auth.generate_api_key())
            primary_hash = auth.hash_api_key(key)
            store.add_key(primary_hash, auth.key_id_for(primary_hash), "primary")
            for extra in self._extra_keys:
                h = auth.hash_api_key(extra)
                store.add_key(h, auth.key_id_for(h), "extra")
            self._api_key = key
            self._backend = LocalBackend(
                self._config, self._faults, store, self._data_dir,
                primary_key_id=auth.key_id_for(primary_hash),
                allocation_timeout=self._allocation_timeout, job_delay=self._job_delay)
        except BaseException:
            store.close()
            self._dir_lock.release()
            raise
        self._store = store

    def _thread_main(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                # The loop's own named executor, fully started before the server
                # is reported ready (see _prestarted_executor); shut down and
                # joined with the loop below.
                loop.set_default_executor(
                    _prestarted_executor(_EXECUTOR_WORKERS, "odyssey-local-exec"))
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                ready.set_exception(exc)
                loop.run_until_complete(self._teardown())
                return
            ready.set_result(None)
            loop.run_forever()
            loop.run_until_complete(self._teardown())
        except Exception:  # pragma: no cover - teardown bugs must not kill silently
            log.exception("local server loop crashed")
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                # getaddrinfo() of aiohttp clients (script_url fetches) runs on
                # the loop's default executor: join its threads too.
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self) -> None:
        backend = self._require_backend()
        if self._sole_user:
            backend.recover()
        else:
            log.warning("data directory %s is in use by another server: skipping restart "
                        "recovery", self._data_dir)
        backend.start_housekeeping()
        app = build_app(backend)
        # shutdown_timeout bounds how long stop() waits for requests in flight
        # (a long download, a client that never reads) before closing them.
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=3.0, logger=protocol_error_logger())
        self._runner = runner
        await runner.setup()
        site = web.TCPSite(runner, self._config.host, self._config.port,
                           reuse_address=True)
        await site.start()
        sockname = runner.addresses[0]
        port = int(sockname[1])
        host = self._config.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"  # a wildcard bind is reached through loopback here
        if ":" in host:
            host = f"[{host}]"
        self._url = f"http://{host}:{port}"
        backend.ctx.base_url = self._url

    async def _teardown(self) -> None:
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner.cleanup(), timeout=10.0)
            except Exception:
                log.exception("error while closing the HTTP server")
        if self._backend is not None:
            await self._backend.shutdown()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the server thread (idempotent, blocking ≤ ~``timeout`` s).

        Live allocations are dropped, running renders are allowed to finish
        (bounded by the join), and the SQLite connection is closed.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            thread, loop = self._thread, self._loop
        if thread is None:
            self._close_store()
            return
        if threading.current_thread() is thread:
            raise RuntimeError("stop() called from the server's own loop thread")
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed in between
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("local server thread did not stop within %.1f s", timeout)
        if self._backend is not None:
            self._join_renders(timeout)
        self._close_store()

    def _join_renders(self, timeout: float) -> None:
        # Wait (bounded) for a render that may be mid-file, so that normally
        # nothing writes into data_dir after stop() returns. A render still
        # running after the timeout finishes on its own; its stream stays in
        # state "rendering" and is rendered again by the next start.
        assert self._backend is not None
        pool = self._backend.render_pool
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        # ThreadPoolExecutor.shutdown() has no timeout; join its workers ourselves.
        for worker in list(getattr(pool, "_threads", ())):
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("a recording render is still running after stop(); it will "
                            "be redone on the next start")

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
        self._dir_lock.release()

    def __enter__(self) -> LocalOdyssey:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- helpers for tests and tools -----------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0,
             **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the server loop thread and return its result.

        Blocking (≤ ``timeout`` s). Use it to drive the :class:`StreamSink` the way
        the real-time half does (``server.call(server.context.sink.stream_ended, ...)``).
        Raises ``RuntimeError`` if called from the loop thread itself or when not
        running, ``TimeoutError`` on timeout, and
        whatever ``fn`` raises.
        """
        loop = self._loop
        if loop is None or not self.running:
            raise RuntimeError("the server is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("call() from the server loop thread would deadlock")

        async def invoke() -> T:
            return fn(*args, **kwargs)

        future = asyncio.run_coroutine_threadsafe(invoke(), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"server call timed out after {timeout:g} s") from None

    def wait_for_recording(self, stream_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Block until the recording of ``stream_id`` is rendered (or failed/disabled).

        Returns the stream's stored row (``render_state``, ``frame_count``,
        ``duration_seconds``, ``width``, ``height``, ...). Raises
        ``TimeoutError`` after ``timeout``
        seconds (also for an unknown stream id).
        """
        row: Row = self._require_backend().wait_for_recording(stream_id, timeout)
        return dict(row)


def _finish_renders_at_exit(server: LocalOdyssey) -> None:
    """At interpreter exit, let ``server`` finish the recordings it has pending.

    Registered with ``threading``'s exit hooks, which run before those of
    ``concurrent.futures`` (they run in reverse order of registration, and
    that module registers at import) while the server's threads still run:
    a recording scheduled or rendering when the program ends without
    :meth:`LocalOdyssey.stop` is finished and recorded instead of dying with
    "cannot schedule new futures after shutdown". The server keeps serving
    meanwhile (forgotten clients' own exit hooks may still disconnect from
    it). Bounded (30 s), so a forgotten server never hangs exit; anything
    still pending then stays "rendering" in the store and the next start on
    the data directory renders it. Holds only a weak reference.
    """
    ref = weakref.ref(server)

    def hook() -> None:
        deadline = time.monotonic() + _EXIT_RENDER_WAIT
        while time.monotonic() < deadline:
            alive = ref()
            if alive is None or not alive.running or alive._backend is None \
                    or alive._backend.renders_pending == 0:
                return
            del alive
            time.sleep(0.02)

    register = getattr(threading, "_register_atexit", None)
    with contextlib.suppress(RuntimeError):  # registering during shutdown
        if register is None:  # pragma: no cover - CPython < 3.9
            import atexit

            atexit.register(hook)
        else:
            register(hook)
