"""Recordings, persistence and lifecycle of the local server (real sockets, small frames)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from odyssey_sync.local import LocalOdyssey, auth
from tests.local.helpers import (
    OTHER_KEY,
    Api,
    decode_stamps,
    decode_video,
    local_server,
    play_stream,
    serve_command,
)

pytestmark = [pytest.mark.timeout(90), pytest.mark.server_options(capacity=3)]




# -- recordings -------------------------------------------------------------------


def test_recording_stamps_start_at_the_live_stamp_origin(server: Any, api: Any) -> None:
    """The live frame-0 send time reaches the recording: sent_at = origin + i / fps."""
    import io

    import av

    from odyssey_sync.local.render.stamp import decode_stamp_raw

    session_id = api.allocate()
    sink = server.context.sink
    width, height = server.context.frame_size(False)
    fps = server.config.fps
    origin = 1234.5678
    server.call(lambda: sink.stream_started(
        stream_id="stream-o", session_id=session_id, width=width, height=height, fps=fps,
        prompt="a clock", applied_prompt="a clock", portrait=False, image=None,
        broadcast=False, stamp_origin=origin))
    server.call(sink.stream_ended, "stream-o", 6)
    assert server.wait_for_recording("stream-o", timeout=60)["render_state"] == "ready"
    video = requests.get(api.get("/recordings/stream-o").json()["video_url"], timeout=20)
    raws = []
    with av.open(io.BytesIO(video.content)) as container:
        for frame in container.decode(video=0):
            raws.append(decode_stamp_raw(frame.to_ndarray(format="rgb24")))
    assert raws == [(i, round((origin + i / fps) * 1e6) % 2**32) for i in range(6)]


def test_recording_lifecycle_and_download(server: Any, api: Any) -> None:
    session_id = api.allocate()
    play_stream(server, session_id, "stream-a", frames=12,
                interactions=[(5, "the ball bounces")], end=False)
    live = api.get("/recordings/stream-a").json()
    assert live == {"stream_id": "stream-a", "video_url": None, "events_url": None,
                    "thumbnail_url": None, "preview_url": None, "frame_count": None,
                    "duration_seconds": None}
    listed = api.get("/stream-recordings").json()["recordings"][0]
    assert listed["stream_id"] == "stream-a" and listed["ended_at"] is None

    server.call(server.context.sink.stream_ended, "stream-a", 12)
    row = server.wait_for_recording("stream-a", timeout=60)
    assert row["render_state"] == "ready"
    rec = api.get("/recordings/stream-a").json()
    assert rec["frame_count"] == 12
    assert rec["duration_seconds"] == pytest.approx(12 / server.config.fps)
    video = requests.get(rec["video_url"], timeout=20)
    assert video.status_code == 200
    assert video.headers["Content-Type"] == "video/mp4"
    count, width, height = decode_video(video.content)
    assert (count, width, height) == (12, *server.config.size)
    assert decode_stamps(video.content) == list(range(12))
    assert rec["thumbnail_url"] is not None and rec["preview_url"] is not None

    events = requests.get(rec["events_url"], timeout=10).json()
    assert [(e["type"], e["frame"]) for e in events["events"]] == [
        ("start", 0), ("interact", 5), ("end", 12)]
    assert events["events"][1]["prompt"] == "the ball bounces"
    for key in ("thumbnail_url", "preview_url"):
        assert requests.get(rec[key], timeout=10).status_code == 200


def test_recording_of_stream_with_input_image(server: Any, api: Any) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 36), (200, 30, 30)).save(buf, format="JPEG")
    session_id = api.allocate()
    play_stream(server, session_id, "stream-img", frames=4, image=buf.getvalue())
    assert server.wait_for_recording("stream-img", timeout=60)["render_state"] == "ready"
    rec = api.get("/recordings/stream-img").json()
    count, _, _ = decode_video(requests.get(rec["video_url"], timeout=20).content)
    assert count == 4


def test_recordings_disabled(tmp_path: Path) -> None:
    with local_server(tmp_path, recordings=False) as server, Api(server) as api:
        play_stream(server, api.allocate(), "s-off", frames=5)
        assert server.wait_for_recording("s-off", timeout=5)["render_state"] == "disabled"
        rec = api.get("/recordings/s-off").json()
        assert rec["video_url"] is None and rec["frame_count"] == 5
        assert rec["events_url"] is not None


def test_signed_urls_reject_tampering(server: Any, api: Any) -> None:
    play_stream(server, api.allocate(), "stream-b", frames=3)
    server.wait_for_recording("stream-b", timeout=60)
    url = api.get("/recordings/stream-b").json()["video_url"]
    base, query = url.split("?")
    params = dict(p.split("=") for p in query.split("&"))
    bad_sig = f"{base}?expires={params['expires']}&sig={'0' * 64}"
    assert requests.get(bad_sig, timeout=10).status_code == 403
    later = f"{base}?expires={int(params['expires']) + 10}&sig={params['sig']}"
    assert requests.get(later, timeout=10).status_code == 403
    assert requests.get(base, timeout=10).status_code == 403
    other_kind = url.replace("/video?", "/events?")
    assert requests.get(other_kind, timeout=10).status_code == 403
    # a correctly signed but expired URL
    past = int(time.time()) - 5
    sig = auth.sign_resource(server.context.secret, "stream-b", "video", past)
    expired = f"{server.url}/media/stream-b/video?expires={past}&sig={sig}"
    assert requests.get(expired, timeout=10).status_code == 403


@pytest.mark.parametrize("path", [
    "/media/..%2F..%2Fetc%2Fpasswd/video", "/media/stream-b/..%2F..%2Fapi_key",
    "/media/%2E%2E/video", "/media/stream-b/input", "/media/../api_key",
])
def test_media_path_traversal_is_refused(server: Any, path: str) -> None:
    future = int(time.time()) + 100
    r = requests.get(f"{server.url}{path}?expires={future}&sig={'a' * 64}", timeout=10)
    assert r.status_code in (403, 404)
    assert b"ody_local" not in r.content


def test_signed_url_for_unknown_stream_is_404(server: Any) -> None:
    future = int(time.time()) + 100
    sig = auth.sign_resource(server.context.secret, "ghost", "video", future)
    r = requests.get(f"{server.url}/media/ghost/video?expires={future}&sig={sig}", timeout=10)
    assert r.status_code == 404


def test_recordings_unknown_and_foreign(server: Any, api: Any) -> None:
    assert api.get("/recordings/nope").status_code == 404
    play_stream(server, api.allocate(), "mine", frames=2)
    with Api(server, OTHER_KEY) as other:
        r = other.get("/recordings/mine")
        assert r.status_code == 404 and r.json() == {"detail": "Recording not found"}
        assert other.get("/stream-recordings").json()["total"] == 0


def test_stream_recordings_pagination(tmp_path: Path) -> None:
    with local_server(tmp_path, recordings=False, capacity=1) as server, Api(server) as api:
        session_id = api.allocate()
        for n in range(5):
            play_stream(server, session_id, f"s{n}", frames=2)
        body = api.get("/stream-recordings").json()
        assert body["total"] == 5 and body["limit"] == 20 and body["offset"] == 0
        assert [r["stream_id"] for r in body["recordings"]] == ["s4", "s3", "s2", "s1", "s0"]
        page = api.get("/stream-recordings", params={"limit": 2, "offset": 1}).json()
        assert [r["stream_id"] for r in page["recordings"]] == ["s3", "s2"]
        assert (page["limit"], page["offset"], page["total"]) == (2, 1, 5)
        first = page["recordings"][0]
        assert set(first) == {"stream_id", "width", "height", "started_at", "ended_at",
                              "duration_seconds"}
        assert (first["width"], first["height"]) == server.config.size
        for bad in ({"limit": 0}, {"limit": "x"}, {"offset": -1}, {"limit": 101}):
            r = api.get("/stream-recordings", params=bad)
            assert r.status_code == 422
            assert r.json()["detail"][0]["loc"][0] == "query"


def test_wait_for_recording_times_out_for_unknown(server: Any) -> None:
    with pytest.raises(TimeoutError):
        server.wait_for_recording("ghost", timeout=0.05)


# -- persistence ----------------------------------------------------------------------


def test_restart_keeps_key_recordings_and_jobs(tmp_path: Path) -> None:
    with local_server(tmp_path) as server, Api(server) as api:
        key = server.api_key
        token = api.token
        play_stream(server, api.allocate(), "kept", frames=6)
        server.wait_for_recording("kept", timeout=60)
        job = api.post("/simulation-jobs", json={"script": [
            {"timestamp_ms": 0, "start": {"prompt": "a boat"}},
            {"timestamp_ms": 300, "end": {}}]}).json()
        deadline = time.monotonic() + 60
        while api.get(f"/simulation-jobs/{job['job_id']}").json()["status"] != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    key_file = tmp_path / "api_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key not in (tmp_path / "odyssey-local.sqlite3").read_bytes().decode("latin-1")

    with local_server(tmp_path) as again, Api(again) as api2:
        assert again.api_key == key
        # the secret persists, so bearer tokens and signed URLs stay valid
        r = requests.get(again.url + "/recordings/kept",
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 200
        rec = r.json()
        assert rec["frame_count"] == 6
        count, _, _ = decode_video(requests.get(rec["video_url"], timeout=20).content)
        assert count == 6
        detail = api2.get(f"/simulation-jobs/{job['job_id']}").json()
        assert detail["status"] == "completed" and len(detail["streams"]) == 1


def test_restart_fails_interrupted_jobs_and_ends_live_streams(tmp_path: Path) -> None:
    with local_server(tmp_path, job_delay=30.0) as server, Api(server) as api:
        job = api.post("/simulation-jobs", json={"script": [
            {"timestamp_ms": 0, "start": {"prompt": "x"}}, {"timestamp_ms": 100, "end": {}}]})
        job_id = job.json()["job_id"]
        session_id = api.allocate()
        play_stream(server, session_id, "cut", frames=0, interactions=[(7, "y")], end=False)
    with local_server(tmp_path) as again, Api(again) as api:
        detail = api.get(f"/simulation-jobs/{job_id}").json()
        assert detail["status"] == "failed"
        assert "restarted" in detail["error_message"]
        rec = api.get("/recordings/cut").json()
        assert rec["frame_count"] == 8 and rec["video_url"] is None
        # allocations do not survive a restart
        assert api.post("/sessions/token", json={"session_id": session_id}).status_code == 404


def test_fixed_api_key_option(tmp_path: Path) -> None:
    with local_server(tmp_path, api_key="fixed-key-123") as server:
        assert server.api_key == "fixed-key-123"
        assert not (tmp_path / "api_key").exists()
        with Api(server) as api:
            assert api.get("/regions").status_code == 200


# -- lifecycle -------------------------------------------------------------------------


def test_bind_failure_raises_in_caller(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = LocalOdyssey(data_dir=tmp_path, port=port, size=(320, 176))
        with pytest.raises(OSError):
            server.start()
        assert not server.running
        server.stop()  # idempotent after a failed start


def test_start_stop_idempotent_and_thread_named(tmp_path: Path) -> None:
    server = LocalOdyssey(data_dir=tmp_path, size=(320, 176))
    assert "not started" in repr(server)
    with pytest.raises(RuntimeError):
        _ = server.api_key
    server.start()
    try:
        names = [t.name for t in threading.enumerate()]
        assert "odyssey-local-server" in names
        assert server.api_key not in repr(server)
        assert server.url.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError):
            server.start()
    finally:
        server.stop()
    server.stop()
    assert not server.running
    with pytest.raises(RuntimeError):
        server.call(lambda: None)


@pytest.mark.parametrize(("options", "error"), [
    ({"nonsense": 1}, TypeError), ({"size": (321, 176)}, ValueError),
    ({"size": "big"}, TypeError), ({"codec": "av1"}, ValueError),
    ({"capacity": 0}, ValueError), ({"fps": 0}, ValueError), ({"port": 70000}, ValueError),
    ({"faults": object()}, TypeError), ({"extra_api_keys": [""]}, TypeError),
])
def test_bad_options_raise_before_start(options: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        LocalOdyssey(**options)


def test_call_from_loop_thread_is_refused(server: Any) -> None:
    def nested() -> None:
        server.call(lambda: None)

    with pytest.raises(RuntimeError):
        server.call(nested)


def test_serve_subprocess_prints_url_and_key(tmp_path: Path) -> None:
    with serve_command("--data-dir", str(tmp_path), "--size", "320x176", "--fps", "10") as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        url = next(ln.split("=", 1)[1].strip() for ln in lines if "ODYSSEY_API_URL=" in ln)
        key = next(ln.split("=", 1)[1].strip() for ln in lines if "ODYSSEY_API_KEY=" in ln)
        assert key == (tmp_path / "api_key").read_text().strip()
        r = requests.post(url + "/auth/token", json={"api_key": key}, timeout=10)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert os.path.exists(tmp_path / "odyssey-local.sqlite3")


@pytest.mark.e2e
def test_real_stream_is_recorded(tmp_path: Path) -> None:
    """A WebRTC stream through the real-time half ends up as a rendered recording."""
    import asyncio

    from tests.local.rtc_peer import TestPeer

    with local_server(tmp_path, fps=15.0) as server, Api(server) as api:
        session_id = api.allocate()
        token = api.post("/sessions/token", json={"session_id": session_id}).json()
        signaling_url = server.context.signaling_url

        async def stream() -> str:
            peer = TestPeer()
            try:
                await peer.connect(server.url, session_id, token["session_token"],
                                   signaling_url=signaling_url)
                await peer.send({"type": "interactive_stream_start", "prompt": "a lighthouse",
                                 "portrait": False})
                started = await peer.expect("stream_started")
                await peer.wait_frames(5)
                await peer.send({"type": "update", "prompt": "a storm rolls in"})
                await peer.expect("update_acknowledged")
                await peer.wait_frames(5)
                await peer.send({"type": "interactive_stream_end"})
                await peer.expect("stream_ended")
            finally:
                await peer.close()
            stream_id: str = started["stream_id"]
            return stream_id

        stream_id = asyncio.run(asyncio.wait_for(stream(), 60))
        row = server.wait_for_recording(stream_id, timeout=60)
        assert row["render_state"] == "ready"
        rec = api.get(f"/recordings/{stream_id}").json()
        assert rec["frame_count"] >= 10
        video = requests.get(rec["video_url"], timeout=20).content
        count, width, height = decode_video(video)
        assert (count, width, height) == (rec["frame_count"], *server.config.size)
        assert decode_stamps(video) == list(range(count))
        events = requests.get(rec["events_url"], timeout=10).json()["events"]
        assert [e["type"] for e in events] == ["start", "interact", "end"]
        assert 0 < events[1]["frame"] <= count
        listed = api.get("/stream-recordings").json()["recordings"]
        assert listed[0]["stream_id"] == stream_id and listed[0]["ended_at"] is not None
        # the client left: its slot is free again (capacity 1)
        deadline = time.monotonic() + 10
        while server.call(server.context.sink.session_owner, session_id) is not None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert api.post("/sessions/request", json={}).status_code == 200


def test_shared_data_dir_skips_recovery_while_another_server_runs(tmp_path: Path) -> None:
    with local_server(tmp_path, job_delay=30.0) as first, Api(first) as api:
        job_id = api.post("/simulation-jobs", json={"script": [
            {"timestamp_ms": 0, "start": {"prompt": "x"}},
            {"timestamp_ms": 100, "end": {}}]}).json()["job_id"]
        with local_server(tmp_path) as second, Api(second) as api2:
            assert second.api_key == first.api_key
            # the second server must not fail the first one's job as "interrupted"
            assert api2.get(f"/simulation-jobs/{job_id}").json()["status"] == "pending"
        assert api.get(f"/simulation-jobs/{job_id}").json()["status"] == "pending"


def test_serve_does_not_echo_a_given_key(tmp_path: Path) -> None:
    with serve_command("--data-dir", str(tmp_path), "--api-key", "given-secret-key") as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        assert not any("given-secret-key" in ln for ln in lines)
        url = next(ln.split("=", 1)[1].strip() for ln in lines if "ODYSSEY_API_URL=" in ln)
        r = requests.post(url + "/auth/token", json={"api_key": "given-secret-key"}, timeout=10)
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and "given-secret-key" not in proc.stderr.read()
