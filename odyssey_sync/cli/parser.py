"""The argument parser of ``odyssey-sync``: every command, option and its checks.

Pure and non-blocking: building or using the parser never touches the network
or the file system. Each command's handler is bound here with
``set_defaults(handler=...)``; the handlers live in :mod:`.live` (streams),
:mod:`.jobs` (simulations and recordings), :mod:`.local` (serve, demo, local
prune) and :mod:`.doctor`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from .._version import __version__
from ..types import SimulationJobStatus
from . import doctor, fleet, jobs, live, local
from .output import EXIT_USAGE, PROG

__all__ = ["build_parser"]


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are the one-line ``odyssey-sync: error:`` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _finite_float(text: str, *, zero_allowed: bool) -> float:
    """*text* as a finite number > 0 (>= 0 when *zero_allowed*), else ArgumentTypeError."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 if zero_allowed else value > 0) or value == float("inf"):
        bound = ">= 0" if zero_allowed else "> 0"
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}: {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _finite_float(text, zero_allowed=False)


def _non_negative_float(text: str) -> float:
    return _finite_float(text, zero_allowed=True)


def _non_negative_int(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not (width.isascii() and width.isdigit() and height.isascii()
                       and height.isdigit()):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1280x704: {text!r}")
    return int(width), int(height)


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError("port must be within 0..65535")
    return value


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Sub-parsers get the same options with SUPPRESS defaults, so
    # ``recordings list --json`` works as well as ``--json recordings list``
    # without the later parser resetting a value given earlier.
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--api-url", metavar="URL", default=default(os.environ.get("ODYSSEY_API_URL") or None),
        help="API base URL (default: $ODYSSEY_API_URL, else https://api.odyssey.ml)")
    group.add_argument(
        "--api-key", metavar="KEY", default=default(os.environ.get("ODYSSEY_API_KEY") or None),
        help="API key (default: $ODYSSEY_API_KEY)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="machine-readable output: JSON Lines on stdout")
    group.add_argument("--debug", action="store_true", default=default(False),
                       help="debug logging, and a traceback on errors")


def _add_orientation(parser: argparse.ArgumentParser, *, portrait: bool = True) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--portrait", dest="portrait", action="store_true", default=portrait,
                       help="portrait video" + (" (default)" if portrait else ""))
    group.add_argument("--landscape", dest="portrait", action="store_false",
                       help="landscape video" + ("" if portrait else " (default)"))


def _add_stream_start(p: argparse.ArgumentParser) -> None:
    """What a new stream starts from: its prompt and, optionally, an image."""
    p.add_argument("prompt", metavar="PROMPT", help="initial prompt")
    p.add_argument("--image", metavar="PATH", type=Path, help="image for image-to-video")


def _add_video_outputs(p: argparse.ArgumentParser, *, show: bool) -> None:
    """Where the received video goes: an MP4 file and (*show*) an OpenCV window."""
    p.add_argument("--out", metavar="VIDEO.mp4", type=Path, help="save the video as MP4")
    if show:
        p.add_argument("--show", action="store_true", help="show the video in an OpenCV window")


def _add_paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=_non_negative_int, default=None,
                   help="at most this many (the service's own range applies)")
    p.add_argument("--offset", type=_non_negative_int, default=None,
                   help="skip this many first")


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    # One definition of the server's options: the embedded server's own CLI.
    from ..local.cli import add_serve_arguments

    add_serve_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the documentation and the tests)."""
    parser = _Parser(
        prog=PROG,
        description="Command line for Odyssey's interactive world-model video API.",
        epilog="Run '%(prog)s COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(parent: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text,
                                                       description=help_text)
        _add_global_options(p, top=False)
        return p

    p = command(sub, "serve", "run the embedded Odyssey-compatible local server")
    _add_serve_options(p)
    p.set_defaults(handler=local.cmd_serve)

    p = command(sub, "demo", "a short end-to-end tour (embedded server unless --api-url is given)")
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("odyssey-demo"),
                   help="directory for the demo's outputs (default: ./odyssey-demo)")
    p.add_argument("--prompt", default="A lighthouse on a cliff at dusk, waves below",
                   help="initial prompt")
    p.add_argument("--seconds", type=_positive_float, default=8.0,
                   help="how long to stream (default: 8)")
    _add_orientation(p, portrait=False)
    p.set_defaults(handler=local.cmd_demo)

    p = command(sub, "stream", "start a stream and save/show its video for a while")
    _add_stream_start(p)
    p.add_argument("--seconds", type=_positive_float, default=10.0,
                   help="how long to stream (default: 10)")
    _add_video_outputs(p, show=True)
    p.add_argument("--broadcast", action="store_true",
                   help="broadcast the stream and print the spectator URL and token")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="end when the service ends the stream (150 s) instead of resuming "
                        "on a new stream and connection (default: resume)")
    _add_orientation(p)
    p.set_defaults(handler=live.cmd_stream)

    p = command(sub, "interact", "start a stream, then send each stdin line as an interaction")
    _add_stream_start(p)
    _add_video_outputs(p, show=False)
    p.add_argument("--hold", metavar="SECONDS", type=_non_negative_float, default=None,
                   help="keep streaming this long after each interaction and after the "
                        "last line (default: 2 when stdin is not a terminal, else 0)")
    _add_orientation(p)
    p.set_defaults(handler=live.cmd_interact)

    p = command(sub, "spectate", "watch a broadcast stream as a spectator (WHEP)")
    p.add_argument("webrtc_url", metavar="WEBRTC_URL", help="broadcast WHEP base URL")
    p.add_argument("token", metavar="TOKEN",
                   help="spectator token ('-' reads it from stdin, keeping it out of ps)")
    p.add_argument("--seconds", type=_positive_float, default=10.0,
                   help="how long to watch (default: 10; ends earlier with the broadcast)")
    _add_video_outputs(p, show=True)
    p.set_defaults(handler=live.cmd_spectate)

    p = command(sub, "simulate", "submit a simulation job from a JSON script, or a whole batch")
    p.add_argument("script", metavar="SCRIPT.json", type=Path, nargs="?",
                   help="a script (list of entries) or a batch (list of scripts); '-' = stdin")
    p.add_argument("--batch", metavar="DIR", type=Path,
                   help="run every *.json script of DIR, at most 10 queued at once "
                        "(the service's limit), with one progress bar")
    p.add_argument("--parallel", metavar="N", type=_positive_int, default=4,
                   help="with --batch: downloads at once (default: 4)")
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")
    p.add_argument("--download", metavar="DIR", type=Path,
                   help="download the output videos into DIR (implies --wait)")
    p.add_argument("--timeout", type=_positive_float, default=1800.0,
                   help="seconds to wait with --wait (default: 1800)")
    _add_orientation(p)
    p.set_defaults(handler=jobs.cmd_simulate)

    p = command(sub, "fleet", "run sessions as Ray actors and write their rollouts as Parquet")
    p.add_argument("--out", metavar="DIR", type=Path, required=True,
                   help="directory for the Parquet shards (created)")
    p.add_argument("--actors", metavar="N", type=_positive_int, default=4,
                   help="sessions to run in total, one actor each (default: 4)")
    p.add_argument("--max-sessions", metavar="M", type=_positive_int, default=5,
                   help="at most this many at once: the account's concurrent-stream "
                        "limit (default: 5, the free tier's)")
    p.add_argument("--episodes", metavar="E", type=_positive_int, default=1,
                   help="episodes per actor, one shard each (default: 1)")
    p.add_argument("--steps", metavar="S", type=_positive_int, default=100,
                   help="steps per episode (default: 100)")
    p.add_argument("--prompt", default="A rover crossing a red desert",
                   help="each episode's starting prompt")
    p.add_argument("--prompts", metavar="P", nargs="+", default=None,
                   help="interactions sent in turn, one every --every steps")
    p.add_argument("--every", metavar="K", type=_positive_int, default=20,
                   help="steps between the --prompts (default: 20)")
    p.add_argument("--obs-size", metavar="WxH", type=_size, default=(224, 224),
                   help="observation size, resized in the native pass (default: 224x224)")
    p.add_argument("--hz", type=_positive_float, default=10.0,
                   help="control rate of each environment (default: 10)")
    p.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="a Ray cluster to join (default: a local Ray runtime)")
    p.set_defaults(handler=fleet.cmd_fleet)

    p = command(sub, "recordings", "list, inspect and download stream recordings")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    q = command(actions, "list", "list your recordings, newest first")
    _add_paging(q)
    q.set_defaults(handler=jobs.cmd_recordings_list)
    q = command(actions, "get", "show one recording (presigned URLs)")
    q.add_argument("stream_id", metavar="STREAM_ID")
    q.set_defaults(handler=jobs.cmd_recordings_get)
    q = command(actions, "download", "download a recording's video")
    q.add_argument("stream_id", metavar="STREAM_ID")
    q.add_argument("path", metavar="PATH", type=Path, nargs="?",
                   help="file or directory (default: ./STREAM_ID.mp4)")
    q.set_defaults(handler=jobs.cmd_recordings_download)

    p = command(sub, "simulations", "list, inspect and cancel simulation jobs")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    q = command(actions, "list", "list your simulation jobs")
    q.add_argument("--status", choices=[s.value for s in SimulationJobStatus],
                   help="only jobs with this status")
    q.add_argument("--active", action="store_true", default=None,
                   help="only pending/dispatched/processing jobs")
    q.add_argument("--limit", type=_non_negative_int, default=None)
    q.add_argument("--offset", type=_non_negative_int, default=None)
    q.set_defaults(handler=jobs.cmd_simulations_list)
    q = command(actions, "get", "show one job")
    q.add_argument("job_id", metavar="JOB_ID")
    q.set_defaults(handler=jobs.cmd_simulations_get)
    q = command(actions, "cancel", "cancel a pending job")
    q.add_argument("job_id", metavar="JOB_ID")
    q.set_defaults(handler=jobs.cmd_simulations_cancel)

    p = command(sub, "local", "manage the embedded server's data on this machine")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    q = command(actions, "prune", "delete the local server's stored videos and jobs to free "
                                  "space")
    q.add_argument("--older-than", metavar="DAYS", type=_non_negative_float, default=None,
                   help="only what is older than DAYS days (default: everything)")
    q.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="data directory (default: the one 'serve' uses)")
    q.set_defaults(handler=local.cmd_local_prune)

    p = command(sub, "doctor", "check this machine's setup and the API; exit 1 with the reasons")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="local server data directory to report (default: the one 'serve' uses)")
    p.add_argument("--timeout", type=_positive_float, default=5.0,
                   help="seconds for each network check (default: 5)")
    p.set_defaults(handler=doctor.cmd_doctor)
    return parser
