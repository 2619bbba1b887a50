"""The examples compile, and the non-GUI ones run against the embedded server."""

from __future__ import annotations

import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"opencv_viewer.py", "pygame_loop.py", "control_loop.py",
            "batch_simulations.py"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_compiles(path: Path, tmp_path: Path) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


def run_example(
    name: str, *args: str, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("odyssey_sync.local")
    pytest.importorskip("odyssey_sync.client")
    import odyssey_sync

    if not hasattr(odyssey_sync, "Odyssey"):
        pytest.skip("odyssey_sync does not export Odyssey yet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODYSSEY_API")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False,
    )


@pytest.mark.e2e
def test_control_loop_runs(tmp_path: Path) -> None:
    proc = run_example("control_loop.py", "--seconds", "3", "--interact-every", "1", "--small",
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    fields = dict(item.split("=") for item in summary.split())
    assert int(fields["ticks"]) > 0
    assert int(fields["distinct_frames"]) > 1
    assert int(fields["interactions"]) >= 1
    assert "acknowledged:" in proc.stdout


@pytest.mark.e2e
def test_batch_simulations_runs(tmp_path: Path) -> None:
    out = tmp_path / "sims"
    proc = run_example("batch_simulations.py", "--out", str(out), "--length", "1", "--small",
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 3
    assert all(v.stat().st_size > 0 for v in videos)


@pytest.mark.e2e
def test_spectators_example_runs(tmp_path: Path) -> None:
    proc = run_example("spectators.py", "--viewers", "2", "--seconds", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = [line for line in proc.stdout.splitlines() if line.startswith("viewer-")]
    assert len(reports) == 2
    assert all("in order: True" in line for line in reports)


@pytest.mark.e2e
def test_pygame_loop_runs_headless(tmp_path: Path) -> None:
    pytest.importorskip("pygame")
    proc = run_example("pygame_loop.py", "--seconds", "2", "--small", cwd=tmp_path,
                       extra_env={"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    fields = dict(item.split("=") for item in summary.replace("game loops", "loops")
                  .replace("video frames drawn", "drawn").split())
    assert int(fields["loops"]) > 0 and int(fields["drawn"]) > 1


def test_opencv_viewer_without_a_gui_says_what_is_missing(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    if "NONE" not in cv2.getBuildInformation().split("GUI:", 1)[1].split("\n", 1)[0]:
        pytest.skip("this OpenCV has GUI support")
    # A display that looks set: the headless build is what must be reported.
    proc = run_example("opencv_viewer.py", cwd=tmp_path, extra_env={"DISPLAY": ":99"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no GUI support" in proc.stderr and "pip install opencv-python" in proc.stderr


@pytest.mark.e2e
def test_gym_loop_runs(tmp_path: Path) -> None:
    proc = run_example("gym_loop.py", "--steps", "10", "--small", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fields = dict(item.split("=") for item in proc.stdout.strip().splitlines()[-1].split())
    assert int(fields["steps"]) == 10


@pytest.mark.e2e
def test_vector_env_runs(tmp_path: Path) -> None:
    proc = run_example("vector_env.py", "--steps", "5", "--small", "--mode", "sync",
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "observations (2, 84, 84, 3)" in proc.stdout
