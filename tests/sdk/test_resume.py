"""resume=True against the local server with short service limits (PROTOCOL §17)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from odyssey_sync.client import Odyssey
from odyssey_sync.errors import OdysseyConnectionError, OdysseyStreamError
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.local.render.stamp import decode_stamp
from odyssey_sync.types import ConnectionStatus

FPS = 15
SIZE = (320, 176)
STREAM_LIMIT = 3.0
CONNECTION_LIMIT = 8.0
LIMITS = {"stream_limit": STREAM_LIMIT, "connection_limit": CONNECTION_LIMIT,
          "stale_session_timeout": 2.0}

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120),
              pytest.mark.server_options(max_concurrent_per_key=4, **LIMITS)]


def _server(data_dir: Path, **options: Any) -> LocalOdyssey:
    """A server of this test's own (the module's ``server`` fixture has these limits too)."""
    return LocalOdyssey(size=SIZE, fps=FPS, capacity=4, max_concurrent_per_key=4,
                        recordings=False, data_dir=data_dir, **{**LIMITS, **options})


def _client(server: LocalOdyssey, **options: Any) -> Odyssey:
    options.setdefault("stream_limit", STREAM_LIMIT)
    options.setdefault("connection_limit", CONNECTION_LIMIT)
    options.setdefault("stall_timeout", 1.0)
    options.setdefault("resume_timeout", 20.0)
    return Odyssey(server.api_key, api_url=server.url, resume=True, **options)


class Statuses:
    def __init__(self) -> None:
        self.seen: list[ConnectionStatus] = []
        self.started: list[str] = []
        self.errors: list[tuple[Exception, bool]] = []
        self.reconnected = threading.Event()

    def on_status_change(self, status: ConnectionStatus, message: str | None) -> None:
        self.seen.append(status)
        if status is ConnectionStatus.CONNECTED and ConnectionStatus.RECONNECTING in self.seen:
            self.reconnected.set()

    def on_stream_started(self, stream_id: str) -> None:
        self.started.append(stream_id)

    def on_error(self, exc: Exception, fatal: bool) -> None:
        self.errors.append((exc, fatal))

    def callbacks(self) -> dict[str, Any]:
        return {"on_status_change": self.on_status_change,
                "on_stream_started": self.on_stream_started, "on_error": self.on_error}


def test_a_pull_loop_runs_across_planned_handovers(server: LocalOdyssey) -> None:
    """20 s of frames() over a 3 s stream limit and an 8 s connection limit."""
    seen = Statuses()
    by_stream: dict[str | None, list[int]] = defaultdict(list)
    gaps: list[float] = []
    with _client(server) as client:
        client.connect(**seen.callbacks())
        first = client.start_stream("a long walk", portrait=False)
        previous: tuple[str | None, float] | None = None
        end = time.monotonic() + 20.0
        for frame in client.frames(timeout=5.0):  # never raises across the seams
            stamp = decode_stamp(frame.data)
            assert stamp is not None
            by_stream[frame.stream_id].append(stamp.frame)
            if previous is not None and previous[0] != frame.stream_id:
                gaps.append(frame.received_at - previous[1])
            previous = (frame.stream_id, frame.received_at)
            if time.monotonic() > end:
                break
    ids = client.stream_ids
    stats = client.stats.resumes
    assert ids[0] == first and len(ids) >= 6, ids
    assert seen.started == ids
    assert None not in by_stream  # after start_stream: frames of the stream only
    for stream_id, numbers in by_stream.items():
        assert numbers == sorted(numbers), stream_id  # ordered within each stream
    assert len(gaps) >= 5 and max(gaps) < 0.150, gaps
    assert stats.planned >= 5 and stats.unplanned == 0 and stats.failed == 0
    assert not seen.errors
    assert ConnectionStatus.RECONNECTING not in seen.seen


@pytest.mark.parametrize("resume_image", ["last", "original"])
def test_the_next_stream_continues_the_picture(server: LocalOdyssey, resume_image: str) -> None:
    """Image-to-video from the last frame: the new stream starts where the old one was.

    The old stream runs on for a few frames while the new one starts (make
    before break), so the new stream's first frame is compared with the old
    stream's last frames, and with its first one; ``resume_image="original"``
    must give the opposite result (the world restarts).
    """
    by_stream: dict[str | None, list[np.ndarray]] = defaultdict(list)
    with _client(server, resume_image=resume_image) as client:
        client.connect()
        client.start_stream("continuity", portrait=False)
        for frame in client.frames(timeout=5.0):
            by_stream[frame.stream_id].append(frame.data.copy())
            if len(by_stream) == 2:
                break
    old, new = list(by_stream.values())
    band = SIZE[1] // 3  # below the stamp band at the top

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a[band:].astype(int) - b[band:].astype(int)).mean())

    to_end = min(distance(new[0], f) for f in old[-10:])
    to_start = distance(new[0], old[0])
    if resume_image == "last":
        assert to_end < to_start, (to_end, to_start)
    else:
        assert to_start < to_end, (to_end, to_start)


@pytest.mark.parametrize("fault", ["signaling", "video"])
def test_unplanned_endings_are_recovered(server: LocalOdyssey, fault: str) -> None:
    seen = Statuses()
    if fault == "signaling":
        # applies to sockets opened while it is set: only the first connection's
        server.faults.set(drop_signaling_after=1.5)
    with _client(server, stream_limit=None, connection_limit=None) as client:
        client.connect(**seen.callbacks())
        server.faults.set(drop_signaling_after=None)
        client.start_stream("weather the storm")
        assert client.get_latest_frame(timeout=5)
        if fault == "video":
            server.faults.set(stop_video=True)
            while ConnectionStatus.RECONNECTING not in seen.seen:
                time.sleep(0.05)
            server.faults.set(stop_video=False)
        assert seen.reconnected.wait(20), seen.seen
        assert client.is_connected and len(client.stream_ids) == 2
        frame = client.get_latest_frame(timeout=5)
        assert frame.stream_id == client.stream_ids[-1]
        frame.release()
        assert "still here" in client.interact("still here", timeout=10)
        assert client.stats.resumes.unplanned == 1
    assert not [e for e, fatal in seen.errors if fatal]


def test_a_server_restart_is_survived(tmp_path: Path) -> None:
    seen = Statuses()
    srv = _server(tmp_path / "data", stream_limit=600.0, connection_limit=3600.0)
    srv.start()
    port = int(srv.url.rsplit(":", 1)[1])
    try:
        with Odyssey(srv.api_key, api_url=srv.url, resume=True, stall_timeout=1.0,
                     resume_timeout=30.0, stream_limit=None, connection_limit=None) as client:
            client.connect(**seen.callbacks())
            client.start_stream("through a restart")
            assert client.get_latest_frame(timeout=5)
            srv.stop()
            srv = _server(tmp_path / "data", stream_limit=600.0, connection_limit=3600.0,
                          port=port)
            srv.start()
            assert seen.reconnected.wait(30), seen.seen
            frame = client.get_latest_frame(timeout=10)
            assert frame.stream_id == client.stream_ids[-1]
            frame.release()
    finally:
        srv.stop()


def test_an_interaction_during_recovery_completes_after_it(server: LocalOdyssey) -> None:
    seen = Statuses()
    with _client(server, stream_limit=None, connection_limit=None) as client:
        client.connect(**seen.callbacks())
        client.start_stream("patience")
        server.faults.set(stop_video=True)
        while ConnectionStatus.RECONNECTING not in seen.seen:
            time.sleep(0.02)
        server.faults.set(stop_video=False)
        ack = client.interact("made while reconnecting", timeout=20)
        assert "made while reconnecting" in ack
        assert seen.reconnected.is_set()


def test_disconnect_leaves_nothing_behind(server: LocalOdyssey) -> None:
    before = {t.name for t in threading.enumerate()}
    with _client(server) as client:
        client.connect()
        client.start_stream("tidy")
        time.sleep(STREAM_LIMIT + 1.0)  # at least one handover
        assert len(client.stream_ids) >= 2
    deadline = time.monotonic() + 5.0
    while server.free_capacity < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.free_capacity == 4
    leftover = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not [n for n in leftover if n.startswith("odyssey-")], leftover


def test_disconnect_during_recovery_ends_it_at_once(server: LocalOdyssey) -> None:
    seen = Statuses()
    client = _client(server, stream_limit=None, connection_limit=None)
    client.connect(**seen.callbacks())
    client.start_stream("interrupted")
    server.faults.set(refuse_sessions=1000, stop_video=True)
    while ConnectionStatus.RECONNECTING not in seen.seen:
        time.sleep(0.02)
    started = time.monotonic()
    client.close(timeout=10)
    assert time.monotonic() - started < 5.0
    assert client.current_status is ConnectionStatus.DISCONNECTED


def test_without_resume_the_stream_limit_ends_the_session(server: LocalOdyssey) -> None:
    """resume=False keeps today's behaviour: the stream ends, frames() stops."""
    ended = threading.Event()
    errors: list[tuple[str, str]] = []
    with Odyssey(server.api_key, api_url=server.url) as client:
        client.connect(on_disconnected=ended.set,
                       on_stream_error=lambda r, m: errors.append((r, m)))
        client.start_stream("short life")
        frames = sum(1 for _ in client.frames(timeout=10))
        assert ended.wait(10)
        assert frames > 0 and len(client.stream_ids) == 1
        assert errors == [("session_timeout", "Stream ended: credit lease expired")]
        with pytest.raises(OdysseyConnectionError):
            client.get_latest_frame(timeout=0)


def test_calls_after_the_server_ended_the_session_say_the_connection_was_lost(
    server: LocalOdyssey,
) -> None:
    """Without resume the stream limit ends the session; the next call says why."""
    with Odyssey(server.api_key, api_url=server.url) as client:
        ended = threading.Event()
        client.connect(on_disconnected=ended.set)
        client.start_stream("short life")
        assert ended.wait(10)
        with pytest.raises(OdysseyStreamError, match="connection was lost"):
            client.end_stream()


def test_a_late_handover_still_continues_the_session(server: LocalOdyssey) -> None:
    """The old stream ends before the handover is done: one session goes on, no fatal error."""
    seen = Statuses()
    with _client(server, handover_lead=0.05) as client:
        client.connect(**seen.callbacks())
        client.start_stream("cutting it close")
        end = time.monotonic() + 8.0
        for _frame in client.frames(timeout=5.0):
            if time.monotonic() > end:
                break
        assert client.is_connected
        assert len(client.stream_ids) >= 3
        assert len(set(client.stream_ids)) == len(client.stream_ids)
    assert not [e for e, fatal in seen.errors if fatal]
