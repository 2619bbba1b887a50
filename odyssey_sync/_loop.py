"""A background thread owning one asyncio loop, behind blocking doors.

The synchronous facades (:class:`odyssey_sync.Odyssey`, the spectator) run
aiortc on a :class:`LoopThread` and talk to it only through three thread-safe
doors:

* :meth:`LoopThread.submit` — run a coroutine on the loop and block the caller
  until it finishes, with a timeout that cancels the coroutine on expiry;
* :meth:`LoopThread.call_soon` — schedule a plain callable on the loop
  (never blocks; used by other threads such as the signaling reader);
* :meth:`LoopThread.stop` — cancel what is left, close the loop, join.

The shape follows anyio's ``BlockingPortal``: the caller starts the thread and
blocks on a :class:`concurrent.futures.Future` that resolves to *ready* or to
the exception the loop raised while starting, and a guard refuses blocking
calls made from the loop thread itself (the classic self-deadlock).

Nothing here knows about Odyssey; the module is reused by every facade.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import OdysseyConnectionError, OdysseyTimeoutError

__all__ = ["LoopThread"]

log = logging.getLogger("odyssey_sync.loop")

T = TypeVar("T")


class LoopThread:
    """One named daemon thread running an asyncio event loop.

    The thread is a daemon so that a forgotten facade can never keep the
    interpreter alive; orderly shutdown is the facade's job (``disconnect()``,
    ``__exit__`` and the exit hook call :meth:`stop`).

    Thread safety: every public method may be called from any thread; the
    blocking ones (:meth:`start`, :meth:`submit`, :meth:`stop`) refuse to run
    on the loop thread itself.
    """

    def __init__(self, name: str = "odyssey-loop") -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("name must be a non-empty string")
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    # ------------------------------------------------------------------ state
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (``RuntimeError`` before :meth:`start` / after :meth:`stop`)."""
        loop = self._loop
        if loop is None or self._stopped:
            raise RuntimeError(f"{self.name} is not running")
        return loop

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`stop`."""
        return self._loop is not None and not self._stopped and not self._loop.is_closed()

    def in_loop_thread(self) -> bool:
        """True when called on this object's loop thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def _refuse_own_thread(self, what: str) -> None:
        if self.in_loop_thread():
            raise RuntimeError(
                f"{what} is a blocking call and was made from the event-loop thread "
                f"{self.name!r}; it would deadlock waiting for itself. Call it from another "
                "thread (user callbacks run on dispatcher threads, where it is allowed)."
            )

    # -------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and block until its loop runs (ready-or-raise).

        Blocking, caller's thread. ``timeout`` bounds the wait for the loop to
        come up (:class:`OdysseyTimeoutError` after it). An exception raised
        while the loop starts is re-raised here, in the caller's thread.
        Calling ``start`` twice, or after :meth:`stop`, raises ``RuntimeError``.
        """
        self._refuse_own_thread("LoopThread.start()")
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"{self.name} was already started (a LoopThread runs once)")
            ready: concurrent.futures.Future[asyncio.AbstractEventLoop]
            ready = concurrent.futures.Future()
            # daemon: a facade the user forgot to close must not block interpreter exit.
            self._thread = threading.Thread(
                target=self._run, args=(ready,), name=self.name, daemon=True
            )
            self._thread.start()
        try:
            self._loop = ready.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            raise OdysseyTimeoutError(f"{self.name} did not start within {timeout:g} s") from exc

    def _run(self, ready: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        try:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
        except BaseException as exc:  # surfaces in start(), in the caller's thread
            ready.set_exception(exc)
            return
        loop.call_soon(ready.set_result, loop)
        try:
            loop.run_forever()
        finally:
            try:
                self._cancel_remaining(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            except BaseException:  # teardown must finish; log what it could not do
                log.debug("%s: error while closing the loop", self.name, exc_info=True)
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    @staticmethod
    def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            # Give cancelled tasks one bounded chance to run their finally blocks.
            loop.run_until_complete(asyncio.wait(tasks, timeout=2.0))

    @property
    def alive(self) -> bool:
        """Whether the loop's thread is still running (also while stopping)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def stop(self, timeout: float = 5.0) -> bool:
        """Cancel remaining tasks, close the loop and join the thread.

        Blocking, any thread but the loop's (``RuntimeError`` there). Idempotent;
        a no-op when never started. ``timeout`` bounds the join; a thread still
        alive after it is logged and left (it is a daemon) rather than hanging
        the caller. Returns True when the thread is gone (or never ran).
        """
        self._refuse_own_thread("LoopThread.stop()")
        with self._lock:
            already = self._stopped
            self._stopped = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return True
        if already:
            thread.join(timeout)
            return not thread.is_alive()
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "%s did not stop within %.1f s; leaving the daemon thread", self.name, timeout
            )
        return not thread.is_alive()

    # ------------------------------------------------------------------ doors
    def submit(
        self,
        coro: Coroutine[Any, Any, T],
        timeout: float | None,
        *,
        what: str = "operation",
    ) -> T:
        """Run ``coro`` on the loop; block until it returns and give its result.

        Blocking, any thread but the loop's (``RuntimeError`` there: it would
        deadlock). ``timeout=None`` waits without limit; a number bounds the
        wait: on expiry the coroutine is cancelled and
        :class:`OdysseyTimeoutError` (naming ``what``) is raised. Exceptions of
        the coroutine propagate unchanged. After :meth:`stop`,
        :class:`OdysseyConnectionError` is raised and the coroutine is closed.
        """
        try:
            self._refuse_own_thread(f"{what} (LoopThread.submit)")
            loop = self.loop
        except RuntimeError as exc:
            coro.close()  # never-awaited coroutine warnings would hide the real error
            if self.in_loop_thread():
                raise
            raise OdysseyConnectionError(f"{what}: not connected (event loop stopped)") from exc
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError as exc:  # loop closed between the check and the call
            coro.close()
            raise OdysseyConnectionError(f"{what}: not connected (event loop stopped)") from exc
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            # Cancelling the concurrent future cancels the task on the loop.
            fut.cancel()
            raise OdysseyTimeoutError(f"{what} timed out after {timeout:g} s") from exc
        except concurrent.futures.CancelledError as exc:
            raise OdysseyConnectionError(f"{what} was cancelled (connection closing)") from exc

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Schedule ``fn(*args)`` on the loop; never blocks, any thread.

        Returns False (and drops the call) when the loop is not running, so
        late events from a closing socket are simply discarded.
        """
        loop = self._loop
        if loop is None or self._stopped:
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed under our feet
            return False
        return True

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._stopped else "idle")
        return f"<LoopThread {self.name!r} {state}>"
