"""``serve`` options of the local server (odyssey_sync/local/cli.py) and ``serve --json``."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any

import pytest
import requests

from odyssey_sync.local import cli as local_cli
from odyssey_sync.local import server as server_module
from tests.local.helpers import serve_command


class _Captured(Exception):
    pass


def _options(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> dict[str, Any]:
    """The LocalOdyssey options ``serve argv`` would start a server with."""
    seen: dict[str, Any] = {}

    class FakeServer:
        def __init__(self, **options: Any) -> None:
            seen.update(options)
            raise _Captured

    monkeypatch.setattr(server_module, "LocalOdyssey", FakeServer)
    parser = argparse.ArgumentParser()
    local_cli.add_serve_arguments(parser)
    with pytest.raises(_Captured):
        local_cli.run_serve(parser.parse_args(argv))
    return seen


def test_service_limit_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _options(monkeypatch, ["--stream-limit", "3", "--connection-limit", "8",
                                  "--stale-session-timeout", "1.5"])
    assert (seen["stream_limit"], seen["connection_limit"], seen["stale_session_timeout"]) \
        == (3.0, 8.0, 1.5)
    defaults = _options(monkeypatch, [])
    assert (defaults["stream_limit"], defaults["connection_limit"],
            defaults["stale_session_timeout"]) == (150.0, 3600.0, 30.0)


def test_session_timeout_option_is_deprecated(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    seen = _options(monkeypatch, ["--session-timeout", "4"])
    assert seen["stream_limit"] == 4.0
    assert "deprecated" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--stream-limit", "0"], ["--connection-limit", "-1"],
                                  ["--stale-session-timeout", "nan"], ["--size", "16x16"],
                                  ["--stream-limit", "inf"]])
def test_bad_values_are_usage_errors(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    local_cli.add_serve_arguments(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(argv)
    assert exited.value.code == 2


def test_serve_json_prints_one_line_and_stops_on_sigterm(tmp_path: Path) -> None:
    with serve_command("--json", "--size", "320x176", "--data-dir", str(tmp_path),
                       "--stream-limit", "5") as proc:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert set(line) == {"url", "data_dir", "api_key"}
        assert line["data_dir"] == str(tmp_path) and line["api_key"]
        assert requests.get(line["url"] + "/ping", timeout=10).json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
