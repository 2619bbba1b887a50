"""Packaging: the abi3 wheel runs natively without a compiler; the sdist falls back to NumPy.

The wheel is built once per session with ``scripts/build_wheel.sh`` (``python -m
build`` + ``auditwheel repair``), or taken from ``ODYSSEY_SYNC_WHEEL_DIR`` (a folder
holding a prebuilt wheel and sdist). Each check installs into a fresh virtual
environment that sees this environment's packages (``--system-site-packages``, so
the dependencies are not downloaded again) and runs from a folder outside the
repository, with no C compiler on ``PATH`` and ``CC``/``CXX`` naming a program that
does not exist.

Outside a source checkout (cibuildwheel copies only ``tests/`` next to the installed
wheel) the build checks skip; ``test_native_loaded_when_required`` still runs there.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import odyssey_sync

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_wheel.sh"
IN_CHECKOUT = (REPO / "setup.py").is_file() and BUILD_SCRIPT.is_file()

pytestmark = pytest.mark.slow

# Run inside the fresh environment: which odyssey_sync is imported, and does it convert?
PROBE = """
import json, sys, warnings
import av, numpy as np
import odyssey_sync
from odyssey_sync import convert_frame, native_available
frame = av.VideoFrame(34, 18, "yuv420p")
for i, plane in enumerate(frame.planes):
    buf = np.frombuffer(memoryview(plane), np.uint8)
    buf[:] = (np.arange(buf.size) * (7 + 5 * i)) % 256
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's one-time notice
    rgb = convert_frame(frame)
diff = int(np.abs(rgb.astype(int) - frame.to_ndarray(format="rgb24").astype(int)).max())
yuv = None
if native_available():
    import odyssey_sync._yuv as yuv_module
    yuv = yuv_module.__file__
print(json.dumps({"file": odyssey_sync.__file__, "native": native_available(),
                  "yuv": yuv, "diff": diff, "prefix": sys.prefix}))
"""


def _require_checkout() -> None:
    if not IN_CHECKOUT:
        pytest.skip("not a source checkout (setup.py / scripts/build_wheel.sh absent)")


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the repaired manylinux abi3 wheel and the sdist."""
    _require_checkout()
    prebuilt = os.environ.get("ODYSSEY_SYNC_WHEEL_DIR")
    if prebuilt:
        return Path(prebuilt)
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("scripts/build_wheel.sh builds the Linux x86_64 wheel")
    for tool in ("build", "auditwheel"):
        if shutil.which(tool) is None and _missing_module(tool):
            pytest.fail(f"{tool} is not installed: python3 -m pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("wheelhouse")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), str(out)], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _missing_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, (pattern, [p.name for p in folder.iterdir()])
    return found[0]


@pytest.fixture
def bare_env(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh venv (sees this environment's packages) and an environment with no compiler."""
    home = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(home)
    bin_dir = home / ("Scripts" if sys.platform == "win32" else "bin")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "ODYSSEY_SYNC_NATIVE", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=str(bin_dir), CC="/nonexistent/cc", CXX="/nonexistent/c++",
               LDSHARED="/nonexistent/cc -shared", PIP_DISABLE_PIP_VERSION_CHECK="1")
    for compiler in ("cc", "gcc", "clang", "c99"):
        assert shutil.which(compiler, path=env["PATH"]) is None, compiler
    yield bin_dir / "python", env


def _install(python: Path, env: dict[str, str], target: Path, cwd: Path, *extra: str) -> str:
    # --ignore-installed: this environment's editable odyssey-sync must not count as
    # "already satisfied"; --no-deps: dependencies come from --system-site-packages.
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed",
         "--no-cache-dir", *extra, str(target)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _probe(python: Path, env: dict[str, str], cwd: Path) -> dict[str, object]:
    import json

    proc = subprocess.run(
        [str(python), "-c", PROBE], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_wheel_is_one_abi3_manylinux_wheel_with_every_module(dist_dir: Path) -> None:
    wheel = _one(dist_dir, "*.whl")
    assert "-cp310-abi3-" in wheel.name, wheel.name
    assert "manylinux" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert any(n.startswith("odyssey_sync/_yuv.abi3.") for n in names), sorted(names)
    assert "odyssey_sync/py.typed" in names
    source = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "odyssey_sync").rglob("*.py")
        if "__pycache__" not in p.parts and not p.name.startswith("_yuv")
    }
    missing = sorted(source - names)
    assert not missing, f"modules missing from the wheel: {missing}"


def test_wheel_runs_natively_without_a_compiler(
    dist_dir: Path, bare_env: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    python, env = bare_env
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    _install(python, env, _one(dist_dir, "*.whl"), outside)
    result = _probe(python, env, outside)
    prefix = str(result["prefix"])
    assert str(result["file"]).startswith(prefix), result  # the wheel's copy, not the checkout's
    assert result["native"] is True, result
    assert str(result["yuv"]).startswith(prefix) and ".abi3." in str(result["yuv"]), result
    assert result["diff"] == 0, result


def test_sdist_without_a_compiler_installs_the_numpy_fallback(
    dist_dir: Path, bare_env: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    python, env = bare_env
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    log = _install(python, env, _one(dist_dir, "*.tar.gz"), outside, "--verbose")
    assert "native frame converter could not be built" in log, log[-3000:]
    result = _probe(python, env, outside)
    assert str(result["file"]).startswith(str(result["prefix"])), result
    assert result["native"] is False, result
    assert result["diff"] == 0, result


def test_native_loaded_when_required() -> None:
    """CI and cibuildwheel set ODYSSEY_SYNC_NATIVE=1: the tested install must be native."""
    if os.environ.get("ODYSSEY_SYNC_NATIVE", "").strip() != "1":
        pytest.skip("ODYSSEY_SYNC_NATIVE=1 not set")
    assert odyssey_sync.native_available(), odyssey_sync.__file__
