"""Service limits (PROTOCOL §17) and the fault switches client tests rely on.

A real server over real sockets with limits of a second or two; the client is
the plain aiortc test peer (tests/local/rtc_peer.py), not the SDK.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from odyssey_sync.local import FaultValueError, LocalOdyssey
from tests.local.helpers import Api, local_server, open_peer, wait_until

pytestmark = pytest.mark.timeout(90)


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.mark.server_options(stream_limit=1.0, capacity=1)
def test_stream_limit_error_then_connection_closed_and_capacity_back(
        server: LocalOdyssey, api: Api) -> None:
    async def scenario() -> tuple[dict[str, Any], Any, float]:
        peer, _ = await open_peer(server, api)
        try:
            await peer.start_stream("a short life")
            started = time.monotonic()
            err = await peer.expect("interactive_stream_error", timeout=10)
            elapsed = time.monotonic() - started
            closed = await peer.expect_signal(timeout=10)
            return err, closed, elapsed
        finally:
            await peer.close()

    err, closed, elapsed = run(scenario())
    assert err == {"type": "interactive_stream_error", "reason": "session_timeout",
                   "message": "Stream ended: credit lease expired"}
    assert closed == {"type": "_closed", "code": 1000}
    assert 0.5 < elapsed < 5.0, elapsed
    # the server closed the connection: its slot is free at once, not stale
    wait_until(lambda: server.free_capacity == 1, 5, "capacity back to full")
    rows = [r for r in server.backend.store.recent_streams(5)]
    assert rows and rows[0]["ended_at"] is not None


@pytest.mark.server_options(connection_limit=1.5, capacity=1)
def test_connection_limit_closes_the_connection(server: LocalOdyssey, api: Api) -> None:
    async def scenario() -> tuple[Any, float]:
        peer, _ = await open_peer(server, api)
        opened = time.monotonic()
        try:
            await peer.start_stream("long haul")
            closed = await peer.expect_signal(timeout=10)
            return closed, time.monotonic() - opened
        finally:
            await peer.close()

    closed, elapsed = run(scenario())
    assert closed == {"type": "_closed", "code": 1000}
    assert 1.0 < elapsed < 6.0, elapsed
    wait_until(lambda: server.free_capacity == 1, 5, "capacity back to full")


@pytest.mark.server_options(stale_session_timeout=3.0, capacity=2)
def test_vanished_client_keeps_its_slot_until_the_stale_timeout(
        server: LocalOdyssey, api: Api) -> None:
    async def vanish() -> None:
        peer, _ = await open_peer(server, api)
        assert peer.ws is not None
        await peer.ws.close()  # no client_disconnecting: the client just goes away
        peer.ws = None
        await peer.close()

    async def leave_cleanly() -> None:
        peer, _ = await open_peer(server, api)
        await peer.close()  # sends client_disconnecting

    assert server.free_capacity == 2
    run(vanish())
    gone = time.monotonic()
    run(leave_cleanly())
    # the clean session is freed at once; the vanished one still holds its slot
    wait_until(lambda: server.sessions_in_use == 1, 2, "only the stale session left")
    assert time.monotonic() - gone < 2.9
    wait_until(lambda: server.free_capacity == 2, 10, "stale slot freed")
    assert time.monotonic() - gone >= 2.9


def test_session_timeout_is_a_deprecated_stream_limit(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="stream_limit"):
        server = LocalOdyssey(data_dir=tmp_path, size=(320, 176), session_timeout=7.0)
    assert server.config.stream_limit == 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LocalOdyssey(data_dir=tmp_path, size=(320, 176)).config.stream_limit == 150.0


@pytest.mark.parametrize("name", ["stream_limit", "connection_limit", "stale_session_timeout"])
@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), "5", True])
def test_limits_are_checked_at_construction(tmp_path: Path, name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        LocalOdyssey(data_dir=tmp_path, **{name: value})


def test_drop_acks_withholds_the_next_acknowledgements(server: LocalOdyssey, api: Api) -> None:
    async def scenario() -> None:
        peer, _ = await open_peer(server, api)
        try:
            server.faults.set(drop_acks=2)
            await peer.send({"type": "interactive_stream_start", "prompt": "quiet start"})
            await peer.wait_frames(3)  # the stream runs although stream_started was lost
            await peer.send({"type": "update", "prompt": "lost ack"})
            await peer.send({"type": "update", "prompt": "heard"})
            ack = await peer.expect("update_acknowledged")
            assert ack["prompt"].startswith("heard")
            assert peer.inbox.empty()
            assert server.faults.drop_acks == 0
            await peer.send({"type": "interactive_stream_end"})
            await peer.expect("stream_ended")
        finally:
            await peer.close()

    run(scenario())
    rows = server.backend.store.recent_streams(1)
    assert rows[0]["prompt"] == "quiet start"
    events = server.backend.store.events(rows[0]["stream_id"])
    assert [e["prompt"] for e in events if e["kind"] == "interact"] == ["lost ack", "heard"]


def test_drop_signaling_after_applies_to_an_open_connection(
        server: LocalOdyssey, api: Api) -> None:
    async def scenario() -> tuple[Any, float]:
        peer, _ = await open_peer(server, api)
        try:
            await peer.start_stream("mid-stream")
            await peer.wait_frames(3)
            set_at = time.monotonic()
            server.faults.set(drop_signaling_after=0.3)
            closed = await peer.expect_signal(timeout=10)
            return closed, time.monotonic() - set_at
        finally:
            await peer.close()

    closed, elapsed = run(scenario())
    server.faults.clear()
    assert closed == {"type": "_closed", "code": 1011}
    assert 0.2 < elapsed < 5.0, elapsed
    wait_until(lambda: server.free_capacity == server.config.capacity, 5, "slot freed")


def test_stop_video_mid_stream_pauses_and_resumes(server: LocalOdyssey, api: Api) -> None:
    async def scenario() -> tuple[int, int]:
        peer, _ = await open_peer(server, api)
        try:
            await peer.start_stream("pause me")
            await peer.wait_frames(3)
            server.faults.set(stop_video=True)
            await asyncio.sleep(0.3)  # frames in flight arrive
            before = len(peer.stamps)
            await asyncio.sleep(1.0)
            during = len(peer.stamps) - before
            server.faults.set(stop_video=False)
            await peer.wait_frames(3)
            return during, len(peer.stamps)
        finally:
            await peer.close()

    during, total = run(scenario())
    assert during == 0
    assert total > 6


def test_faults_are_range_checked_in_process(server: LocalOdyssey) -> None:
    for bad in ({"drop_acks": -1}, {"drop_acks": 10**12}, {"ack_delay": float("nan")},
                {"ack_delay": 1e9}, {"stop_video": 1}, {"drop_every": True},
                {"stream_error": "x" * 5000}, {"drop_signaling_after": -0.1}):
        with pytest.raises(FaultValueError):
            server.faults.set(**bad)
    assert server.faults.as_dict() == type(server.faults)().as_dict()  # nothing changed
    with pytest.raises(TypeError, match="unknown"):
        server.faults.set(no_such_fault=1)


def test_stop_and_start_again_on_the_same_port_and_data_dir(tmp_path: Path) -> None:
    with local_server(tmp_path) as first, Api(first) as api:
        port = int(first.url.rsplit(":", 1)[1])
        key = first.api_key
        api.allocate()
    with local_server(tmp_path, port=port) as second, Api(second) as api2:
        assert second.url == first.url and second.api_key == key
        assert second.free_capacity == second.config.capacity  # nothing carried over
        api2.allocate()
        assert second.sessions_in_use == 1
