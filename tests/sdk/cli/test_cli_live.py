"""``stream``, ``interact`` and ``spectate`` end to end against a local server."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from odyssey_sync import BroadcastInfo, Odyssey
from odyssey_sync.local import LocalOdyssey

pytestmark = pytest.mark.e2e


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def read_until(stream: Any, needle: str, limit: float = 30.0) -> str:
    """Lines of ``stream`` up to the one holding ``needle`` (the process is alive)."""
    seen = ""
    deadline = time.monotonic() + limit
    while needle not in seen and time.monotonic() < deadline:
        line = stream.readline()
        assert line, f"exited early: {seen}"
        seen += line
    assert needle in seen, seen
    return seen


def finish(proc: subprocess.Popen[str], timeout: float = 30.0) -> tuple[str, str]:
    """Wait for *proc*'s end and output (``popen_cli`` kills it if it never ends)."""
    return proc.communicate(timeout=timeout)


def test_stream_saves_an_mp4_and_reports_json(run_cli: Any, api: list[str],
                                              server: LocalOdyssey, tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    proc = run_cli("--json", *api, "stream", "A lighthouse", "--landscape", "--seconds", "1.5",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    [result] = json_lines(proc.stdout)
    assert result["stream_id"] and result["frames"] > 0 and result["out"] == str(out)
    frames = decoded(out)
    assert (frames[0].shape[1], frames[0].shape[0]) == (320, 176)
    assert len(frames) == result["frames"]
    assert server.api_key not in proc.stderr + proc.stdout


def test_stream_broadcast_json_prints_the_spectator_details_at_once(
    popen_cli: Any, api: list[str], server: LocalOdyssey
) -> None:
    proc = popen_cli("--json", *api, "stream", "A harbour", "--seconds", "60", "--broadcast")
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    # Printed while the stream still runs, not with the result at the end.
    assert proc.poll() is None
    assert first["event"] == "broadcast_ready"
    assert first["webrtc_url"].startswith(server.url) and first["spectator_token"]
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc)
    assert proc.returncode == 130, err
    assert "broadcast ready:" in err
    assert first["spectator_token"] not in err  # in --json mode only on stdout


def test_stream_broadcast_result_carries_the_details(run_cli: Any, api: list[str]) -> None:
    proc = run_cli("--json", *api, "stream", "A harbour", "--seconds", "1", "--broadcast")
    assert proc.returncode == 0, proc.stderr
    event, result = json_lines(proc.stdout)
    assert event["event"] == "broadcast_ready"
    assert result["broadcast"]["spectator_token"] == event["spectator_token"]


def test_piped_interact_records_the_stream(run_cli: Any, api: list[str], tmp_path: Path) -> None:
    out = tmp_path / "r.mp4"
    proc = run_cli("--json", *api, "interact", "A rover on a plain", "--out", str(out),
                   stdin="\nA dust storm rises\n")
    assert proc.returncode == 0, proc.stderr
    events = json_lines(proc.stdout)
    assert [e["event"] for e in events] == ["stream_started", "interact_acknowledged",
                                            "stream_ended"]
    frames = decoded(out)
    # The default hold (2 s after the start and after each line when stdin is
    # piped) at 15 fps: about 60 frames; one dark frame was the bug.
    assert len(frames) >= 30 and events[-1]["frames"] == len(frames)
    assert np.mean(frames[-1]) > 30
    assert np.mean(np.abs(frames[0].astype(int) - frames[-1].astype(int))) > 5


def test_interact_human_output(run_cli: Any, api: list[str]) -> None:
    proc = run_cli(*api, "interact", "A rover", "--hold", "0", stdin="Go north\n")
    assert proc.returncode == 0, proc.stderr
    assert "acknowledged:" in proc.stdout and "ended after 1 interaction" in proc.stdout


def test_spectate_watches_a_live_broadcast(cli_main: Any, one_line_error: Any,
                                           server: LocalOdyssey, tmp_path: Path) -> None:
    ready = threading.Event()
    infos: list[BroadcastInfo] = []
    with Odyssey(server.api_key, api_url=server.url) as owner:
        def on_broadcast_ready(info: BroadcastInfo) -> None:
            infos.append(info)
            ready.set()

        owner.connect(on_broadcast_ready=on_broadcast_ready)
        owner.start_stream("A harbour at dawn", portrait=False, broadcast=True)
        assert ready.wait(15)
        info = infos[0]
        out = tmp_path / "watched.mp4"
        proc = cli_main("--json", "spectate", info.webrtc_url, "-", "--seconds", "1.5",
                       "--out", str(out), stdin=info.spectator_token + "\n")
        assert proc.returncode == 0, proc.stderr
        [result] = json_lines(proc.stdout)
        assert result["frames"] > 0 and result["ended"] is False
        assert info.spectator_token not in proc.stderr
        assert len(decoded(out)) == result["frames"]
        bad = cli_main("spectate", info.webrtc_url, "-", stdin="wrong-token\n")
        one_line_error(bad, 1, "401")
        owner.end_stream()


def test_ctrl_c_exits_130_and_finishes_the_video(popen_cli: Any, api: list[str],
                                                 tmp_path: Path) -> None:
    out = tmp_path / "partial.mp4"
    proc = popen_cli(*api, "stream", "A cat", "--seconds", "60", "--out", str(out))
    read_until(proc.stderr, "stream started")
    deadline = time.monotonic() + 15  # the file appears with the first frame
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, rest = finish(proc)
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest and "interrupted" in rest
    assert len(decoded(out)) > 0  # the video so far is finished, not corrupt


def test_lost_server_is_named_and_the_video_kept(popen_cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "lost.mp4"
    with LocalOdyssey(size=(320, 176), fps=15, data_dir=tmp_path / "srv") as srv:
        proc = popen_cli("--api-url", srv.url, "--api-key", srv.api_key, "stream", "A cat",
                         "--seconds", "60", "--out", str(out))
        read_until(proc.stderr, "stream started")
        deadline = time.monotonic() + 15
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        srv.stop()
        _, err = finish(proc, timeout=45)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "connection to the server was lost" in err
    assert "requires a connected client" not in err
    assert f"is saved in {out}" in err
    assert len(decoded(out)) > 0


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "human"])
def test_closed_stdout_exits_quietly(popen_cli: Any, tmp_path: Path, as_json: bool) -> None:
    """``odyssey-sync [--json] demo | head``: no traceback when the reader goes away."""
    args = ["--json"] if as_json else []
    proc = popen_cli(*args, "demo", "--seconds", "1", "--out", str(tmp_path / "demo"))
    assert proc.stdout is not None and proc.stderr is not None
    if not as_json:
        proc.stdout.readline()  # like `head -1`: read a line, then go away
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(60)
    proc.stderr.close()
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_stream_from_an_image(cli_main: Any, api: list[str], tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "start.png"
    Image.new("RGB", (200, 120), (200, 40, 40)).save(image)
    proc = cli_main("--json", *api, "stream", "A red room", "--image", str(image),
                    "--landscape", "--seconds", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frames"] > 0


def test_stream_resumes_across_the_stream_limit(run_cli: Any, tmp_path: Path) -> None:
    """`stream` outlives the service's stream limit by default; --no-resume ends there."""
    with LocalOdyssey(size=(320, 176), fps=15, capacity=2, recordings=False,
                      stream_limit=1.5, data_dir=tmp_path / "data") as srv:
        api = ["--api-key", srv.api_key, "--api-url", srv.url]
        proc = run_cli("--json", *api, "stream", "A long road", "--seconds", "4")
        assert proc.returncode == 0, proc.stderr
        [result] = json_lines(proc.stdout)
        assert len(result["stream_ids"]) >= 2 and result["stream_ids"][0] == result["stream_id"]
        assert "resume on" in proc.stderr
        cut = run_cli("--json", *api, "stream", "A short road", "--seconds", "4", "--no-resume")
        assert cut.returncode != 0
        assert "lost" in cut.stderr
