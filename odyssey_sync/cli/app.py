"""Running one command: parse, configure logging, call the handler, map errors to exit codes.

Every failure becomes one line on stderr (a traceback only with ``--debug``);
Ctrl-C exits 130; a closed stdout (``odyssey-sync demo | head``) exits 141
quietly, without Python's "Exception ignored" noise at interpreter exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from ..errors import OdysseyError
from .output import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    CommandFailed,
    Output,
    UsageError,
    one_line,
)
from .parser import build_parser

__all__ = ["run"]

Handler = Callable[[argparse.Namespace, Output], int]


def _configure_logging(args: argparse.Namespace) -> None:
    # ``serve --verbose`` asks for INFO logs; configured here, once, for every command.
    level = logging.WARNING
    if getattr(args, "verbose", False):
        level = logging.INFO
    if args.debug:
        level = logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (tests): nothing to flush
        pass


def _error(args: argparse.Namespace, message: str) -> None:
    if args.debug:
        traceback.print_exc()
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run its command; return the exit code. Blocking."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help / --version / usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _configure_logging(args)
    out = Output(bool(args.json), sys.stdout, sys.stderr)
    handler: Handler = args.handler
    try:
        code = handler(args, out)
        if out.stdout_closed:  # found out on another thread; the command still ran
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        return code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except UsageError as exc:
        _error(args, str(exc))
        return EXIT_USAGE
    except CommandFailed as exc:
        _error(args, str(exc))
        return EXIT_FAILURE
    except Exception as exc:  # every failure is one line (a traceback with --debug)
        _error(args, one_line(exc))
        if isinstance(exc, (TypeError, ValueError)) and not isinstance(exc, OdysseyError):
            # Bad input refused by the SDK before any network call.
            return EXIT_USAGE
        return EXIT_FAILURE
