"""Commands about this machine's embedded server: ``serve``, ``demo`` and ``local prune``.

``serve`` runs :class:`~odyssey_sync.local.LocalOdyssey` until Ctrl-C or
SIGTERM and says where it listens, with which key, and where it stores its
data. ``demo`` wraps :func:`odyssey_sync.demo.run_demo`. ``local prune`` frees
the space the server's stored videos take.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from ..local import LocalOdyssey, default_data_dir
from .output import EXIT_OK, PROG, CommandFailed, Output, human_size

__all__ = ["cmd_demo", "cmd_local_prune", "cmd_serve"]


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` while the block runs (main thread only)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, on_signal)
    try:
        yield
    finally:
        for number, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(number, handler)


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    """``serve``: run the local server until Ctrl-C / SIGTERM (blocking). Exit 0.

    Start-up failures (port in use, bad size, unusable data directory)
    propagate: the caller prints them as one line.
    """
    given_key = args.api_key or None
    server = LocalOdyssey(
        host=args.host, port=args.port, api_key=given_key, data_dir=args.data_dir,
        fps=args.fps, size=tuple(args.size), codec=args.codec, capacity=args.capacity,
        session_timeout=args.session_timeout)
    stop = threading.Event()
    with _stop_on_signals(stop):
        server.start()
        try:
            # A key the caller supplied may be a real one (the global --api-key
            # defaults to $ODYSSEY_API_KEY): never echo it. A generated,
            # local-only development key is printed on purpose (never logged).
            key = None if given_key else server.api_key
            out.result(
                {"url": server.url, "api_key": key, "api_key_given": bool(given_key),
                 "data_dir": str(server.data_dir)},
                lambda: _print_serving(out, server.url, key, str(server.data_dir)))
            # A bounded wait keeps the main thread responsive to signals everywhere.
            while not stop.wait(0.5):
                pass
            out.info("stopping...")
        finally:
            server.stop()
    return EXIT_OK


def _print_serving(out: Output, url: str, key: str | None, data_dir: str) -> None:
    out.line(f"Odyssey local server listening on {url}")
    out.line(f"  data directory: {data_dir} (free space: {PROG} local prune)")
    out.line("Point a client at it with:")
    out.line(f"  export ODYSSEY_API_URL={url}")
    if key is None:
        out.line("  export ODYSSEY_API_KEY=<the key given with --api-key or $ODYSSEY_API_KEY; "
                 "not echoed>")
    else:
        out.line(f"  export ODYSSEY_API_KEY={key}")
    out.line("Press Ctrl-C to stop.")


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """``demo``: the end-to-end tour; progress on stdout (stderr with ``--json``)."""
    from ..demo import run_demo

    report = run_demo(api_url=args.api_url, api_key=args.api_key, out_dir=args.out,
                      prompt=args.prompt, seconds=args.seconds, portrait=args.portrait,
                      say=out.info if out.as_json else out.line)
    if not report.frames_written:
        raise CommandFailed("the demo received no video frame")
    out.result(report)
    return EXIT_OK


def cmd_local_prune(args: argparse.Namespace, out: Output) -> int:
    """``local prune [--older-than DAYS]``: delete stored local-server data."""
    # Provided by the server package; imported here so the rest of the
    # command line does not depend on it.
    from ..local import prune  # type: ignore[attr-defined]  # lands with the server's prune

    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    result = prune(data_dir, older_than_days=args.older_than)
    age = f" older than {args.older_than:g} days" if args.older_than is not None else ""
    out.result(
        {"data_dir": str(data_dir), "older_than_days": args.older_than,
         "files_removed": result.files_removed, "bytes_freed": result.bytes_freed},
        lambda: out.line(f"removed {result.files_removed} file(s){age} from {data_dir}, "
                         f"freed {human_size(result.bytes_freed)}"))
    return EXIT_OK
