"""LoopThread: one test per edge case (start, submit, timeout, own-thread guard, stop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from odyssey_sync._loop import LoopThread
from odyssey_sync.errors import OdysseyConnectionError, OdysseyTimeoutError


async def wait_until_cancelled(cancelled: threading.Event) -> None:
    """Wait forever; set *cancelled* when cancelled."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.set()
        raise


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    loop_thread = LoopThread("test-loop")
    loop_thread.start()
    yield loop_thread
    loop_thread.stop()


def test_thread_is_named_daemon_and_joined_on_stop() -> None:
    lt = LoopThread("named-loop")
    lt.start()
    threads = [t for t in threading.enumerate() if t.name == "named-loop"]
    assert len(threads) == 1 and threads[0].daemon
    lt.stop()
    assert not threads[0].is_alive()
    assert not lt.running


def test_submit_returns_result(lt: LoopThread) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert lt.submit(add(2, 3), 1.0) == 5


def test_submit_propagates_exception(lt: LoopThread) -> None:
    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        lt.submit(boom(), 1.0)


def test_submit_timeout_cancels_coroutine(lt: LoopThread) -> None:
    cancelled = threading.Event()
    with pytest.raises(OdysseyTimeoutError, match="slow thing timed out"):
        lt.submit(wait_until_cancelled(cancelled), 0.05, what="slow thing")
    assert cancelled.wait(2.0)


def test_timeout_error_is_builtin_timeout(lt: LoopThread) -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        lt.submit(forever(), 0.01)


def test_blocking_call_from_loop_thread_is_refused(lt: LoopThread) -> None:
    async def nested() -> str:
        async def inner() -> int:
            return 1

        coro = inner()
        try:
            lt.submit(coro, 1.0)
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    message = lt.submit(nested(), 1.0)
    assert "deadlock" in message and "test-loop" in message


def test_call_soon_runs_on_loop_thread(lt: LoopThread) -> None:
    seen: list[str] = []
    done = threading.Event()

    def record() -> None:
        seen.append(threading.current_thread().name)
        done.set()

    assert lt.call_soon(record)
    assert done.wait(1.0)
    assert seen == ["test-loop"]


def test_submit_after_stop_raises_connection_error() -> None:
    lt = LoopThread("stopped-loop")
    lt.start()
    lt.stop()

    async def noop() -> None:
        return None

    with pytest.raises(OdysseyConnectionError):
        lt.submit(noop(), 1.0)
    assert lt.call_soon(print) is False


def test_stop_is_idempotent_and_noop_when_never_started() -> None:
    lt = LoopThread("never")
    lt.stop()
    lt.stop()
    lt2 = LoopThread("twice")
    lt2.start()
    lt2.stop()
    lt2.stop()


def test_start_twice_raises(lt: LoopThread) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        lt.start()


def test_stop_cancels_pending_tasks() -> None:
    lt = LoopThread("cancel-loop")
    lt.start()
    cancelled = threading.Event()

    def spawn() -> None:
        asyncio.get_running_loop().create_task(wait_until_cancelled(cancelled))

    lt.call_soon(spawn)

    async def tick() -> None:
        await asyncio.sleep(0)

    lt.submit(tick(), 1.0)
    lt.stop()
    assert cancelled.is_set()


def test_bad_name_rejected() -> None:
    with pytest.raises(TypeError):
        LoopThread("")
