"""The data directory: its default (never the user's during tests), prune, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import platformdirs
import pytest

from odyssey_sync.local import DATA_DIR_ENV, PruneResult, default_data_dir, prune
from tests.local.helpers import Api, local_server, play_stream

DAY = 86400.0


def test_tests_never_use_the_users_data_directory() -> None:
    users = Path(platformdirs.user_cache_dir("odyssey-sync")) / "local"
    assert os.environ.get(DATA_DIR_ENV)
    assert default_data_dir() == Path(os.environ[DATA_DIR_ENV])
    assert default_data_dir() != users


def test_default_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "x"))
    assert default_data_dir() == tmp_path / "x"
    monkeypatch.setenv(DATA_DIR_ENV, "  ")
    assert default_data_dir() == Path(platformdirs.user_cache_dir("odyssey-sync")) / "local"


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def _populate(root: Path) -> dict[str, Path]:
    media = root / "media"
    media.mkdir(parents=True)
    files = {
        "old_video": media / "aaa.mp4",
        "old_thumb": media / "aaa.thumb.jpg",
        "new_video": media / "bbb.mp4",
        "part": media / ".ccc.mp4.123.part",
        "db": root / "odyssey-local.sqlite3",
        "key": root / "api_key",
    }
    for name, path in files.items():
        path.write_bytes(name.encode() * 100)
    for name in ("old_video", "old_thumb", "db", "key"):
        _age(files[name], 40)
    return files


def test_prune_older_than_keeps_recent_media_database_and_key(tmp_path: Path) -> None:
    files = _populate(tmp_path)
    result = prune(tmp_path, older_than_days=30)
    assert result == PruneResult(files_removed=3, bytes_freed=sum(
        len(n.encode()) * 100 for n in ("old_video", "old_thumb", "part")))
    assert {name for name, p in files.items() if p.exists()} == {"new_video", "db", "key"}


def test_prune_everything_but_the_database_and_key(tmp_path: Path) -> None:
    files = _populate(tmp_path)
    assert prune(tmp_path).files_removed == 4
    assert {name for name, p in files.items() if p.exists()} == {"db", "key"}
    assert prune(tmp_path) == PruneResult(0, 0)
    assert prune(tmp_path / "missing") == PruneResult(0, 0)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "3", True])
def test_prune_rejects_bad_ages(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="older_than_days"):
        prune(tmp_path, older_than_days=bad)  # type: ignore[arg-type]


def test_prune_keeps_a_running_servers_fresh_part_files(tmp_path: Path) -> None:
    with local_server(tmp_path) as server, Api(server) as api:
        play_stream(server, api.allocate(), "kept", frames=5)
        server.wait_for_recording("kept", timeout=60)
        part = tmp_path / "media" / ".x.mp4.1.part"
        part.write_bytes(b"in progress")
        result = prune(tmp_path)
        assert part.exists()  # may be a render in progress
        assert result.files_removed >= 1  # the recording's media
        assert api.get("/recordings/kept").status_code == 200  # metadata stays
    assert prune(tmp_path).files_removed == 1  # server gone: the .part goes too


def test_prune_command(tmp_path: Path) -> None:
    _populate(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "odyssey_sync.local", "prune", "--data-dir", str(tmp_path),
         "--older-than", "30", "--json"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"data_dir": str(tmp_path), "files_removed": 3,
                                       "bytes_freed": 2200}
    bad = subprocess.run([sys.executable, "-m", "odyssey_sync.local", "prune", "--older-than",
                          "-2"], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parents[2])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
