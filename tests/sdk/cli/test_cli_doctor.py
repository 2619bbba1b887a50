"""``odyssey-sync doctor``: a healthy setup, an unreachable URL, the NumPy fallback."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from odyssey_sync import native_available
from odyssey_sync.cli import doctor
from odyssey_sync.local import LocalOdyssey


def checks_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


@pytest.mark.e2e
def test_healthy_setup_exits_0(cli_main: Any, api: list[str], server: LocalOdyssey,
                               tmp_path: Path) -> None:
    if not native_available():
        pytest.skip("the native extension is not built in this environment")
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    (data / "media" / "a.mp4").write_bytes(b"x" * 3000)
    proc = cli_main("--json", *api, "doctor", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stdout
    report = json.loads(proc.stdout)
    assert report["healthy"] is True and report["problems"] == []
    checks = checks_by_name(report)
    assert [c["name"] for c in report["checks"]] == [
        "versions", "native", "decoders", "api_key", "api", "udp", "data_dir"]
    assert checks["versions"]["details"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert checks["native"]["details"]["tier"] in doctor._TIERS.values()
    assert checks["decoders"]["details"]["decoders"] == {"vp8": True, "h264": True}
    api_check = checks["api"]
    assert api_check["status"] == "ok", api_check
    assert api_check["details"]["auth_ms"] >= 0
    assert 0 <= api_check["details"]["region_ping_ms"]["local"] < 9999
    assert checks["udp"]["details"] == {"skipped": True}  # the server is on this machine
    assert checks["data_dir"]["details"] == {"path": str(data), "exists": True,
                                             "bytes": 3000, "files": 1}
    assert server.api_key not in proc.stdout + proc.stderr


def test_human_report_of_a_healthy_setup(cli_main: Any, api: list[str], tmp_path: Path) -> None:
    if not native_available():
        pytest.skip("the native extension is not built in this environment")
    proc = cli_main(*api, "doctor", "--data-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1] == "healthy"
    assert "OK    native" in proc.stdout and "SIMD tier" in proc.stdout


def test_unreachable_url_exits_1_with_the_reason(cli_main: Any, tmp_path: Path) -> None:
    proc = cli_main("doctor", "--api-url", "http://127.0.0.1:9", "--data-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "FAIL  api" in proc.stdout and "http://127.0.0.1:9 does not answer" in proc.stdout
    assert "problem(s):" in proc.stdout
    as_json = cli_main("--json", "doctor", "--api-url", "http://127.0.0.1:9",
                       "--data-dir", str(tmp_path))
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["healthy"] is False
    assert any(p.startswith("api: http://127.0.0.1:9 does not answer") for p in report["problems"])


@pytest.mark.e2e
def test_a_refused_key_exits_1(cli_main: Any, server: LocalOdyssey, tmp_path: Path) -> None:
    proc = cli_main("--json", "--api-url", server.url, "--api-key", "not-the-key", "doctor",
                    "--data-dir", str(tmp_path))
    assert proc.returncode == 1
    api_check = checks_by_name(json.loads(proc.stdout))["api"]
    assert api_check["status"] == "fail" and "authentication failed" in api_check["summary"]
    assert "not-the-key" not in proc.stdout


def test_forced_numpy_fallback_exits_1_and_says_how_to_fix_it(
    run_cli: Any, tmp_path: Path
) -> None:
    proc = run_cli("--json", "doctor", "--api-url", "http://127.0.0.1:9",
                   "--data-dir", str(tmp_path), env={"ODYSSEY_SYNC_NATIVE": "0"})
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    native = checks_by_name(report)["native"]
    assert native["status"] == "fail" and native["details"]["disabled_by_env"] is True
    assert "ODYSSEY_SYNC_NATIVE=0" in native["summary"] and "ODYSSEY_SYNC_NATIVE" in native["fix"]
    assert any(p.startswith("native:") for p in report["problems"])


def test_unbuilt_extension_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    import odyssey_sync

    monkeypatch.delenv("ODYSSEY_SYNC_NATIVE", raising=False)
    monkeypatch.setattr(odyssey_sync, "native_available", lambda: False)
    monkeypatch.setitem(sys.modules, "odyssey_sync._yuv", None)  # import fails
    check = doctor.check_native()
    assert check.status == "fail" and "not built" in check.summary
    assert check.fix is not None and "wheel" in check.fix and "C compiler" in check.fix


def test_missing_key_is_a_warning_not_a_failure() -> None:
    check = doctor.check_api_key(argparse.Namespace(api_key=None))
    assert check.status == "warn" and "ODYSSEY_API_KEY" in check.summary


@pytest.fixture
def stun_server() -> Iterator[tuple[str, int]]:
    """A UDP responder answering one STUN binding request like a STUN server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)

    def answer() -> None:
        try:
            request, peer = sock.recvfrom(2048)
            sock.sendto(b"\x01\x01\x00\x00" + request[4:20], peer)
        except OSError:
            pass

    thread = threading.Thread(target=answer, name="test-stun", daemon=True)
    thread.start()
    yield sock.getsockname()
    thread.join(6)
    sock.close()


def udp_args() -> argparse.Namespace:
    return argparse.Namespace(api_url="https://api.example.invalid", timeout=2.0)


def test_udp_probe_reports_a_stun_answer(monkeypatch: pytest.MonkeyPatch,
                                         stun_server: tuple[str, int]) -> None:
    monkeypatch.setattr(doctor, "STUN_SERVER", stun_server)
    check = doctor.check_udp(udp_args())
    assert check.status == "ok" and check.details["rtt_ms"] >= 0


def test_udp_probe_without_an_answer_is_a_warning_with_a_hint(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never answers
        monkeypatch.setattr(doctor, "STUN_SERVER", silent.getsockname())
        args = argparse.Namespace(api_url="https://api.example.invalid", timeout=0.3)
        check = doctor.check_udp(args)
    assert check.status == "warn" and check.fix is not None and "UDP" in check.fix
