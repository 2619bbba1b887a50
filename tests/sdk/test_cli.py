"""The ``odyssey-sync`` command line, run as a subprocess (``python -m odyssey_sync``).

Usage mistakes are checked without any server; the commands that talk to the
API run against an embedded local server started in the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from odyssey_sync import cli

REPO = Path(__file__).resolve().parent.parent


def run(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 90.0,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m odyssey_sync ARGS`` with a clean Odyssey environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ODYSSEY_API")}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "odyssey_sync", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd or REPO,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("odyssey-sync: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


# --------------------------------------------------------------------------- no server


def test_help_lists_every_command() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("serve", "demo", "stream", "interact", "spectate", "simulate", "recordings",
                    "simulations"):
        assert command in proc.stdout


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("odyssey-sync ")


def test_no_command_is_a_usage_error() -> None:
    proc = run()
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_unknown_subcommand_is_a_usage_error() -> None:
    proc = run("recordings", "lst")
    assert_one_line_error(proc, 2, "invalid choice")


def test_missing_api_key_is_one_line_usage_error() -> None:
    proc = run("recordings", "list")
    assert_one_line_error(proc, 2, "no API key")


@pytest.mark.parametrize("bad", ["0", "-3", "soon"])
def test_bad_seconds_is_a_usage_error(bad: str) -> None:
    proc = run("stream", "A cat", "--seconds", bad, "--api-key", "k")
    assert_one_line_error(proc, 2, "--seconds")


def test_unreadable_script_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("simulate", str(tmp_path / "missing.json"), "--api-key", "k")
    assert_one_line_error(proc, 2, "cannot read script")


def test_invalid_json_script_is_a_usage_error(tmp_path: Path) -> None:
    script = tmp_path / "bad.json"
    script.write_text("[{not json")
    proc = run("simulate", str(script), "--api-key", "k")
    assert_one_line_error(proc, 2, "not valid JSON")


def test_missing_image_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("stream", "A cat", "--image", str(tmp_path / "nope.jpg"), "--api-key", "k")
    assert_one_line_error(proc, 2, "cannot read image")


def test_out_in_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    proc = run("stream", "A cat", "--out", str(tmp_path / "no" / "such" / "v.mp4"),
               "--api-key", "k")
    assert_one_line_error(proc, 2, "output directory does not exist")


def test_show_without_display_is_a_clear_error() -> None:
    proc = run("stream", "A cat", "--show", "--api-key", "k", env={"DISPLAY": ""})
    assert_one_line_error(proc, 2, "--show")


def test_spectate_empty_token_from_stdin_is_a_usage_error() -> None:
    proc = run("spectate", "http://127.0.0.1:9/live/x", "-", stdin="\n")
    assert_one_line_error(proc, 2, "empty spectator token")


def test_unreachable_server_is_one_line_failure() -> None:
    proc = run("recordings", "list", "--api-url", "http://127.0.0.1:9",
               "--api-key", "secret-key-123", timeout=60)
    assert_one_line_error(proc, 1)
    assert "secret-key-123" not in proc.stderr + proc.stdout


def test_debug_prints_a_traceback() -> None:
    proc = run("--debug", "recordings", "list", "--api-url", "http://127.0.0.1:9",
               "--api-key", "k", timeout=60)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr


def test_global_options_after_the_command_are_accepted() -> None:
    args = cli.build_parser().parse_args(["recordings", "list", "--json", "--api-key", "k"])
    assert args.json is True and args.api_key == "k"
    args = cli.build_parser().parse_args(["--json", "--api-key", "k", "recordings", "list"])
    assert args.json is True and args.api_key == "k"


def test_to_jsonable_handles_dataclasses_and_enums() -> None:
    from odyssey_sync.types import SimulationJobInfo, SimulationJobStatus

    info = SimulationJobInfo(job_id="j", status=SimulationJobStatus.PENDING)
    assert cli.to_jsonable({"x": [info], "p": Path("a")}) == {
        "x": [{"job_id": "j", "status": "pending", "priority": "normal", "created_at": "",
               "completed_at": None, "error_message": None}],
        "p": "a",
    }


def test_script_file_shapes(tmp_path: Path) -> None:
    entries = [{"timestamp_ms": 0, "start": {"prompt": "a"}}, {"timestamp_ms": 1000, "end": {}}]
    p = tmp_path / "s.json"
    p.write_text(json.dumps(entries))
    assert cli._load_script(p) == {"script": entries}
    p.write_text(json.dumps([entries, entries]))
    assert cli._load_script(p) == {"scripts": [entries, entries]}
    p.write_text(json.dumps({"script_url": "https://x/s.json"}))
    assert cli._load_script(p) == {"script_url": "https://x/s.json"}
    bad: Any
    for bad in ([], {"script": entries, "scripts": [entries]}, "text"):
        p.write_text(json.dumps(bad))
        with pytest.raises(cli.UsageError):
            cli._load_script(p)


# --------------------------------------------------------------------------- with a server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    local = pytest.importorskip("odyssey_sync.local")
    pytest.importorskip("odyssey_sync.client")
    with local.LocalOdyssey(size=(320, 176), fps=15, data_dir=tmp_path / "server") as srv:
        yield srv


def api(server: Any) -> list[str]:
    return ["--api-url", server.url, "--api-key", server.api_key]


SCRIPT = [
    {"timestamp_ms": 0, "start": {"prompt": "A cat asleep on a couch"}},
    {"timestamp_ms": 600, "interact": {"prompt": "The cat wakes up"}},
    {"timestamp_ms": 1200, "end": {}},
]


@pytest.mark.e2e
def test_stream_saves_an_mp4_and_reports_json(server: Any, tmp_path: Path) -> None:
    import av

    out = tmp_path / "v.mp4"
    proc = run("--json", *api(server), "stream", "A lighthouse", "--landscape",
               "--seconds", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["stream_id"] and result["frames"] > 0 and result["out"] == str(out)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.width, stream.height) == (320, 176)
    assert frames == result["frames"]
    assert server.api_key not in proc.stderr + proc.stdout


@pytest.mark.e2e
def test_interact_reads_prompts_from_stdin(server: Any, tmp_path: Path) -> None:
    proc = run("--json", *api(server), "interact", "A rover on a plain",
               stdin="The rover turns left\n\nA dust storm rises\n")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds == ["stream_started", "interact_acknowledged", "interact_acknowledged",
                     "stream_ended"]
    assert "turns left" in events[1]["prompt"] or events[1]["prompt"]
    human = run(*api(server), "interact", "A rover", stdin="Go north\n")
    assert human.returncode == 0, human.stderr
    assert "acknowledged:" in human.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_simulate_wait_download_and_recordings(server: Any, tmp_path: Path) -> None:
    import av

    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    sims = tmp_path / "sims"
    proc = run("--json", *api(server), "simulate", str(script), "--landscape", "--wait",
               "--download", str(sims), timeout=120)
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert job["status"] == "completed"
    assert len(job["downloaded"]) == len(job["streams"]) == 1
    video = Path(job["downloaded"][0])
    assert video.parent == sims and video.stat().st_size > 0
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0

    listed = run("--json", *api(server), "simulations", "list")
    assert listed.returncode == 0, listed.stderr
    assert job["job_id"] in [j["job_id"] for j in json.loads(listed.stdout)["jobs"]]
    got = run("--json", *api(server), "simulations", "get", job["job_id"])
    assert json.loads(got.stdout)["status"] == "completed"
    cancel = run(*api(server), "simulations", "cancel", job["job_id"])
    assert_one_line_error(cancel, 1)  # a finished job cannot be cancelled (400)

    stream_id = job["streams"][0]["stream_id"]
    rec = run("--json", *api(server), "recordings", "get", stream_id)
    assert rec.returncode == 0, rec.stderr
    assert json.loads(rec.stdout)["stream_id"] == stream_id
    target = tmp_path / "dl"
    target.mkdir()
    dl = run(*api(server), "recordings", "download", stream_id, str(target))
    assert dl.returncode == 0, dl.stderr
    assert (target / f"{stream_id}.mp4").stat().st_size > 0
    listing = run("--json", *api(server), "recordings", "list", "--limit", "5")
    assert listing.returncode == 0, listing.stderr
    assert "recordings" in json.loads(listing.stdout)


@pytest.mark.e2e
def test_server_errors_are_one_line(server: Any) -> None:
    proc = run(*api(server), "recordings", "get", "no-such-stream")
    assert_one_line_error(proc, 1)
    bad_key = run("--api-url", server.url, "--api-key", "wrong-key", "recordings", "list")
    assert_one_line_error(bad_key, 1)
    assert "wrong-key" not in bad_key.stderr


@pytest.mark.e2e
def test_serve_prints_url_and_key_and_stops_on_sigint(tmp_path: Path) -> None:
    import signal

    pytest.importorskip("odyssey_sync.local.cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODYSSEY_API")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "odyssey_sync", "serve", "--port", "0", "--size", "320x176",
         "--fps", "15", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("ODYSSEY_API_KEY=" in line for line in lines):
            line = proc.stdout.readline()
            assert line, f"server exited early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line)
        url = next(ln.split("=", 1)[1].strip() for ln in lines if "ODYSSEY_API_URL=" in ln)
        key = next(ln.split("=", 1)[1].strip() for ln in lines if "ODYSSEY_API_KEY=" in ln)
        listed = run("--json", "recordings", "list",
                     env={"ODYSSEY_API_URL": url, "ODYSSEY_API_KEY": key})
        if listed.returncode != 0 and "odyssey_sync.client" in listed.stderr:
            pytest.skip("client not available yet")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["recordings"] == []
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    assert proc.returncode == 0


def test_serve_port_in_use_is_one_line_failure(tmp_path: Path) -> None:
    import socket

    pytest.importorskip("odyssey_sync.local.cli")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run("serve", "--port", str(port), "--data-dir", str(tmp_path / "d"), timeout=60)
    assert_one_line_error(proc, 1)


@pytest.mark.e2e
def test_spectate_watches_a_live_broadcast(server: Any, tmp_path: Path) -> None:
    import threading

    import av

    from odyssey_sync.client import Odyssey

    ready = threading.Event()
    infos: list[Any] = []
    with Odyssey(server.api_key, api_url=server.url) as owner:
        def on_broadcast_ready(info: Any) -> None:
            infos.append(info)
            ready.set()

        owner.connect(on_broadcast_ready=on_broadcast_ready)
        owner.start_stream("A harbour at dawn", portrait=False, broadcast=True)
        assert ready.wait(15)
        info = infos[0]
        out = tmp_path / "watched.mp4"
        proc = run("--json", "spectate", info.webrtc_url, "-", "--seconds", "2", "--out", str(out),
                   stdin=info.spectator_token + "\n")
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["frames"] > 0 and result["ended"] is False
        assert info.spectator_token not in proc.stderr
        with av.open(str(out)) as container:
            assert sum(1 for _ in container.decode(video=0)) == result["frames"]
        bad = run("spectate", info.webrtc_url, "-", stdin="wrong-token\n")
        assert_one_line_error(bad, 1, "401")
        owner.end_stream()


@pytest.mark.parametrize(
    ("stream_id", "name"),
    [("st-1", "st-1.mp4"), ("../../etc/passwd", "_.._etc_passwd.mp4"), ("a/b", "a_b.mp4"),
     ("...", "recording.mp4")],
)
def test_download_file_names_cannot_escape_the_directory(stream_id: str, name: str) -> None:
    assert cli._file_name(stream_id) == name


@pytest.mark.e2e
def test_demo_runs_on_the_embedded_server(tmp_path: Path) -> None:
    pytest.importorskip("odyssey_sync.demo")
    out = tmp_path / "demo"
    proc = run("demo", "--out", str(out), "--seconds", "2", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "demo.mp4").stat().st_size > 0
    assert (out / "contact_sheet.png").stat().st_size > 0


@pytest.mark.e2e
def test_stream_broadcast_reports_the_spectator_details(server: Any) -> None:
    proc = run("--json", *api(server), "stream", "A harbour", "--seconds", "1.5", "--broadcast")
    assert proc.returncode == 0, proc.stderr
    broadcast = json.loads(proc.stdout)["broadcast"]
    assert broadcast["webrtc_url"].startswith(server.url)
    assert broadcast["spectator_token"]
    assert "broadcast ready:" in proc.stderr


@pytest.mark.e2e
def test_ctrl_c_exits_130_without_a_traceback(server: Any, tmp_path: Path) -> None:
    import signal

    env = {k: v for k, v in os.environ.items() if not k.startswith("ODYSSEY_API")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "partial.mp4"
    proc = subprocess.Popen(
        [sys.executable, "-m", "odyssey_sync", *api(server), "stream", "A cat", "--seconds", "60",
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    try:
        assert proc.stderr is not None
        seen = ""
        while "stream started" not in seen:
            line = proc.stderr.readline()
            assert line, f"exited early: {seen}"
            seen += line
        import time

        deadline = time.monotonic() + 15  # the file appears with the first frame
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    assert proc.returncode == 130, seen + rest
    assert "Traceback" not in rest
    assert "interrupted" in rest
    import av

    with av.open(str(out)) as container:  # the video so far is finished, not corrupt
        assert sum(1 for _ in container.decode(video=0)) > 0
