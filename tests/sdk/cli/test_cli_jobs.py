"""``simulate``, ``recordings`` and ``simulations`` end to end against a local server."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import av
import pytest

from odyssey_sync.local import LocalOdyssey
from tests.support import simulation_script

pytestmark = pytest.mark.e2e

SCRIPT = [
    {"timestamp_ms": 0, "start": {"prompt": "A cat asleep on a couch"}},
    {"timestamp_ms": 600, "interact": {"prompt": "The cat wakes up"}},
    {"timestamp_ms": 1200, "end": {}},
]


@pytest.mark.slow
def test_simulate_wait_download_and_recordings(
    run_cli: Any, cli_main: Any, one_line_error: Any, jobs_server: LocalOdyssey, tmp_path: Path
) -> None:
    api = ["--api-url", jobs_server.url, "--api-key", jobs_server.api_key]
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    sims = tmp_path / "sims"
    proc = run_cli("--json", *api, "simulate", str(script), "--landscape", "--wait",
                   "--download", str(sims), timeout=120)
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert job["status"] == "completed"
    assert len(job["downloaded"]) == len(job["streams"]) == 1
    video = Path(job["downloaded"][0])
    assert video.parent == sims and video.stat().st_size > 0
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0

    listed = cli_main("--json", *api, "simulations", "list", "--status", "completed")
    assert listed.returncode == 0, listed.stderr
    assert job["job_id"] in [j["job_id"] for j in json.loads(listed.stdout)["jobs"]]
    got = cli_main("--json", *api, "simulations", "get", job["job_id"])
    assert json.loads(got.stdout)["status"] == "completed"
    cancel = cli_main(*api, "simulations", "cancel", job["job_id"])
    one_line_error(cancel, 1)  # a finished job cannot be cancelled (400)

    stream_id = job["streams"][0]["stream_id"]
    rec = cli_main("--json", *api, "recordings", "get", stream_id)
    assert rec.returncode == 0, rec.stderr
    assert json.loads(rec.stdout)["stream_id"] == stream_id
    target = tmp_path / "dl"
    target.mkdir()
    dl = cli_main(*api, "recordings", "download", stream_id, str(target))
    assert dl.returncode == 0, dl.stderr
    assert (target / f"{stream_id}.mp4").stat().st_size > 0
    listing = cli_main("--json", *api, "recordings", "list", "--limit", "5")
    assert listing.returncode == 0, listing.stderr
    assert "recordings" in json.loads(listing.stdout)


def test_server_errors_are_one_line(cli_main: Any, one_line_error: Any, api: list[str],
                                    server: LocalOdyssey) -> None:
    one_line_error(cli_main(*api, "recordings", "get", "no-such-stream"), 1)
    bad_key = cli_main("--api-url", server.url, "--api-key", "wrong-key", "recordings", "list")
    one_line_error(bad_key, 1)
    assert "wrong-key" not in bad_key.stderr


def test_ctrl_c_while_waiting_names_the_job_and_how_to_follow_it(
    popen_cli: Any, run_cli: Any, tmp_path: Path
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    # Jobs stay pending for a minute: the wait is surely interrupted.
    with LocalOdyssey(size=(320, 176), job_delay=60.0, data_dir=tmp_path / "srv") as srv:
        proc = popen_cli("--api-url", srv.url, "--api-key", srv.api_key, "simulate",
                         str(script), "--wait")
        assert proc.stderr is not None
        line = ""
        deadline = time.monotonic() + 30
        while "simulation job" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "exited early"
        job_id = line.split("simulation job ", 1)[1].split(":", 1)[0]
        time.sleep(0.5)  # into the wait
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert f"simulation job {job_id} keeps running" in err
        assert f"odyssey-sync simulations get {job_id}" in err
        assert f"odyssey-sync simulations cancel {job_id}" in err
        still = run_cli("--json", "--api-url", srv.url, "--api-key", srv.api_key,
                        "simulations", "get", job_id)
        assert json.loads(still.stdout)["status"] == "pending", still.stderr


def test_simulate_batch_runs_a_directory_of_scripts(
    cli_main: Any, jobs_server: LocalOdyssey, tmp_path: Path
) -> None:
    api = ["--api-url", jobs_server.url, "--api-key", jobs_server.api_key]
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("a", "b", "c"):
        (scripts / f"{name}.json").write_text(json.dumps(simulation_script(f"scene {name}", 500)))
    out = tmp_path / "videos"
    proc = cli_main("--json", *api, "simulate", "--batch", str(scripts), "--parallel", "2",
                    "--download", str(out), "--landscape")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] and [i["name"] for i in result["items"]] == ["a", "b", "c"]
    assert sorted(p.name for p in out.iterdir()) == ["a.mp4", "b.mp4", "c.mp4"]


def test_simulate_batch_usage_mistakes(cli_main: Any, one_line_error: Any,
                                       tmp_path: Path) -> None:
    api = ["--api-url", "http://127.0.0.1:9", "--api-key", "ody_unused"]
    one_line_error(cli_main(*api, "simulate"), 2)  # neither a script nor --batch
    (tmp_path / "bad.json").write_text("{not json")
    one_line_error(cli_main(*api, "simulate", "--batch", str(tmp_path)), 2)
    one_line_error(cli_main(*api, "simulate", "--batch", str(tmp_path / "none")), 2)


@pytest.mark.slow
def test_fleet_writes_shards_from_the_command_line(
    run_cli: Any, api: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "rollouts"
    proc = run_cli("--json", *api, "fleet", "--out", str(out), "--actors", "2",
                   "--max-sessions", "1", "--steps", "4", "--obs-size", "32x32",
                   "--prompts", "go left", "go right", "--every", "2", timeout=240)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["peak_sessions"] == 1 and not result["failures"]
    assert len(result["shards"]) == 2 and result["observations"] >= 2
    from odyssey_sync.fleet import ROLLOUT_SCHEMA, read_rollouts

    table = read_rollouts(out)
    assert table.schema.names == ROLLOUT_SCHEMA.names
