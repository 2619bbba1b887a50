"""Helpers shared by test modules (not a test module: pytest collects nothing here)."""

from __future__ import annotations

import ast
import threading
from pathlib import Path
from typing import Any

import requests

from odyssey_sync.client import Odyssey
from odyssey_sync.local import LocalOdyssey


def warm_up(srv: LocalOdyssey) -> None:
    """Run one stream before the per-test thread-leak snapshot, so that first-use
    costs (codec set-up, imports) do not land in a test. The server's executor
    threads are started by ``LocalOdyssey.start()`` itself."""
    with Odyssey(srv.api_key, api_url=srv.url) as c:
        c.connect()
        c.start_stream("warm up")
        c.end_stream()


def simulation_script(prompt: str, length_ms: int = 1000) -> list[dict[str, Any]]:
    """The shortest useful simulation script: start at 0, end at ``length_ms``."""
    return [{"timestamp_ms": 0, "start": {"prompt": prompt}},
            {"timestamp_ms": length_ms, "end": {}}]


def warm_up_simulations(srv: LocalOdyssey) -> None:
    """Run a two-script simulation job to the end: rendering starts the server's
    render-pool threads on first use, which must happen before a test's
    thread-leak snapshot."""
    with Odyssey(srv.api_key, api_url=srv.url) as client:
        job = client.simulate(scripts=[simulation_script("warm up")] * 2)
        job = client.wait_for_simulation(job.job_id, timeout=60, poll_interval=0.1,
                                         progress=False)
        for stream in job.streams:
            srv.wait_for_recording(stream.stream_id)


def assert_in_order(numbers: list[int], *, at_least: int) -> None:
    """Stamped frame numbers strictly increase, after at most one restart.

    Frames of the idle picture the server sends before a stream starts carry
    their own numbers and can still be in flight when the stream's frame 0
    arrives: one restart at the beginning is expected, nothing else.
    """
    restarts = [i for i in range(1, len(numbers)) if numbers[i] <= numbers[i - 1]]
    assert len(restarts) <= 1, numbers
    tail = numbers[restarts[0]:] if restarts else numbers
    if restarts:
        assert tail[0] == 0, numbers  # the restart is the stream's first frame
    assert tail == sorted(set(tail)) and len(tail) >= at_least, numbers


def server_state(srv: LocalOdyssey) -> dict[str, Any]:
    """The local server's admin view: ``capacity``, ``allocations``, recent ``streams``."""
    response = requests.get(srv.url + "/_admin/state", timeout=10,
                            headers={"Authorization": f"Bearer {srv.api_key}"})
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


def live_stream_ids(srv: LocalOdyssey) -> list[str]:
    """Ids of the streams the local server has not ended yet."""
    return [s["stream_id"] for s in server_state(srv)["streams"] if s["ended_at"] is None]


class ActiveJobWatcher:
    """Polls the account's unfinished jobs on a thread of its own (joined on exit)."""

    def __init__(self, client: Odyssey) -> None:
        self.client = client
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-job-watcher")

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            page = self.client.list_simulations(active=True, limit=100, timeout=10)
            self.peak = max(self.peak, len(page.jobs))

    def __enter__(self) -> ActiveJobWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


# ---------------------------------------------------------------- layout checks
PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "odyssey_sync"


def module_name(path: Path) -> str:
    """``odyssey_sync/local/server.py`` → ``odyssey_sync.local.server``."""
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the odyssey_sync modules (or packages) ``path`` imports,
    anywhere in it (functions and ``TYPE_CHECKING`` blocks included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                relative = candidate.split(".")[1:]
                is_module = (PACKAGE_ROOT.joinpath(*relative).with_suffix(".py").exists()
                             or PACKAGE_ROOT.joinpath(*relative, "__init__.py").exists())
                found.add(candidate if is_module else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {n for n in found if n.startswith("odyssey_sync")}


def import_graph(directory: Path) -> dict[str, set[str]]:
    """Module → the odyssey_sync modules it imports, for every module below ``directory``."""
    return {module_name(p): imports_of(p) for p in directory.rglob("*.py")}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``graph`` finds (empty: none)."""
    edges = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in edges[node]:
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for module in edges:
        if module not in state:
            visit(module, [])
    return cycles
