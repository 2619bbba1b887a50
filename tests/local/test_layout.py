"""The server package's shape (issue 9): three parts, no cycle, no SDK import, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "odyssey_sync" / "local"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the odyssey_sync modules (or packages) ``path`` imports."""
    name = _module_name(path)
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
                is_module = (PACKAGE.parent.joinpath(*relative).with_suffix(".py").exists()
                             or PACKAGE.parent.joinpath(*relative, "__init__.py").exists())
                found.add(candidate if is_module else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {n for n in found if n.startswith("odyssey_sync")}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_the_server_never_imports_the_sdk() -> None:
    outside = {(m, d) for m, deps in _graph().items() for d in deps
               if not (d == "odyssey_sync.local" or d.startswith("odyssey_sync.local."))}
    assert not outside


def test_no_import_cycle() -> None:
    graph = _graph()
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
    assert not cycles


def test_three_parts_and_small_modules() -> None:
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} \
        == {"http", "realtime", "render"}
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 600, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_public_names_still_import() -> None:
    from odyssey_sync.local import (  # noqa: F401
        Faults,
        LocalOdyssey,
        PruneResult,
        ServerConfig,
        ServerContext,
        StreamSink,
        default_data_dir,
        prune,
    )
