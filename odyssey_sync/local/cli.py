"""``odyssey-sync serve`` / ``odyssey-sync local prune`` / ``python -m odyssey_sync.local``.

:func:`add_serve_arguments` adds the options to a parser (the main CLI
already has a global ``--api-key``; it is reused rather than redefined), and
:func:`run_serve` starts a :class:`LocalOdyssey`, prints what a client needs
(``ODYSSEY_API_URL`` and the API key; one JSON line with ``--json``) and
blocks until Ctrl-C or SIGTERM.

:func:`add_prune_arguments` / :func:`run_prune` are ``odyssey-sync local
prune [--data-dir DIR] [--older-than DAYS]``: :func:`odyssey_sync.local.prune`.
``python -m odyssey_sync.local prune ...`` runs the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from .limits import (
    DEFAULT_CONNECTION_LIMIT,
    DEFAULT_STALE_SESSION_TIMEOUT,
    DEFAULT_STREAM_LIMIT,
    check_frame_size,
)

__all__ = ["add_prune_arguments", "add_serve_arguments", "main", "run_prune", "run_serve"]

log = logging.getLogger("odyssey_sync.local")


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        if not sep:
            raise ValueError
        value = (int(width), int(height))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x704: {text!r}") \
            from None
    try:
        return check_frame_size(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind: type[Any]) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0: {text!r}")
        return value

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("port must be within 0..65535")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser`` (non-blocking, pure)."""
    group = parser.add_argument_group("server options")
    group.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default: 127.0.0.1)")
    group.add_argument("--port", type=_port, default=8787,
                       help="TCP port (default: 8787; 0 picks a free one)")
    if "--api-key" not in parser._option_string_actions:
        group.add_argument("--api-key", default=None, metavar="KEY",
                           help="fixed development API key (default: generated once and "
                                "kept in the data directory)")
    group.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                       help="state directory (default: the user cache dir)")
    group.add_argument("--fps", type=_positive(float), default=30.0,
                       help="frames per second of streams (default: 30)")
    group.add_argument("--size", type=_size, default=(1280, 704), metavar="WxH",
                       help="landscape frame size; portrait swaps it (default: 1280x704)")
    group.add_argument("--codec", choices=("vp8", "h264", "any"), default="vp8",
                       help="video codec offered to clients (default: vp8)")
    group.add_argument("--capacity", type=_positive(int), default=1,
                       help="streamer slots; more clients queue on 503 (default: 1)")
    group.add_argument("--stream-limit", type=_positive(float), default=None, metavar="S",
                       help="seconds a stream may last; then session_timeout and the "
                            f"connection closes, as the service does "
                            f"(default: {DEFAULT_STREAM_LIMIT:g})")
    group.add_argument("--connection-limit", type=_positive(float),
                       default=DEFAULT_CONNECTION_LIMIT, metavar="S",
                       help="seconds a connection may last "
                            f"(default: {DEFAULT_CONNECTION_LIMIT:g})")
    group.add_argument("--stale-session-timeout", type=_positive(float),
                       default=DEFAULT_STALE_SESSION_TIMEOUT, metavar="S",
                       help="seconds a session whose client vanished keeps its slot "
                            f"(default: {DEFAULT_STALE_SESSION_TIMEOUT:g})")
    group.add_argument("--session-timeout", type=_positive(float), default=None,
                       metavar="S", help="deprecated name of --stream-limit")
    group.add_argument("--verbose", "-v", action="store_true",
                       help="log requests and server events to stderr")


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until Ctrl-C / SIGTERM (blocking, main thread). Returns 0.

    Start-up failures (port in use, unusable data directory) propagate as
    exceptions so the caller's CLI prints them its usual way.
    """
    from .server import LocalOdyssey

    if getattr(args, "verbose", False):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    given_key = getattr(args, "api_key", None) or None
    stream_limit = args.stream_limit
    if args.session_timeout is not None:
        sys.stderr.write("warning: --session-timeout is deprecated; use --stream-limit\n")
        if stream_limit is None:
            stream_limit = args.session_timeout
    server = LocalOdyssey(
        host=args.host, port=args.port, api_key=given_key,
        data_dir=args.data_dir, fps=args.fps, size=tuple(args.size), codec=args.codec,
        capacity=args.capacity,
        stream_limit=DEFAULT_STREAM_LIMIT if stream_limit is None else stream_limit,
        connection_limit=args.connection_limit,
        stale_session_timeout=args.stale_session_timeout)
    try:
        server.start()
        out = sys.stdout
        if getattr(args, "json", False):
            out.write(json.dumps({
                "url": server.url, "data_dir": str(server.data_dir),
                # a key the caller gave is never echoed (it may be a real one)
                "api_key": None if given_key else server.api_key}) + "\n")
            out.flush()
            while not stop.wait(0.5):
                pass
            return 0
        out.write(f"Odyssey local server listening on {server.url}\n")
        out.write(f"  data directory: {server.data_dir}\n")
        out.write("Point a client at it with:\n")
        out.write(f"  export ODYSSEY_API_URL={server.url}\n")
        if given_key:
            # A key the caller supplied may be a real one (the main CLI fills
            # --api-key from $ODYSSEY_API_KEY): never echo it.
            out.write("  export ODYSSEY_API_KEY=<the key given with --api-key or "
                      "$ODYSSEY_API_KEY; not echoed>\n")
        else:
            # A generated, local-only development key: printing it to the
            # console is the point (it is never logged).
            out.write(f"  export ODYSSEY_API_KEY={server.api_key}\n")
        out.write("Press Ctrl-C to stop.\n")
        out.flush()
        # Wake up periodically: signal handlers run between bytecodes of the
        # main thread, and a bounded wait keeps it responsive everywhere.
        while not stop.wait(0.5):
            pass
        out.write("stopping...\n")
        out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for number, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(number, handler)
    return 0


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``local prune`` options to ``parser`` (non-blocking, pure)."""
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="the server's data directory (default: $ODYSSEY_SYNC_DATA_DIR "
                             "or the user cache dir)")
    parser.add_argument("--older-than", type=_non_negative_float, default=None,
                        metavar="DAYS", help="only media older than DAYS days "
                                             "(default: all media)")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def run_prune(args: argparse.Namespace) -> int:
    """Free space in the data directory and print what was removed. Blocking; returns 0.

    Prints one JSON line ``{"data_dir", "files_removed", "bytes_freed"}`` when
    ``args.json`` is set. ``OSError`` propagates (the caller's CLI reports it).
    """
    from .datadir import default_data_dir, prune

    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    result = prune(data_dir, older_than_days=args.older_than)
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps({"data_dir": str(data_dir),
                                     "files_removed": result.files_removed,
                                     "bytes_freed": result.bytes_freed}) + "\n")
    else:
        sys.stdout.write(f"{data_dir}: removed {result.files_removed} file(s), "
                         f"freed {result.bytes_freed / 1e6:.1f} MB\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m odyssey_sync.local`` (``serve`` options, or ``prune ...``)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["prune"]:
        prune_parser = argparse.ArgumentParser(
            prog="python -m odyssey_sync.local prune",
            description="Free space in the local server's data directory.")
        add_prune_arguments(prune_parser)
        prune_parser.add_argument("--json", action="store_true", help="print one JSON line")
        try:
            return run_prune(prune_parser.parse_args(args_list[1:]))
        except OSError as exc:
            prune_parser.exit(1, f"{prune_parser.prog}: error: {exc}\n")
    parser = argparse.ArgumentParser(prog="python -m odyssey_sync.local",
                                     description="Run the Odyssey-compatible local server "
                                                 "(or: prune --help).")
    add_serve_arguments(parser)
    if "--json" not in parser._option_string_actions:
        parser.add_argument("--json", action="store_true",
                            help="print one JSON line (url, api_key, data_dir) when ready")
    args = parser.parse_args(args_list)
    try:
        return run_serve(args)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
