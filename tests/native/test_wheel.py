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

import json
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
# This environment's editable install of odyssey_sync (seen through
# --system-site-packages) adds a meta-path finder that would serve odyssey_sync._yuv
# from the checkout when the installed copy lacks it: drop it, test only the install.
sys.meta_path[:] = [f for f in sys.meta_path
                    if not (getattr(f, "__module__", "") or "").startswith("__editable__")]
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


# Run inside a bare environment of another CPython (only cffi installed): load the
# wheel's extension module by path, without the package's dependencies, and call it.
ABI3_PROBE = """
import importlib.machinery, importlib.util, json, pathlib, sys, sysconfig
so, = (pathlib.Path(sysconfig.get_paths()["platlib"]) / "odyssey_sync").glob("_yuv.abi3.*")
loader = importlib.machinery.ExtensionFileLoader("odyssey_sync._yuv", str(so))
spec = importlib.util.spec_from_file_location("odyssey_sync._yuv", so, loader=loader)
module = importlib.util.module_from_spec(spec)
loader.exec_module(module)
print(json.dumps({"version": list(sys.version_info[:2]), "so": str(so),
                  "level": module.lib.oys_active_level()}))
"""


def _other_cpythons() -> list[Path]:
    """The oldest and the newest CPython >= 3.10 on this machine other than this one."""
    found: dict[tuple[int, int], Path] = {}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(10, 20)]
    candidates += [str(p) for p in Path.home().glob(".pyenv/versions/3.*/bin/python3.*")]
    for candidate in candidates:
        if not candidate or candidate.endswith("-config"):
            continue
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys, sysconfig; print(*sys.version_info[:2], "
                 "sys.implementation.name, bool(sysconfig.get_config_var('Py_GIL_DISABLED')))"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout.split()
        except (OSError, subprocess.SubprocessError):
            continue
        version = (int(out[0]), int(out[1]))
        other = version != sys.version_info[:2]
        if out[2:] == ["cpython", "False"] and version >= (3, 10) and other:
            found.setdefault(version, Path(candidate))
    return [found[v] for v in sorted({min(found), max(found)})] if found else []


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
        if _missing_module(tool):
            pytest.fail(f"{tool} is not installed: python3 -m pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("wheelhouse")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
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


def test_the_same_wheel_loads_on_other_cpythons(dist_dir: Path, tmp_path: Path) -> None:
    """abi3: the one wheel installs and its extension runs on the oldest and the newest
    other CPython >= 3.10 found here (e.g. pyenv's 3.10 and 3.13)."""
    pythons = _other_cpythons()
    if not pythons:
        pytest.skip("no other CPython >= 3.10 on this machine")
    wheel = _one(dist_dir, "*.whl")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(CC="/nonexistent/cc", PIP_DISABLE_PIP_VERSION_CHECK="1")
    for n, base in enumerate(pythons):
        home = tmp_path / f"venv{n}"
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(home)],
                       check=True, timeout=120, env=env)
        python = home / "bin" / "python"
        # This environment's pip installs into the other interpreter's venv (pip --python);
        # the extension module needs only cffi's backend, not the package's dependencies.
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
             "--no-deps", "--only-binary=:all:", "cffi", str(wheel)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        proc = subprocess.run([str(python), "-c", ABI3_PROBE], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["so"].startswith(str(home)), result
        assert result["level"] >= 0, result


def test_native_loaded_when_required() -> None:
    """CI and cibuildwheel set ODYSSEY_SYNC_NATIVE=1: the tested install must be native."""
    if os.environ.get("ODYSSEY_SYNC_NATIVE", "").strip() != "1":
        pytest.skip("ODYSSEY_SYNC_NATIVE=1 not set")
    assert odyssey_sync.native_available(), odyssey_sync.__file__
