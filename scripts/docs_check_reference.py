"""MkDocs hook (mkdocs.yml ``hooks:``): every public name is in the API reference, documented.

Public names are the ``__all__`` of the public modules (``odyssey_sync``,
``odyssey_sync.local``, and ``odyssey_sync.gym`` / ``odyssey_sync.fleet`` once they
exist). Each must be rendered by a ``::: path`` directive in some page (its public
path, the path it is defined at, or its whole module) and have a docstring; so must
the public methods and properties of exported classes (inherited ones too). Problems are logged as
warnings, which ``mkdocs build --strict`` turns into a failed build.

The package is read statically with griffe (what mkdocstrings itself uses), so the
optional dependencies of gym/fleet need not be installed to build the docs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import griffe

log = logging.getLogger("mkdocs.hooks.docs_check_reference")

PACKAGE = "odyssey_sync"
PUBLIC_MODULES = ("odyssey_sync", "odyssey_sync.local", "odyssey_sync.gym", "odyssey_sync.fleet")
# Plain values: mentioned in the prose, no reference entry or docstring of their own.
NOT_RENDERED = {"__version__"}
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)", re.MULTILINE)


def _directives(docs_dir: Path) -> set[str]:
    found: set[str] = set()
    for page in docs_dir.rglob("*.md"):
        found.update(DIRECTIVE.findall(page.read_text(encoding="utf-8")))
    return found


def _target(obj: Any) -> Any:
    return obj.final_target if obj.is_alias else obj


def _problems(root: Path, rendered: set[str]) -> list[str]:
    package = griffe.load(PACKAGE, search_paths=[str(root)], resolve_aliases=True,
                          resolve_external=False)
    problems: list[str] = []
    for module_path in PUBLIC_MODULES:
        parts = module_path.split(".")[1:]
        module: Any = package
        try:
            for part in parts:
                module = module.members[part]
        except KeyError:
            continue  # optional module not in this tree
        names = sorted(module.exports or (n for n in module.members if not n.startswith("_")))
        for name in names:
            public = f"{module_path}.{name}"
            try:
                obj = _target(module[name])
            except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                problems.append(f"{public}: listed in __all__ but not found")
                continue
            if name in NOT_RENDERED:
                continue
            if not {public, obj.path, module_path} & rendered:
                problems.append(f"{public}: not rendered by any '::: {public}' in docs/")
            if obj.docstring is None and not obj.is_attribute:  # constants: in the prose
                problems.append(f"{public}: no docstring")
            if obj.is_class:
                for member_name, member in obj.all_members.items():
                    if member_name.startswith("_"):
                        continue
                    member = _target(member)
                    if member.is_function and member.docstring is None:
                        problems.append(f"{public}.{member_name}: no docstring")
    return problems


def on_config(config: Any) -> Any:
    """Check once per build, before any page is rendered."""
    docs_dir = Path(config["docs_dir"])
    root = Path(config["config_file_path"]).parent
    for problem in _problems(root, _directives(docs_dir)):
        log.warning("API reference: %s", problem)
    return config
