"""Griffe extension (mkdocs.yml, mkdocstrings ``extensions:``): Sphinx roles as code.

The docstrings cross-reference with Sphinx roles (``:meth:`Odyssey.frames```,
``:class:`~odyssey_sync.types.Recording```), which Markdown would print verbatim.
Each role becomes an inline code span of its target; ``~`` keeps the last
component only, as Sphinx shows it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:meth|class|func|attr|mod|exc|data|obj|const):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRolesAsCode(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called by griffe for each object it creates."""
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_as_code, obj.docstring.value)
