"""Spectators (WHEP): URL and config handling, HTTP error mapping, and
end-to-end viewing of a broadcast stream of the local server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from odyssey_sync.errors import OdysseyAuthError, OdysseyConnectionError, OdysseyTimeoutError
from odyssey_sync.spectator import connect_to_stream


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"webrtc_url": 5}, TypeError),
        ({"webrtc_url": "ftp://h/x"}, ValueError),
        ({"webrtc_url": "http:///nohost"}, ValueError),
        ({"spectator_token": None}, TypeError),
        ({"spectator_token": "  "}, ValueError),
        ({"on_video_frame": "nope"}, TypeError),
        ({"on_disconnected": 3}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"timeout": "5"}, TypeError),
        ({"frame_format": "yuv"}, ValueError),
        ({"ring_size": 1}, ValueError),
        ({"ring_size": 2.5}, TypeError),
    ],
)
def test_bad_arguments_fail_before_any_network_call(kwargs: dict[str, Any], exc: type) -> None:
    args: dict[str, Any] = {"webrtc_url": "http://127.0.0.1:9/live/x", "spectator_token": "t"}
    args.update(kwargs)
    with pytest.raises(exc):
        connect_to_stream(**args)


# --------------------------------------------------------------------------- end to end


class Broadcast:
    """An owner client streaming with ``broadcast=True`` on a local server."""

    def __init__(self, owner: Any, info: Any, stream_id: str, server: Any) -> None:
        self.owner, self.info, self.stream_id, self.server = owner, info, stream_id, server


@pytest.fixture
def broadcast(tmp_path: Any) -> Iterator[Broadcast]:
    local = pytest.importorskip("odyssey_sync.local")
    client_mod = pytest.importorskip("odyssey_sync.client")
    pytest.importorskip("odyssey_sync._frames")
    ready = threading.Event()
    infos: list[Any] = []

    def on_broadcast_ready(info: Any) -> None:
        infos.append(info)
        ready.set()

    with local.LocalOdyssey(size=(320, 176), fps=15, data_dir=tmp_path / "srv") as server, \
            client_mod.Odyssey(server.api_key, api_url=server.url) as owner:
        owner.connect(on_broadcast_ready=on_broadcast_ready)
        stream_id = owner.start_stream("A harbour at dawn", portrait=False, broadcast=True)
        assert ready.wait(15), "no broadcast_ready"
        yield Broadcast(owner, infos[0], stream_id, server)


def stamp_of(frame: Any) -> int | None:
    from odyssey_sync.local.render.stamp import decode_stamp

    stamp = decode_stamp(frame.data)
    return None if stamp is None else stamp.frame


@pytest.mark.e2e
def test_spectator_sees_the_broadcast_in_order_while_the_owner_interacts(
    broadcast: Broadcast,
) -> None:
    stamps: list[int | None] = []
    enough = threading.Event()
    disconnected: list[str] = []

    def on_frame(frame: Any) -> None:
        stamps.append(stamp_of(frame))
        if len(stamps) >= 20:
            enough.set()

    info = broadcast.info
    with connect_to_stream(
        info.webrtc_url, info.spectator_token, on_video_frame=on_frame,
        on_disconnected=lambda: disconnected.append(threading.current_thread().name),
        timeout=15,
    ) as spectator:
        assert spectator.is_connected
        assert spectator.peer_connection is not None
        assert "secret" not in repr(spectator) and info.spectator_token not in repr(spectator)
        ack = broadcast.owner.interact("A boat leaves the harbour")
        assert ack
        assert enough.wait(20), f"only {len(stamps)} frames"
        broadcast.owner.interact("Gulls circle overhead")

        # pull API on the same ring
        first = spectator.get_latest_frame(timeout=5)
        try:
            assert (first.width, first.height) == (320, 176)
            assert first.data.shape == (176, 320, 3)
        finally:
            first.release()
        pulled = []
        for frame in spectator.frames(timeout=5):
            pulled.append((frame.seq, stamp_of(frame)))
            if len(pulled) == 5:
                break
        stats = spectator.stats
    assert not spectator.is_connected
    assert [s for s, _ in pulled] == sorted({s for s, _ in pulled})  # strictly increasing seq
    decoded = [s for s in stamps if s is not None]
    assert len(decoded) >= 0.9 * len(stamps)
    assert decoded == sorted(set(decoded)), "frames out of order or repeated"
    assert stats.received >= 20 and stats.delivered >= 20
    # on_disconnected once, on a dispatcher thread (never the loop), on close()
    assert len(disconnected) == 1 and "loop" not in disconnected[0]
    spectator.close()  # idempotent
    spectator.disconnect()
    with pytest.raises(OdysseyConnectionError):
        spectator.get_latest_frame(timeout=0)


@pytest.mark.e2e
def test_bad_spectator_token_is_value_error(broadcast: Broadcast) -> None:
    with pytest.raises(ValueError) as info:
        connect_to_stream(broadcast.info.webrtc_url, "not-the-token", timeout=10)
    assert isinstance(info.value, OdysseyAuthError) and info.value.status == 401


@pytest.mark.e2e
def test_unknown_stream_is_connection_error(broadcast: Broadcast) -> None:
    url = broadcast.info.webrtc_url.rsplit("/", 1)[0] + "/st-does-not-exist"
    with pytest.raises(ConnectionError) as info:
        connect_to_stream(url, broadcast.info.spectator_token, timeout=10)
    assert isinstance(info.value, OdysseyConnectionError) and info.value.status == 404


@pytest.mark.e2e
def test_end_of_broadcast_disconnects_the_spectator(broadcast: Broadcast) -> None:
    ended = threading.Event()
    info = broadcast.info
    spectator = connect_to_stream(info.webrtc_url, info.spectator_token,
                                  on_disconnected=ended.set, timeout=15)
    try:
        spectator.get_latest_frame(timeout=10).release()
        broadcast.owner.end_stream()
        assert ended.wait(15), "on_disconnected not called when the broadcast ended"
        assert not spectator.is_connected
        # the iterator ends instead of waiting for frames that will never come
        assert list(spectator.frames(timeout=5)) == []
    finally:
        spectator.close()


@pytest.mark.e2e
def test_slow_callback_skips_frames_instead_of_queueing(broadcast: Broadcast) -> None:
    import time

    calls: list[int] = []

    def slow(frame: Any) -> None:
        calls.append(frame.seq)
        time.sleep(0.3)

    info = broadcast.info
    with connect_to_stream(info.webrtc_url, info.spectator_token, on_video_frame=slow) as sp:
        latest = sp.get_latest_frame(timeout=10)
        latest.release()
        deadline = time.monotonic() + 10
        while len(calls) < 4 and time.monotonic() < deadline:
            sp.get_latest_frame(timeout=1).release()
            time.sleep(0.1)
        stats = sp.stats
    assert len(calls) >= 4
    assert stats.skipped > 0  # 15 fps source, ~3 callbacks/s
    assert calls == sorted(calls)


@pytest.mark.e2e
def test_connect_timeout_bounds_the_call(broadcast: Broadcast) -> None:
    with pytest.raises(OdysseyTimeoutError):
        connect_to_stream(broadcast.info.webrtc_url, broadcast.info.spectator_token, timeout=0)


FORGOTTEN = """
import sys
from odyssey_sync.spectator import connect_to_stream

url, token = sys.stdin.read().split()
spectator = connect_to_stream(url, token)
spectator.get_latest_frame(timeout=10).release()
print("watching", flush=True)
# no close(): interpreter exit must still be prompt (aiortc's decoder thread
# is not a daemon and only stops when the peer connection is closed)
"""


@pytest.mark.e2e
def test_a_forgotten_spectator_does_not_hang_interpreter_exit(broadcast: Broadcast) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.run(
        [sys.executable, "-c", FORGOTTEN],
        input=f"{broadcast.info.webrtc_url} {broadcast.info.spectator_token}",
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert "watching" in proc.stdout, proc.stderr
    assert proc.returncode == 0, proc.stderr


@pytest.mark.e2e
def test_close_from_inside_a_callback_does_not_deadlock(broadcast: Broadcast) -> None:
    holder: dict[str, Any] = {}
    closed = threading.Event()
    disconnected = threading.Event()

    def on_frame(frame: Any) -> None:
        spectator = holder.get("sp")
        if spectator is not None and not closed.is_set():
            spectator.close()  # from the dispatcher's video thread
            closed.set()

    info = broadcast.info
    sp = connect_to_stream(info.webrtc_url, info.spectator_token, on_video_frame=on_frame,
                           on_disconnected=disconnected.set)
    holder["sp"] = sp
    try:
        assert closed.wait(15), "callback never closed the connection"
        assert disconnected.wait(10)
        assert not sp.is_connected
    finally:
        sp.close()


@pytest.mark.e2e
def test_a_raising_callback_does_not_stop_the_video(broadcast: Broadcast) -> None:
    calls = threading.Semaphore(0)

    def broken(frame: Any) -> None:
        calls.release()
        raise RuntimeError("user bug")

    info = broadcast.info
    with connect_to_stream(info.webrtc_url, info.spectator_token, on_video_frame=broken) as sp:
        for _ in range(4):
            assert calls.acquire(timeout=10)
        stats = sp.stats
        assert sp.is_connected
    assert stats.callback_errors >= 3
