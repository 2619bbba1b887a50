"""The server package's shape (issue 9): three parts, no cycle, no SDK import, small modules."""

from __future__ import annotations

from tests.support import PACKAGE_ROOT, import_cycles, import_graph

PACKAGE = PACKAGE_ROOT / "local"


def test_the_server_never_imports_the_sdk() -> None:
    outside = {(m, d) for m, deps in import_graph(PACKAGE).items() for d in deps
               if not (d == "odyssey_sync.local" or d.startswith("odyssey_sync.local."))}
    assert not outside


def test_no_import_cycle() -> None:
    assert not import_cycles(import_graph(PACKAGE))


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
