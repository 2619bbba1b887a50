"""``serve``, ``demo`` and ``local prune``: the embedded server from the command line."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from odyssey_sync import Odyssey
from odyssey_sync.local import LocalOdyssey


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C *proc*; its output (``popen_cli`` kills it if it does not end)."""
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=20)


SERVE = ["serve", "--port", "0", "--size", "320x176", "--fps", "15"]


@pytest.mark.e2e
def test_serve_json_prints_one_line_with_url_key_and_data_dir(
    popen_cli: Any, run_cli: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    proc = popen_cli("--json", *SERVE, "--data-dir", str(data))
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["data_dir"] == str(data) and info["api_key_given"] is False
        listed = run_cli("--json", "recordings", "list",
                         env={"ODYSSEY_API_URL": info["url"], "ODYSSEY_API_KEY": info["api_key"]})
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["recordings"] == []
    finally:
        rest, err = stop(proc)
    assert proc.returncode == 0, err
    assert rest == ""  # one line in all; "stopping..." goes to stderr


@pytest.mark.e2e
def test_serve_says_where_it_listens_and_stores_data(popen_cli: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = popen_cli(*SERVE, "--data-dir", str(data))
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("ODYSSEY_API_KEY=" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "serve exited early"
            lines.append(line)
        text = "".join(lines)
        assert f"data directory: {data}" in text and "odyssey-sync local prune" in text
        url = next(ln.split("=", 1)[1].strip() for ln in lines if "ODYSSEY_API_URL=" in ln)
        key = next(ln.split("=", 1)[1].strip() for ln in lines if "ODYSSEY_API_KEY=" in ln)
        with Odyssey(key, api_url=url) as client:
            assert client.list_stream_recordings().recordings == []
    finally:
        _, err = stop(proc)
    assert proc.returncode == 0, err


def test_serve_never_echoes_a_given_key(popen_cli: Any, tmp_path: Path) -> None:
    proc = popen_cli("--json", *SERVE, "--data-dir", str(tmp_path / "d"),
                     env={"ODYSSEY_API_KEY": "ody_real_key_do_not_print"})
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
    finally:
        rest, err = stop(proc)
    assert info["api_key"] is None and info["api_key_given"] is True
    assert "ody_real_key_do_not_print" not in rest + err


def test_serve_port_in_use_is_one_line_failure(
    run_cli: Any, one_line_error: Any, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    one_line_error(proc, 1)


@pytest.mark.parametrize("size", ["15x16", "4x4", "big"])
def test_serve_refuses_a_bad_size(run_cli: Any, one_line_error: Any, tmp_path: Path,
                                  size: str) -> None:
    proc = run_cli("serve", "--size", size, "--port", "0", "--data-dir", str(tmp_path / "d"))
    one_line_error(proc, 2, "size")


@pytest.mark.e2e
def test_demo_json_is_one_result_line(run_cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = run_cli("--json", "demo", "--out", str(out), "--seconds", "1.5", timeout=120)
    assert proc.returncode == 0, proc.stderr
    [report] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert report["video"] == str(out / "demo.mp4") and (out / "demo.mp4").stat().st_size > 0
    assert report["contact_sheet"] == str(out / "contact_sheet.png")
    assert report["server"] == "embedded" and report["data_dir"]
    assert "frame stamp" in report["notes"][0]
    assert "interact →" in proc.stderr and "data directory:" in proc.stderr


@pytest.mark.e2e
def test_local_prune_frees_the_servers_stored_videos(
    cli_main: Any, tmp_path: Path
) -> None:
    """Needs ``odyssey_sync.local.prune`` (from the server's data-hygiene work)."""
    data = tmp_path / "data"
    with LocalOdyssey(size=(320, 176), fps=15, data_dir=data) as srv:
        with Odyssey(srv.api_key, api_url=srv.url) as client:
            client.connect()
            stream_id = client.start_stream("A harbour")
            for n, _ in enumerate(client.frames(timeout=10)):  # a stream with frames
                if n == 10:
                    break
            client.end_stream()
        assert srv.wait_for_recording(stream_id, timeout=60)["render_state"] == "ready"
    young = cli_main("--json", "local", "prune", "--data-dir", str(data), "--older-than", "1")
    assert young.returncode == 0, young.stderr
    kept = json.loads(young.stdout)
    assert kept["files_removed"] == 0 and kept["bytes_freed"] == 0
    proc = cli_main("--json", "local", "prune", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    freed = json.loads(proc.stdout)
    assert freed["data_dir"] == str(data)
    assert freed["files_removed"] >= 1 and freed["bytes_freed"] > 0
    human = cli_main("local", "prune", "--data-dir", str(data))
    assert human.returncode == 0 and "removed 0 file(s)" in human.stdout
