"""Concurrency: many threads on one client, several clients, slow consumers, exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from odyssey_sync.client import Odyssey
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.local.render.stamp import decode_stamp
from tests.support import assert_in_order

pytestmark = pytest.mark.e2e

FPS = 15


def test_eight_threads_interacting_each_get_their_own_answer(server: LocalOdyssey) -> None:
    with Odyssey(server.api_key, api_url=server.url) as client:
        client.connect()
        client.start_stream("busy street")
        results: dict[int, list[str]] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def worker(n: int) -> None:
            try:
                barrier.wait(5)
                results[n] = [client.interact(f"thread {n} step {i}", timeout=20) for i in range(3)]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,), name=f"test-w{n}") for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        # The streamer answers in order; every caller got the ack of its own prompt.
        for n, acks in results.items():
            for i, ack in enumerate(acks):
                assert f"thread {n} step {i}" in ack, (n, i, ack)
        client.end_stream()


def test_concurrent_start_and_end_calls_are_matched(server: LocalOdyssey) -> None:
    with Odyssey(server.api_key, api_url=server.url) as client:
        client.connect()
        ids: list[str] = []
        lock = threading.Lock()

        def start_end() -> None:
            sid = client.start_stream("race")
            with lock:
                ids.append(sid)

        threads = [threading.Thread(target=start_end, name=f"test-s{n}") for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(ids) == 3 and all(ids)
        client.end_stream()


def test_four_clients_in_one_process(server: LocalOdyssey) -> None:
    clients = [Odyssey(server.api_key, api_url=server.url) for _ in range(4)]
    try:
        errors: list[BaseException] = []
        frames: dict[int, int] = {}

        def run(n: int, c: Odyssey) -> None:
            try:
                c.connect()
                c.start_stream(f"client {n}", portrait=False)
                seen = 0
                for _frame in c.frames(timeout=10):
                    seen += 1
                    if seen == 5:
                        break
                frames[n] = seen
                assert f"client {n}" in c.interact(f"client {n} moves")
                c.end_stream()
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(n, c), name=f"test-c{n}")
            for n, c in enumerate(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert frames == {0: 5, 1: 5, 2: 5, 3: 5}
        assert len({c.current_session_id for c in clients}) == 4
    finally:
        for c in clients:
            c.close()


def test_slow_frame_callback_keeps_the_stream_flowing(server: LocalOdyssey) -> None:
    delivered: list[int] = []

    def slow(frame: Any) -> None:
        delivered.append(frame.seq)
        time.sleep(0.2)

    with Odyssey(server.api_key, api_url=server.url) as client:
        client.connect(on_video_frame=slow)
        client.start_stream("slow consumer", portrait=False)
        # Pull frames meanwhile: they keep coming at the source rate, in order.
        numbers: list[int] = []
        for frame in client.frames(timeout=10):
            stamp = decode_stamp(frame.data, now=frame.received_at)
            if stamp is not None:
                numbers.append(stamp.frame)
            if len(numbers) >= 2 * FPS:
                break
        stats = client.stats
        assert_in_order(numbers, at_least=FPS)
        # ~2 s of video: the 200 ms callback saw only a handful, skipping the rest
        assert stats.received >= 2 * FPS - 2
        assert stats.delivered <= stats.received // 2
        assert stats.skipped > 0
        assert stats.callback_errors == 0
        # a held ring: never more slots than configured in use
        ring = client._session.ring if client._session else None
        assert ring is not None and ring.stats.held <= client.config.ring_size
        # interactions are not delayed by the slow callback
        assert client.interact("still responsive", timeout=5)
        client.end_stream()


def test_forgotten_client_does_not_hang_exit(server: LocalOdyssey) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent.parent)!r})
        from odyssey_sync.client import Odyssey
        c = Odyssey({server.api_key!r}, api_url={server.url!r})
        c.connect()
        c.start_stream("forgotten")
        print("streaming", flush=True)
        # no disconnect(): the exit hook must close the peer and the socket
        """
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "streaming" in proc.stdout
    assert time.monotonic() - started < 30
