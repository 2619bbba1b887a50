"""Where a command's results go, and how a failure becomes one line.

Two audiences share stdout and stderr:

* humans: result lines on stdout, progress on stderr;
* programs (``--json``): stdout carries *JSON Lines* -- one compact JSON object
  per line: first any events a command reports while it runs (``interact``,
  ``stream --broadcast``), then its result. Progress still goes to stderr, so
  stdout stays parseable.

:class:`Output` is the only writer of stdout; it is thread-safe (SDK callbacks,
e.g. ``on_broadcast_ready``, print from the client's dispatcher thread).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..errors import OdysseyError, OdysseyUsageError

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROG",
    "CommandFailed",
    "Output",
    "UsageError",
    "human_size",
    "one_line",
    "to_jsonable",
]

PROG = "odyssey-sync"

#: Exit codes, documented in ``docs/cli.md``.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: stdout was closed by its reader (``odyssey-sync demo | head``): 128 + SIGPIPE.
EXIT_BROKEN_PIPE = 141


class UsageError(Exception):
    """A mistake the user can fix by changing the command line (exit code 2)."""


class CommandFailed(Exception):
    """A command failed for a reason already worded for the user (exit code 1).

    ``__cause__`` keeps the original exception for ``--debug``.
    """


class Output:
    """Result and progress writer for one command run.

    ``as_json`` selects JSON Lines on stdout; :meth:`info` always writes to
    stderr. Every method is non-blocking apart from the write itself and may be
    called from any thread.

    When stdout's reader goes away (``odyssey-sync demo | head``), the write
    that finds out raises :class:`BrokenPipeError` on the main thread, so the
    command ends; on other threads (SDK callbacks) it is dropped, and every
    later main-thread write raises. :attr:`stdout_closed` tells the caller.
    """

    def __init__(self, as_json: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.as_json = as_json
        self.stdout = stdout
        self.stderr = stderr
        #: stdout's reader went away
        self.stdout_closed = False
        self._lock = threading.Lock()

    def info(self, text: str) -> None:
        """Progress or status text for humans (stderr, also with ``--json``)."""
        with self._lock:
            print(text, file=self.stderr, flush=True)

    def line(self, text: str) -> None:
        """A result line for humans (stdout; nothing with ``--json``)."""
        if not self.as_json:
            self._write(text)

    def event(self, value: dict[str, Any]) -> None:
        """One JSON line for an event as it happens (nothing without ``--json``)."""
        if self.as_json:
            self._write(json.dumps(to_jsonable(value), ensure_ascii=False))

    def result(self, value: Any, human: Callable[[], None] | None = None) -> None:
        """The command's result: one JSON line with ``--json``, else call ``human``."""
        if self.as_json:
            self._write(json.dumps(to_jsonable(value), ensure_ascii=False))
        elif human is not None:
            human()

    def _write(self, text: str) -> None:
        on_main = threading.current_thread() is threading.main_thread()
        with self._lock:
            if not self.stdout_closed:
                try:
                    self.stdout.write(text + "\n")
                    self.stdout.flush()
                    return
                except BrokenPipeError:
                    self.stdout_closed = True
        if on_main:
            raise BrokenPipeError("stdout was closed by its reader")


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums and paths → plain JSON types (recursively)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def one_line(exc: BaseException) -> str:
    """The user-facing one-line description of ``exc`` (never a secret: the SDK's
    messages carry none, and nothing else is added here)."""
    if isinstance(exc, OdysseyUsageError):
        text = f"{exc.message} ({exc.code})"
        if exc.action_url:
            text += f" — {exc.action_url}"
    elif isinstance(exc, OdysseyError):
        text = exc.message or type(exc).__name__
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def human_size(n: int) -> str:
    """``1536`` → ``"1.5 KiB"`` (binary units, one decimal)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
