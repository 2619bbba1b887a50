"""Build script for the optional native frame converter (``odyssey_sync._yuv``).

All project metadata lives in pyproject.toml; this file only wires the cffi
API-mode extension in. The environment switch ``ODYSSEY_SYNC_NATIVE`` decides:

* ``0``   -- do not build it; the package uses its NumPy converter (warns once).
* ``1``   -- build it, and fail the install if it cannot be built.
* unset   -- try to build it; if compilation fails, install without it.

The extension uses only CPython's limited API (cffi API mode supports it), so a
wheel built here is tagged ``cp310-abi3``: one wheel per platform serves every
CPython >= 3.10. Free-threaded builds have no stable ABI and get a normal tag.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import Any

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_ext import build_ext  # type: ignore[import-untyped]

_MODE = os.environ.get("ODYSSEY_SYNC_NATIVE", "").strip()
if _MODE not in ("", "0", "1"):
    raise SystemExit(f"ODYSSEY_SYNC_NATIVE must be 0, 1 or unset, not {_MODE!r}")


class OptionalBuildExt(build_ext):  # type: ignore[misc]
    """build_ext that, unless ODYSSEY_SYNC_NATIVE=1, turns a failed compile into a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing, headers missing, ...
            if _MODE == "1":
                raise
            self._give_up(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            if _MODE == "1":
                raise
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        sys.stderr.write(
            "WARNING: odyssey_sync native frame converter could not be built "
            f"({type(exc).__name__}: {exc}); installing without it, the NumPy "
            "converter will be used. Set ODYSSEY_SYNC_NATIVE=1 to make this an error.\n"
        )


# The oldest CPython the wheel's stable-ABI tag promises (pyproject: requires-python).
_ABI3_TAG = "cp310"
_FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

if _MODE == "0":
    setup()
else:
    setup(
        cffi_modules=["odyssey_sync/_build_yuv.py:ffibuilder"],
        cmdclass={"build_ext": OptionalBuildExt},
        options={} if _FREE_THREADED else {"bdist_wheel": {"py_limited_api": _ABI3_TAG}},
    )
