"""Issue 10, server items: every client mistake is a 4xx, never a 500 or a traceback.

Hostile JSON and query values, the prompt cap on both transports (and that the
largest accepted prompt does not stall other clients), secrets in reprs,
restart hygiene and start-up checks of the frame size.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from odyssey_sync.local import MAX_PROMPT_CHARS, LocalOdyssey
from tests.local.helpers import Api, local_server, open_peer, play_stream, script

pytestmark = pytest.mark.timeout(120)


def run(coro: Any, timeout: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def post_raw(api: Api, path: str, body: bytes) -> requests.Response:
    return api.http.post(api.url + path, data=body, timeout=20,
                         headers={**api.headers(), "Content-Type": "application/json"})


# -- hostile JSON -----------------------------------------------------------------


HOSTILE_BODIES = {
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep objects": b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    "4300+ digit int": b'{"region_latencies": {"x": ' + b"9" * 5000 + b"}}",
    "int beyond 64 bits": b'{"region_latencies": {"x": ' + str(2**70).encode() + b"}}",
    "lone surrogate": b'{"region_latencies": {"\\ud800": 1}}',
    "not UTF-8": b'{"a": "\xff\xfe"}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
@pytest.mark.parametrize("path", ["/sessions/request", "/simulation-jobs", "/auth/token",
                                  "/scripts"])
def test_hostile_json_is_422_with_the_error_body(api: Api, caplog: pytest.LogCaptureFixture,
                                                 name: str, path: str) -> None:
    caplog.set_level(logging.INFO, logger="odyssey_sync")
    r = post_raw(api, path, HOSTILE_BODIES[name])
    assert r.status_code == 422, (r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == "body", detail
    no_tracebacks(caplog)


def test_lone_surrogate_in_a_script_prompt_is_422(api: Api) -> None:
    body = json.dumps({"script": [{"timestamp_ms": 0, "start": {"prompt": "\ud800x"}},
                                  {"timestamp_ms": 500, "end": {}}]}).encode()
    r = post_raw(api, "/simulation-jobs", body)
    assert r.status_code == 422
    assert "surrogate" in json.dumps(r.json()["detail"])


@pytest.mark.parametrize("query", ["offset=9223372036854775808", "offset=99999999999999999999",
                                   "limit=1%20", "limit=+5", "limit=%D9%A1", "offset=1_0",
                                   "limit=", "offset=-0x1", "limit=5.0"])
def test_query_integers_are_strict(api: Api, query: str) -> None:
    for path in ("/stream-recordings", "/simulation-jobs"):
        r = api.get(f"{path}?{query}")
        if query == "limit=":
            assert r.status_code == 200  # empty means "default"
            continue
        assert r.status_code == 422, (path, query, r.status_code, r.text)
        assert r.json()["detail"][0]["loc"][:2] == ["query", query.split("=")[0]]


def test_largest_offset_is_fine(api: Api) -> None:
    r = api.get(f"/stream-recordings?offset={2**63 - 1}")
    assert r.status_code == 200 and r.json()["recordings"] == []


@pytest.mark.parametrize("body", [{"drop_acks": -1}, {"drop_acks": 2**40}, {"ack_delay": 1e12},
                                  {"stop_video": "yes"}, {"drop_every": 1.5},
                                  {"stream_error": "x" * 2000}, {"nope": 1}])
def test_admin_fault_values_are_range_checked(server: LocalOdyssey, body: dict[str, Any]) -> None:
    r = requests.post(server.url + "/_admin/faults", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {server.api_key}"})
    assert r.status_code == 422, r.text
    assert server.faults.as_dict() == type(server.faults)().as_dict()


def test_deep_json_over_signaling_is_refused_without_traceback(
        server: LocalOdyssey, api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="odyssey_sync")

    async def scenario() -> dict[str, Any]:
        peer, _ = await open_peer(server, api)
        try:
            await peer.send_ws_raw("[" * 100_000 + "]" * 100_000)
            await peer.send_ws_raw('{"type": "interactive_stream_start", "prompt": 1' + "0" * 5000
                                   + "}")
            await peer.send({"type": "interactive_stream_start", "prompt": "still alive"})
            return await peer.expect("stream_started")
        finally:
            await peer.close()

    started = run(scenario())
    assert started["applied_prompt"].startswith("still alive")
    no_tracebacks(caplog)


@pytest.mark.parametrize("segment", ["%ED%A0%80", "%FF", "%00", "..", "x" * 3000, "%C2%B2",
                                     "%D9%A1" * 3])
def test_hostile_path_segments_are_4xx(api: Api, segment: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for path in (f"/recordings/{segment}", f"/media/{segment}/video?expires=1&sig=x",
                 f"/simulation-jobs/{segment}", f"/scripts/{segment}/json?expires=1&sig=x",
                 f"/sig/client/{segment}?token=abc", f"/simulation-jobs?status={segment}",
                 f"/media/x/video?expires={segment}&sig={segment}"):
        r = api.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:200])
        assert "detail" in r.json()
    no_tracebacks(caplog)


def test_malformed_http_is_400_without_traceback(server: LocalOdyssey,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import socket

    caplog.set_level(logging.INFO)
    host, port = server.url.rsplit(":", 1)
    with socket.create_connection((host.split("//")[1], int(port)), timeout=10) as sock:
        sock.sendall(b"GET /ping?" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.split(b"\r\n", 1)[0].split()[1] == b"400", reply[:100]
    no_tracebacks(caplog)
    assert requests.get(server.url + "/ping", timeout=10).status_code == 200


# -- prompt cap -----------------------------------------------------------------------


def test_prompt_over_the_limit_is_refused_on_both_transports(
        server: LocalOdyssey, api: Api) -> None:
    too_long = "x" * (MAX_PROMPT_CHARS + 1)
    r = api.post("/simulation-jobs", json={"script": [
        {"timestamp_ms": 0, "start": {"prompt": too_long}}, {"timestamp_ms": 500, "end": {}}]})
    assert r.status_code == 422
    assert f"limit is {MAX_PROMPT_CHARS}" in json.dumps(r.json()["detail"])

    async def scenario() -> list[dict[str, Any]]:
        peer, _ = await open_peer(server, api)
        try:
            replies = []
            await peer.send_ws({"type": "interactive_stream_start", "prompt": too_long})
            replies.append(await peer.expect("interactive_stream_error"))
            await peer.start_stream("ok")
            await peer.send({"type": "update", "prompt": too_long})
            replies.append(await peer.expect("interactive_stream_error"))
            await peer.send({"type": "update", "prompt": "\ud800"})
            replies.append(await peer.expect("interactive_stream_error"))
            return replies
        finally:
            await peer.close()

    replies = run(scenario())
    assert [m["reason"] for m in replies] == ["invalid_request"] * 3
    assert f"limit is {MAX_PROMPT_CHARS}" in replies[0]["message"]
    assert f"limit is {MAX_PROMPT_CHARS}" in replies[1]["message"]
    assert "surrogate" in replies[2]["message"]


@pytest.mark.server_options(capacity=2, fps=15.0)
def test_largest_prompt_does_not_stall_other_clients(server: LocalOdyssey, api: Api) -> None:
    """While one client sends the largest accepted prompts (live start and updates, and
    simulation scripts), /ping answers fast and another client's frames keep their rate."""
    largest = "\U0001f30d" * MAX_PROMPT_CHARS  # 4 UTF-8 bytes each: the worst echo
    fps = server.config.fps

    async def heavy(stop: asyncio.Event) -> int:
        peer, _ = await open_peer(server, api)
        sent = 0
        try:
            await peer.send_ws({"type": "interactive_stream_start", "prompt": largest})
            started = await peer.expect("stream_started")
            assert started["applied_prompt"].startswith(largest)
            while not stop.is_set():
                await peer.send({"type": "update", "prompt": largest[: MAX_PROMPT_CHARS - sent]})
                await peer.expect("update_acknowledged")
                sent += 1
        finally:
            await peer.close()
        return sent

    async def pings(stop: asyncio.Event, out: list[float]) -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                t = time.monotonic()
                async with http.get(server.url + "/ping") as resp:
                    assert resp.status == 200
                out.append(time.monotonic() - t)
                await asyncio.sleep(0.05)

    async def scenario() -> tuple[list[float], list[float], int]:
        watcher, _ = await open_peer(server, api)
        try:
            await watcher.start_stream("watching")
            await watcher.wait_frames(5)
            since = len(watcher.stamps)
            stop = asyncio.Event()
            latencies: list[float] = []
            tasks = [asyncio.ensure_future(heavy(stop)), asyncio.ensure_future(
                pings(stop, latencies))]
            await asyncio.sleep(3.0)
            stop.set()
            updates, _ = await asyncio.gather(*tasks)
            arrivals = [t for _, t in watcher.stamps[since:]]
            return latencies, arrivals, updates
        finally:
            await watcher.close()

    # a simulation job with the largest prompt, rendered while we measure
    job = api.post("/simulation-jobs", json={"script": [
        {"timestamp_ms": 0, "start": {"prompt": largest}},
        {"timestamp_ms": 300, "interact": {"prompt": largest}},
        {"timestamp_ms": 600, "end": {}}]})
    assert job.status_code == 200, job.text
    latencies, arrivals, updates = run(scenario(), timeout=90)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    print(f"\n/ping median {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms over {len(latencies)}; frames "
          f"{len(arrivals) / 3.0:.1f}/s of {fps:g}, max gap {max(gaps) * 1000:.0f} ms; "
          f"{updates} largest-prompt updates")
    assert updates >= 2
    assert statistics.median(latencies) < 0.100  # the bound (was 8.97 s)
    assert max(latencies) < 2.0  # generous: a shared 2-core machine
    assert len(arrivals) >= 0.5 * fps * 3.0  # the rate holds (generous: shared CPU)
    assert max(gaps) < 2.0  # was 8.5 s


# -- secrets, sizes ---------------------------------------------------------------------


def test_config_repr_hides_the_api_key(tmp_path: Path) -> None:
    secret = "sk-very-secret-key-123456"
    with local_server(tmp_path, api_key=secret) as server:
        for text in (repr(server.config), repr(server), repr(server.context),
                     str(server.config), repr(server.backend.tokens)):
            assert secret not in text, text
        assert "api_key='***'" in repr(server.config)


@pytest.mark.parametrize("size", [(16, 16), (158, 96), (96, 96), (4098, 200), (161, 96)])
def test_sizes_below_the_minimum_are_refused_at_construction(
        tmp_path: Path, size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r"96\.\.4096.*160x96"):
        LocalOdyssey(data_dir=tmp_path, size=size)


def test_serve_refuses_a_tiny_size() -> None:
    proc = subprocess.run([sys.executable, "-m", "odyssey_sync.local", "--size", "16x16"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "160x96" in proc.stderr and "Traceback" not in proc.stderr


def test_smallest_size_streams(tmp_path: Path) -> None:
    with local_server(tmp_path, size=(160, 96)) as server, Api(server) as api:
        async def scenario() -> None:
            peer, _ = await open_peer(server, api)
            try:
                await peer.send({"type": "interactive_stream_start", "prompt": "tiny",
                                 "portrait": True})
                await peer.expect("stream_started")
                await peer.wait_frames(3)
            finally:
                await peer.close()

        run(scenario())


# -- restart hygiene --------------------------------------------------------------------


# A child process's script: a server on the data directory argv[1] with a stream argv[2]
# started in a new session; the scripts below go on from there.
_SERVER_WITH_A_STREAM = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from odyssey_sync.local import LocalOdyssey
    server = LocalOdyssey(data_dir=Path(sys.argv[1]), size=(320, 176), fps=10).start()
    sink = server.context.sink
    server.call(lambda: sink.allocate(server.backend.primary_key_id))
    session = next(iter(server.backend.allocations))
    server.call(lambda: sink.stream_started(
        stream_id=sys.argv[2], session_id=session, width=320, height=176, fps=10.0,
        prompt="p", applied_prompt="p", portrait=False, image=None, broadcast=False))
""")

_CRASHING_SERVER = _SERVER_WITH_A_STREAM + textwrap.dedent("""
    (server.data_dir / "media" / ".abc.mp4.XYZ.part").write_bytes(b"half a render")
    print("ready", flush=True)
    time.sleep(60)
""")


def test_kill_9_then_restart_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_SERVER, str(tmp_path), "left-open"],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert list((tmp_path / "media").glob("*.part"))
    with local_server(tmp_path) as server:
        assert not list((tmp_path / "media").glob("*.part"))
        row = server.backend.store.stream("left-open")
        assert row is not None and row["ended_at"] is not None
        assert server.backend.store.open_streams() == []


def test_a_render_that_could_not_run_is_done_by_the_next_start(tmp_path: Path) -> None:
    """The render pool went away under a stream's end (interpreter exit): the recording
    stays pending in the store and the next start on the data directory renders it."""
    with local_server(tmp_path) as server, Api(server) as api:
        server.backend.render_pool.shutdown(wait=True)  # as at interpreter exit
        play_stream(server, api.allocate(), "orphan", frames=6)
        time.sleep(0.3)
        row = server.backend.store.stream("orphan")
        assert row is not None and row["render_state"] == "rendering"
    with local_server(tmp_path) as again:
        assert again.wait_for_recording("orphan", timeout=60)["render_state"] == "ready"


_FORGOTTEN_SERVER = _SERVER_WITH_A_STREAM + textwrap.dedent("""
    server.call(lambda: sink.stream_ended(sys.argv[2], 20))
    # no stop(): the interpreter exits with the render just scheduled
""")


def test_a_server_never_stopped_keeps_its_last_recording(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _FORGOTTEN_SERVER, str(tmp_path), "last"],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    assert "cannot schedule new futures" not in proc.stderr
    # finished at exit (not merely left for the next start)
    with contextlib.closing(sqlite3.connect(tmp_path / "odyssey-local.sqlite3")) as db:
        assert db.execute("SELECT render_state FROM streams WHERE stream_id = 'last'"
                          ).fetchall() == [("ready",)]
    with local_server(tmp_path) as server:
        row = server.wait_for_recording("last", timeout=60)
        assert row["render_state"] == "ready" and row["frame_count"] == 20


def test_script_helper_still_valid(api: Api) -> None:
    assert api.post("/simulation-jobs", json={"script": script(400)}).status_code == 200
