"""Shared fixtures of the command-line tests: a runner and a small local server.

The command line is run as a subprocess (``python -m odyssey_sync``) with a
clean Odyssey environment, importing this tree's package. The server is
module-scoped, 320×176 at 15 fps, with its data in a temporary directory;
rendering tests get their own (``jobs_server``).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from odyssey_sync.cli import main
from odyssey_sync.local import LocalOdyssey
from tests.support import warm_up

REPO = Path(__file__).resolve().parents[3]

RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without ODYSSEY_API_* and with this tree first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ODYSSEY_API")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def run_cli() -> RunCli:
    """``run_cli(*args, env=None, stdin=None, timeout=90, cwd=None)`` → CompletedProcess."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        timeout: float = 90.0,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "odyssey_sync", *args], input=stdin, capture_output=True,
            text=True, env=cli_env(env), timeout=timeout, cwd=cwd or REPO, check=False)

    return run


@pytest.fixture
def popen_cli() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``popen_cli(*args, env=None)``: the command line started with piped stdio; one
    still running when the test ends (e.g. after a failed assertion) is killed."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "odyssey_sync", *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(env),
            cwd=REPO)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOdyssey]:
    """One small live-video server per test module (data in a temporary directory).

    Recordings are off: rendering them starts the server's render threads,
    which would outlive the test that caused them (see ``jobs_server``)."""
    data = tmp_path_factory.mktemp("cli-server")
    with LocalOdyssey(size=(320, 176), fps=15, capacity=2, recordings=False,
                      data_dir=data) as srv:
        warm_up(srv)
        yield srv


@pytest.fixture
def jobs_server(tmp_path: Path) -> Iterator[LocalOdyssey]:
    """A server that renders recordings and simulations, for one test (its render
    threads stop with it, before the thread-leak check)."""
    with LocalOdyssey(size=(320, 176), fps=15, job_delay=0.05, data_dir=tmp_path / "srv") as srv:
        yield srv


@pytest.fixture
def api(server: LocalOdyssey) -> list[str]:
    """The global options pointing at :func:`server`."""
    return ["--api-url", server.url, "--api-key", server.api_key]


@pytest.fixture
def cli_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> RunCli:
    """``cli_main(*args, stdin=None)``: :func:`odyssey_sync.cli.main` in this process
    (fast; for what needs no process of its own) → CompletedProcess."""
    for name in list(os.environ):
        if name.startswith("ODYSSEY_API"):
            monkeypatch.delenv(name)

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int,
                           *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("odyssey-sync: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="session")
def one_line_error() -> Callable[..., None]:
    """``one_line_error(proc, code, *needles)``: exit ``code``, no traceback, exactly
    one ``odyssey-sync: error:`` line, holding every needle."""
    return _assert_one_line_error
