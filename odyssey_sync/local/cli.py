"""``odyssey-sync serve`` / ``python -m odyssey_sync.local``: run the local server.

:func:`add_serve_arguments` adds the options to a parser (the main CLI
already has a global ``--api-key``; it is reused rather than redefined), and
:func:`run_serve` starts a :class:`LocalOdyssey`, prints what a client needs
(``ODYSSEY_API_URL`` and the API key) and blocks until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["add_serve_arguments", "main", "run_serve"]

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
    if not all(16 <= v <= 4096 and v % 2 == 0 for v in value):
        raise argparse.ArgumentTypeError("width and height must be even, within 16..4096")
    return value


def _positive(kind: type[Any]) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
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
    group.add_argument("--session-timeout", type=_positive(float), default=300.0,
                       metavar="S", help="maximum stream duration in seconds (default: 300)")
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
    server = LocalOdyssey(
        host=args.host, port=args.port, api_key=given_key,
        data_dir=args.data_dir, fps=args.fps, size=tuple(args.size), codec=args.codec,
        capacity=args.capacity, session_timeout=args.session_timeout)
    try:
        server.start()
        out = sys.stdout
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m odyssey_sync.local`` (same options as ``serve``)."""
    parser = argparse.ArgumentParser(prog="python -m odyssey_sync.local",
                                     description="Run the Odyssey-compatible local server.")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_serve(args)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
