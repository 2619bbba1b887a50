"""Usage mistakes and pure helpers of the command line: no server needed.

Mistakes exit 2 with one ``odyssey-sync: error:`` line, before any network
call: the API URL used here (port 9, discard) refuses connections, so a
command that tried to connect would fail with exit code 1 instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from odyssey_sync.cli.inputs import safe_file_name
from odyssey_sync.cli.jobs import load_script
from odyssey_sync.cli.output import UsageError, human_size, to_jsonable
from odyssey_sync.cli.parser import build_parser

NOWHERE = ["--api-url", "http://127.0.0.1:9", "--api-key", "k"]


def test_help_lists_every_command(cli_main: Any) -> None:
    proc = cli_main("--help")
    assert proc.returncode == 0
    for command in ("serve", "demo", "stream", "interact", "spectate", "simulate", "recordings",
                    "simulations", "local", "doctor"):
        assert command in proc.stdout


def test_version(cli_main: Any) -> None:
    proc = cli_main("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("odyssey-sync ")


def test_no_command_is_a_usage_error(cli_main: Any) -> None:
    proc = cli_main()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_unknown_subcommand_is_a_usage_error(cli_main: Any, one_line_error: Any) -> None:
    one_line_error(cli_main("recordings", "lst"), 2, "invalid choice")


def test_missing_api_key_is_a_usage_error(cli_main: Any, one_line_error: Any) -> None:
    one_line_error(cli_main("recordings", "list"), 2, "no API key")


@pytest.mark.parametrize("bad", ["0", "-3", "soon", "inf"])
def test_bad_seconds_is_a_usage_error(cli_main: Any, one_line_error: Any, bad: str) -> None:
    one_line_error(cli_main("stream", "A cat", "--seconds", bad, *NOWHERE), 2, "--seconds")


def test_unknown_simulation_status_is_a_usage_error(cli_main: Any, one_line_error: Any) -> None:
    proc = cli_main("simulations", "list", "--status", "bogus", *NOWHERE)
    one_line_error(proc, 2, "--status", "invalid choice", "pending")


@pytest.mark.parametrize("bad", ["-1", "+5", "1 ", "٣", "x"])
def test_bad_limit_is_a_usage_error(cli_main: Any, one_line_error: Any, bad: str) -> None:
    one_line_error(cli_main("recordings", "list", "--limit", bad, *NOWHERE), 2, "--limit")


def test_unreadable_script_is_a_usage_error(
    cli_main: Any, one_line_error: Any, tmp_path: Path
) -> None:
    one_line_error(cli_main("simulate", str(tmp_path / "missing.json"), *NOWHERE), 2,
                   "cannot read script")


def test_invalid_json_script_is_a_usage_error(
    cli_main: Any, one_line_error: Any, tmp_path: Path
) -> None:
    script = tmp_path / "bad.json"
    script.write_text("[{not json")
    one_line_error(cli_main("simulate", str(script), *NOWHERE), 2, "not valid JSON")


def test_missing_image_is_a_usage_error(
    cli_main: Any, one_line_error: Any, tmp_path: Path
) -> None:
    one_line_error(cli_main("stream", "A cat", "--image", str(tmp_path / "nope.jpg"), *NOWHERE),
                   2, "cannot read image", "no such file")


@pytest.mark.parametrize("command", ["stream", "interact"])
def test_an_image_that_is_no_image_is_refused_before_connecting(
    cli_main: Any, one_line_error: Any, tmp_path: Path, command: str
) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("these are notes, not a picture\n")
    proc = cli_main(command, "A cat", "--image", str(fake), *NOWHERE, stdin="")
    one_line_error(proc, 2, "cannot read image", "notes.jpg")


def test_out_in_missing_directory_is_a_usage_error(
    cli_main: Any, one_line_error: Any, tmp_path: Path
) -> None:
    proc = cli_main("stream", "A cat", "--out", str(tmp_path / "no" / "such" / "v.mp4"),
                    *NOWHERE)
    one_line_error(proc, 2, "output directory does not exist")


def test_show_without_display_is_a_clear_error(
    cli_main: Any, one_line_error: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", "")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    one_line_error(cli_main("stream", "A cat", "--show", *NOWHERE), 2, "--show")


def test_show_with_headless_opencv_names_the_package(
    cli_main: Any, one_line_error: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cv2 = pytest.importorskip("cv2")
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:    NONE\n")
    monkeypatch.setenv("DISPLAY", ":99")
    one_line_error(cli_main("stream", "A cat", "--show", *NOWHERE), 2, "GUI support",
                   "pip install opencv-python")


def test_spectate_empty_token_from_stdin_is_a_usage_error(
    cli_main: Any, one_line_error: Any
) -> None:
    proc = cli_main("spectate", "http://127.0.0.1:9/live/x", "-", stdin="\n")
    one_line_error(proc, 2, "empty spectator token")


def test_demo_with_an_api_url_but_no_key_is_refused(
    cli_main: Any, one_line_error: Any, tmp_path: Path
) -> None:
    proc = cli_main("demo", "--api-url", "http://127.0.0.1:9", "--out", str(tmp_path / "d"))
    one_line_error(proc, 2, "http://127.0.0.1:9", "no API key")
    assert "embedded server:" not in proc.stdout  # the banner of a started local server


def test_unreachable_server_is_one_line_failure(cli_main: Any, one_line_error: Any) -> None:
    proc = cli_main("recordings", "list", "--api-url", "http://127.0.0.1:9",
                    "--api-key", "secret-key-123")
    one_line_error(proc, 1)
    assert "secret-key-123" not in proc.stderr + proc.stdout


def test_debug_prints_a_traceback(cli_main: Any) -> None:
    proc = cli_main("--debug", "recordings", "list", *NOWHERE)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr


def test_global_options_after_the_command_are_accepted() -> None:
    args = build_parser().parse_args(["recordings", "list", "--json", "--api-key", "k"])
    assert args.json is True and args.api_key == "k"
    args = build_parser().parse_args(["--json", "--api-key", "k", "recordings", "list"])
    assert args.json is True and args.api_key == "k"


def test_to_jsonable_handles_dataclasses_enums_and_paths() -> None:
    from odyssey_sync.types import SimulationJobInfo, SimulationJobStatus

    info = SimulationJobInfo(job_id="j", status=SimulationJobStatus.PENDING)
    assert to_jsonable({"x": [info], "p": Path("a")}) == {
        "x": [{"job_id": "j", "status": "pending", "priority": "normal", "created_at": "",
               "completed_at": None, "error_message": None}],
        "p": "a",
    }


def test_script_file_shapes(tmp_path: Path) -> None:
    entries = [{"timestamp_ms": 0, "start": {"prompt": "a"}}, {"timestamp_ms": 1000, "end": {}}]
    p = tmp_path / "s.json"
    p.write_text(json.dumps(entries))
    assert load_script(p) == {"script": entries}
    p.write_text(json.dumps([entries, entries]))
    assert load_script(p) == {"scripts": [entries, entries]}
    p.write_text(json.dumps({"script_url": "https://x/s.json"}))
    assert load_script(p) == {"script_url": "https://x/s.json"}
    bad: Any
    for bad in ([], {"script": entries, "scripts": [entries]}, "text"):
        p.write_text(json.dumps(bad))
        with pytest.raises(UsageError):
            load_script(p)


@pytest.mark.parametrize(
    ("stream_id", "name"),
    [("st-1", "st-1.mp4"), ("../../etc/passwd", "_.._etc_passwd.mp4"), ("a/b", "a_b.mp4"),
     ("...", "recording.mp4")],
)
def test_download_file_names_cannot_escape_the_directory(stream_id: str, name: str) -> None:
    assert safe_file_name(stream_id) == name


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                         (5 * 2**20, "5.0 MiB"), (3 * 2**40, "3.0 TiB")])
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


def test_every_command_has_a_handler() -> None:
    parser = build_parser()
    commands: list[list[str]] = [
        ["serve"], ["demo"], ["stream", "p"], ["interact", "p"], ["spectate", "u", "t"],
        ["simulate", "s.json"], ["recordings", "list"], ["recordings", "get", "x"],
        ["recordings", "download", "x"], ["simulations", "list"], ["simulations", "get", "j"],
        ["simulations", "cancel", "j"], ["local", "prune"], ["doctor"]]
    for argv in commands:
        handler: Callable[..., int] = parser.parse_args(argv).handler
        assert callable(handler) and handler.__name__.startswith("cmd_"), argv
