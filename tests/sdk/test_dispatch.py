"""Dispatcher: ordered events, latest-wins video, errors reported, stop from inside."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from odyssey_sync._dispatch import Dispatcher, percentile


@dataclass
class FakeFrame:
    seq: int
    received_at: float = field(default_factory=time.monotonic)
    released: bool = False

    def release(self) -> None:
        self.released = True


class FakeRing:
    """Minimal FrameSource: a newest-frame slot with a condition variable."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest: FakeFrame | None = None
        self.handed: list[FakeFrame] = []

    def write(self, seq: int) -> None:
        with self._cond:
            self._latest = FakeFrame(seq)
            self._cond.notify_all()

    def wait_newer(self, after_seq: int, timeout: float | None = None) -> FakeFrame | None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._latest is not None and self._latest.seq > after_seq, timeout
            )
            if not ok or self._latest is None:
                return None
            self.handed.append(self._latest)
            return self._latest


def test_events_run_in_order_on_one_named_thread() -> None:
    d = Dispatcher("t")
    d.start()
    seen: list[tuple[int, str]] = []
    for i in range(100):
        d.post(lambda i=i: seen.append((i, threading.current_thread().name)))
    d.stop()
    assert [i for i, _ in seen] == list(range(100))
    assert {name for _, name in seen} == {"t-events"}


def test_raising_callback_is_reported_and_delivery_goes_on() -> None:
    errors: list[tuple[BaseException, str]] = []
    d = Dispatcher("t", on_callback_error=lambda e, n: errors.append((e, n)))
    d.start()
    seen: list[int] = []

    def bad() -> None:
        raise ValueError("user bug")

    d.post(bad, name="on_stream_started")
    d.post(seen.append, 1)
    d.stop()
    assert seen == [1]
    assert len(errors) == 1 and isinstance(errors[0][0], ValueError)
    assert errors[0][1] == "on_stream_started"
    assert d.stats().callback_errors == 1


def test_raising_error_hook_does_not_kill_worker() -> None:
    def hook(exc: BaseException, name: str) -> None:
        raise RuntimeError("hook bug")

    d = Dispatcher("t", on_callback_error=hook)
    d.start()
    seen: list[int] = []
    d.post(lambda: 1 / 0)
    d.post(seen.append, 2)
    d.stop()
    assert seen == [2]


def test_post_none_is_ignored_and_queue_is_bounded() -> None:
    d = Dispatcher("t", max_events=2)
    assert d.post(None) is False
    # not started: nothing drains, so the third post is dropped and counted
    assert d.post(print, "a")
    assert d.post(print, "b")
    assert d.post(print, "c") is False
    assert d.stats().events_dropped == 1
    d.stop(drain=False)


def test_stop_from_inside_a_callback_does_not_deadlock() -> None:
    d = Dispatcher("t")
    d.start()
    done = threading.Event()

    def cb() -> None:
        d.stop()
        done.set()

    d.post(cb)
    assert done.wait(2.0)
    d.stop()  # from the test thread: joins
    assert d._event_thread is not None and not d._event_thread.is_alive()


def test_post_after_stop_is_dropped() -> None:
    d = Dispatcher("t")
    d.start()
    d.stop()
    assert d.post(print) is False
    with pytest.raises(RuntimeError):
        d.start()


def test_video_worker_is_latest_wins_and_releases() -> None:
    ring = FakeRing()
    d = Dispatcher("t")
    d.start()
    got: list[int] = []
    first = threading.Event()
    gate = threading.Event()

    def slow(frame: FakeFrame) -> None:
        got.append(frame.seq)
        first.set()
        gate.wait(2.0)

    d.start_video(ring, slow)
    ring.write(1)
    assert first.wait(2.0)
    for seq in range(2, 7):  # written while the callback is busy
        ring.write(seq)
    gate.set()
    deadline = time.monotonic() + 2.0
    while got[-1] != 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    d.stop()
    assert got == [1, 6]
    stats = d.stats()
    assert stats.delivered == 2 and stats.skipped == 4
    assert all(f.released for f in ring.handed)
    assert [t.name for t in threading.enumerate() if t.name.startswith("t-")] == []


def test_video_callback_error_is_reported_and_frame_released() -> None:
    ring = FakeRing()
    errors: list[str] = []
    d = Dispatcher("t", on_callback_error=lambda e, n: errors.append(n))
    d.start()
    d.start_video(ring, lambda f: 1 / 0)
    ring.write(1)
    deadline = time.monotonic() + 2.0
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    d.stop()
    assert errors == ["on_video_frame"]
    assert ring.handed and all(f.released for f in ring.handed)


def test_shared_worker_coalesces_frames_on_event_thread() -> None:
    ring = FakeRing()
    d = Dispatcher("t", share_worker=True)
    d.start()
    got: list[tuple[int, str]] = []
    d.start_video(ring, lambda f: got.append((f.seq, threading.current_thread().name)))
    for seq in range(1, 4):
        ring.write(seq)
        d.notify_frame()
    d.stop()
    assert got and got[-1][0] == 3
    assert {name for _, name in got} == {"t-events"}
    assert all(f.released for f in ring.handed)


def test_idle_video_worker_waits_instead_of_spinning() -> None:
    """Before the first frame the worker must block in wait_newer, not poll in a
    tight loop (which starved every other thread of the GIL while connecting)."""
    from odyssey_sync._frames import FrameRing

    ring = FrameRing()
    calls = 0
    real_wait = ring.wait_newer

    def counting_wait(after_seq: int, timeout: float | None = None) -> object:
        nonlocal calls
        calls += 1
        return real_wait(after_seq, timeout)

    ring.wait_newer = counting_wait  # type: ignore[method-assign]
    d = Dispatcher("t")
    d.start()
    d.start_video(ring, lambda f: None)
    time.sleep(0.5)
    d.stop()
    ring.close()
    # The worker wakes once per poll interval (0.25 s by default) to check for stop.
    assert calls <= 10, f"idle video worker called wait_newer {calls} times in 0.5 s"


def test_percentile() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(map(float, range(101))), 99) == 99.0
