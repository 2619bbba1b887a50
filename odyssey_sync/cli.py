"""The ``odyssey-sync`` command line.

Subcommands (``odyssey-sync COMMAND --help`` for each)::

    serve                      run the embedded Odyssey-compatible server
    demo                       a short end-to-end tour (embedded server by default)
    stream PROMPT              start a stream, save / show its video for N seconds
    interact PROMPT            start a stream, then send one interaction per stdin line
    spectate URL TOKEN         watch a broadcast stream as a spectator (WHEP)
    simulate SCRIPT.json       submit a simulation job, optionally wait and download
    recordings list|get|download
    simulations list|get|cancel

Global options (accepted before or after the subcommand): ``--api-url`` (default
``$ODYSSEY_API_URL``), ``--api-key`` (default ``$ODYSSEY_API_KEY``), ``--json``
(machine-readable JSON on stdout, one document per command) and ``--debug``
(debug logs and a traceback on failure).

Exit codes: 0 success, 1 failure (server refused, timeout, I/O error), 2 usage
mistake (bad arguments, missing API key, unreadable script), 130 Ctrl-C. Errors
are one line on stderr, ``odyssey-sync: error: ...``; a traceback is printed only
with ``--debug``. The API key is never printed.

Every command runs on the calling (main) thread; the SDK's own threads are
joined before :func:`main` returns.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import logging
import math
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from ._version import __version__
from .errors import OdysseyError, OdysseyUsageError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["main"]

PROG = "odyssey-sync"

#: exit codes (documented in the module docstring and the README (Command line))
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger("odyssey_sync.cli")


class UsageError(Exception):
    """A mistake the user can fix by changing the command line (exit code 2)."""


# --------------------------------------------------------------------------- output


class Output:
    """Where results go: human text, or one JSON document with ``--json``.

    Human-oriented progress always goes to stderr so stdout stays parseable.
    """

    def __init__(self, as_json: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.as_json = as_json
        self.stdout = stdout
        self.stderr = stderr

    def info(self, text: str) -> None:
        """Progress / status text (stderr, also in ``--json`` mode)."""
        print(text, file=self.stderr, flush=True)

    def line(self, text: str) -> None:
        """A result line for humans (stdout; suppressed in ``--json`` mode)."""
        if not self.as_json:
            print(text, file=self.stdout, flush=True)

    def result(self, value: Any, human: Callable[[], None] | None = None) -> None:
        """Emit the command's result: JSON on stdout, or call ``human``."""
        if self.as_json:
            json.dump(to_jsonable(value), self.stdout, indent=2, sort_keys=False)
            self.stdout.write("\n")
            self.stdout.flush()
        elif human is not None:
            human()

    def event(self, value: dict[str, Any]) -> None:
        """One JSON line per event (``interact`` in ``--json`` mode)."""
        if self.as_json:
            self.stdout.write(json.dumps(to_jsonable(value)) + "\n")
            self.stdout.flush()


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


# --------------------------------------------------------------------------- parser


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # The sub-parsers get the same options with SUPPRESS defaults, so
    # ``odyssey-sync recordings list --json`` works as well as
    # ``odyssey-sync --json recordings list`` without the later parser
    # resetting a value given earlier.
    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--api-url",
        metavar="URL",
        default=default(os.environ.get("ODYSSEY_API_URL") or None),
        help="API base URL (default: $ODYSSEY_API_URL, else https://api.odyssey.ml)",
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=default(os.environ.get("ODYSSEY_API_KEY") or None),
        help="API key (default: $ODYSSEY_API_KEY)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print machine-readable JSON on stdout",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="debug logging, and a traceback on errors",
    )


def _add_orientation(parser: argparse.ArgumentParser, default_portrait: bool = True) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--portrait",
        dest="portrait",
        action="store_true",
        default=default_portrait,
        help="portrait video (default)" if default_portrait else "portrait video",
    )
    group.add_argument(
        "--landscape",
        dest="portrait",
        action="store_false",
        help="landscape video" if default_portrait else "landscape video (default)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors use the ``odyssey-sync: error:`` one-liner."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog=PROG,
        description="Command line for Odyssey's interactive world-model video API.",
        epilog="Run '%(prog)s COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_global_options(p, top=False)
        return p

    # serve ------------------------------------------------------------------
    p = command("serve", "run the embedded Odyssey-compatible local server")
    try:
        from .local.cli import add_serve_arguments
    except ImportError:  # the local server is optional at parse time
        p.set_defaults(_serve_missing=True)
    else:
        add_serve_arguments(p)
    p.set_defaults(handler=cmd_serve)

    # demo -------------------------------------------------------------------
    p = command("demo", "a short end-to-end tour (embedded server unless --api-url is given)")
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("odyssey-demo"),
                   help="directory for the demo's outputs (default: ./odyssey-demo)")
    p.add_argument("--prompt", default="A lighthouse on a cliff at dusk, waves below",
                   help="initial prompt")
    p.add_argument("--seconds", type=_positive_float, default=8.0,
                   help="how long to stream (default: 8)")
    _add_orientation(p, default_portrait=False)
    p.set_defaults(handler=cmd_demo)

    # stream -----------------------------------------------------------------
    p = command("stream", "start a stream and save/show its video for a while")
    p.add_argument("prompt", metavar="PROMPT", help="initial prompt")
    p.add_argument("--image", metavar="PATH", type=Path, help="image for image-to-video")
    p.add_argument("--seconds", type=_positive_float, default=10.0,
                   help="how long to stream (default: 10)")
    p.add_argument("--out", metavar="VIDEO.mp4", type=Path, help="save the video as MP4")
    p.add_argument("--show", action="store_true", help="show the video in an OpenCV window")
    p.add_argument("--broadcast", action="store_true",
                   help="broadcast the stream and print the spectator URL and token")
    _add_orientation(p)
    p.set_defaults(handler=cmd_stream)

    # interact ---------------------------------------------------------------
    p = command("interact", "start a stream, then send each stdin line as an interaction")
    p.add_argument("prompt", metavar="PROMPT", help="initial prompt")
    p.add_argument("--image", metavar="PATH", type=Path, help="image for image-to-video")
    p.add_argument("--out", metavar="VIDEO.mp4", type=Path, help="save the video as MP4")
    _add_orientation(p)
    p.set_defaults(handler=cmd_interact)

    # spectate ---------------------------------------------------------------
    p = command("spectate", "watch a broadcast stream as a spectator (WHEP)")
    p.add_argument("webrtc_url", metavar="WEBRTC_URL", help="broadcast WHEP base URL")
    p.add_argument("token", metavar="TOKEN",
                   help="spectator token ('-' reads it from stdin, keeping it out of ps)")
    p.add_argument("--seconds", type=_positive_float, default=10.0,
                   help="how long to watch (default: 10; ends earlier with the broadcast)")
    p.add_argument("--out", metavar="VIDEO.mp4", type=Path, help="save the video as MP4")
    p.add_argument("--show", action="store_true", help="show the video in an OpenCV window")
    p.set_defaults(handler=cmd_spectate)

    # simulate ---------------------------------------------------------------
    p = command("simulate", "submit a simulation job from a JSON script")
    p.add_argument("script", metavar="SCRIPT.json", type=Path,
                   help="a script (list of entries) or a batch (list of scripts); '-' = stdin")
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")
    p.add_argument("--download", metavar="DIR", type=Path,
                   help="download the output videos into DIR (implies --wait)")
    p.add_argument("--timeout", type=_positive_float, default=1800.0,
                   help="seconds to wait with --wait (default: 1800)")
    _add_orientation(p)
    p.set_defaults(handler=cmd_simulate)

    # recordings -------------------------------------------------------------
    p = command("recordings", "list, inspect and download stream recordings")
    rsub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    rsub.required = True
    q = rsub.add_parser("list", help="list your recordings, newest first")
    _add_global_options(q, top=False)
    q.add_argument("--limit", type=_non_negative_int, default=None)
    q.add_argument("--offset", type=_non_negative_int, default=None)
    q.set_defaults(handler=cmd_recordings_list)
    q = rsub.add_parser("get", help="show one recording (presigned URLs)")
    _add_global_options(q, top=False)
    q.add_argument("stream_id", metavar="STREAM_ID")
    q.set_defaults(handler=cmd_recordings_get)
    q = rsub.add_parser("download", help="download a recording's video")
    _add_global_options(q, top=False)
    q.add_argument("stream_id", metavar="STREAM_ID")
    q.add_argument("path", metavar="PATH", type=Path, nargs="?",
                   help="file or directory (default: ./STREAM_ID.mp4)")
    q.set_defaults(handler=cmd_recordings_download)

    # simulations ------------------------------------------------------------
    p = command("simulations", "list, inspect and cancel simulation jobs")
    ssub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    ssub.required = True
    q = ssub.add_parser("list", help="list your simulation jobs")
    _add_global_options(q, top=False)
    q.add_argument("--status", help="only jobs with this status (pending, completed, ...)")
    q.add_argument("--active", action="store_true", default=None,
                   help="only pending/dispatched/processing jobs")
    q.add_argument("--limit", type=_non_negative_int, default=None)
    q.add_argument("--offset", type=_non_negative_int, default=None)
    q.set_defaults(handler=cmd_simulations_list)
    q = ssub.add_parser("get", help="show one job")
    _add_global_options(q, top=False)
    q.add_argument("job_id", metavar="JOB_ID")
    q.set_defaults(handler=cmd_simulations_get)
    q = ssub.add_parser("cancel", help="cancel a pending job")
    _add_global_options(q, top=False)
    q.add_argument("job_id", metavar="JOB_ID")
    q.set_defaults(handler=cmd_simulations_cancel)
    return parser


# --------------------------------------------------------------------------- helpers


def _require_key(args: argparse.Namespace) -> str:
    key = args.api_key
    if not key:
        raise UsageError("no API key: pass --api-key or set ODYSSEY_API_KEY")
    return str(key)


def _client(args: argparse.Namespace) -> Any:
    """An :class:`~odyssey_sync.client.Odyssey` built from the global options."""
    key = _require_key(args)
    from .client import Odyssey

    kwargs: dict[str, Any] = {}
    if args.api_url:
        kwargs["api_url"] = args.api_url
    if args.debug:
        kwargs["debug"] = True
    return Odyssey(key, **kwargs)


def _file_name(stream_id: str) -> str:
    """``<stream_id>.mp4`` made safe as one file name (ids come from the server)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stream_id).lstrip(".") or "recording"
    return f"{safe}.mp4"


def _read_image(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read image {str(path)!r}: {exc.strerror or exc}") from None


def _check_out_path(path: Path | None) -> None:
    # Fail before connecting: discovering an unwritable --out after a paid
    # stream has run would waste the stream.
    if path is None:
        return
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"output directory does not exist: {str(parent)!r}")
    if path.is_dir():
        raise UsageError(f"--out must be a file, not a directory: {str(path)!r}")


class VideoWriter:
    """Writes RGB frames to an MP4 file (H.264 when available, else MPEG-4 Part 2).

    Blocking; call from one thread. Frames may arrive at an irregular rate, so
    each frame's presentation time is its arrival time (millisecond clock).
    """

    def __init__(self, path: Path, fps: float = 30.0) -> None:
        self.path = path
        self.fps = fps
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None
        self._t0: float | None = None
        self._last_pts = -1

    def _open(self, width: int, height: int) -> None:
        import av

        container = av.open(str(self.path), mode="w")
        stream: Any = None
        for codec in ("libx264", "h264", "mpeg4"):
            try:
                stream = container.add_stream(codec, rate=round(self.fps))
                break
            except (ValueError, av.FFmpegError):  # codec not built into this PyAV
                continue
        if stream is None:
            container.close()
            raise OdysseyError("no usable MP4 video encoder in this PyAV build")
        # Encoders want even sizes; the odd row/column (if any) is cropped.
        stream.width = width - width % 2
        stream.height = height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        self._container, self._stream = container, stream

    def write(self, rgb: np.ndarray) -> None:
        """Encode one H×W×3 RGB ``uint8`` frame."""
        import av

        now = time.monotonic()
        if self._container is None:
            self._open(int(rgb.shape[1]), int(rgb.shape[0]))
            self._t0 = now
        assert self._t0 is not None
        w, h = self._stream.width, self._stream.height
        frame = av.VideoFrame.from_ndarray(rgb[:h, :w], format="rgb24")
        pts = max(int((now - self._t0) * 1000), self._last_pts + 1)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = Fraction(1, 1000)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (idempotent)."""
        container, self._container = self._container, None
        if container is None:
            return
        try:
            for packet in self._stream.encode(None):
                container.mux(packet)
        finally:
            container.close()


class Window:
    """An OpenCV window, or a clear :class:`UsageError` when there is none."""

    def __init__(self, title: str) -> None:
        self.title = title
        try:
            import cv2
        except ImportError:
            raise UsageError("--show needs OpenCV: pip install opencv-python") from None
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            # Checked first because some OpenCV GUI back-ends abort the whole
            # process when no display can be opened.
            raise UsageError("--show needs a display (DISPLAY is not set)")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise UsageError(
                "--show needs OpenCV built with GUI support (opencv-python, "
                "not opencv-python-headless)"
            ) from None
        self._cv2 = cv2
        self.closed = False

    def show(self, rgb: np.ndarray) -> None:
        """Display one RGB frame and pump window events; sets ``closed`` on q/Esc."""
        cv2 = self._cv2
        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self.closed = True

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the user may already have closed it
            self._cv2.destroyWindow(self.title)


def _pump_frames(
    source: Any,
    seconds: float,
    writer: VideoWriter | None,
    window: Window | None,
    stop: threading.Event | None = None,
    frame_timeout: float = 10.0,
) -> int:
    """Take each new frame of ``source.frames()`` for ``seconds``; returns frames seen.

    Frames go to the writer and/or window; the iterator releases each frame's
    ring slot when it advances. Ends early when ``stop`` is set, the window is
    closed or the source ends (a broadcast that stopped).

    Raises:
        OdysseyTimeoutError: no new frame within ``frame_timeout`` seconds.
    """
    seen = 0
    end = time.monotonic() + seconds
    for frame in source.frames(timeout=frame_timeout):
        seen += 1
        if writer is not None:
            writer.write(frame.data)
        if window is not None:
            window.show(frame.data)
        if (
            time.monotonic() >= end
            or (stop is not None and stop.is_set())
            or (window is not None and window.closed)
        ):
            break
    return seen


class _Recorder:
    """Pumps frames into a writer on a named helper thread (``interact --out``)."""

    def __init__(self, source: Any, writer: VideoWriter) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.frames = 0
        self._thread = threading.Thread(
            target=self._run, args=(source, writer), name="odyssey-cli-recorder", daemon=True
        )
        self._thread.start()

    def _run(self, source: Any, writer: VideoWriter) -> None:
        try:
            self.frames = _pump_frames(source, math.inf, writer, None, self.stop)
        except BaseException as exc:  # reported by join() on the main thread
            self.error = exc

    def join(self, timeout: float = 15.0) -> None:
        """Stop recording and wait for the thread; re-raises its error, if any."""
        self.stop.set()
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error


@contextmanager
def _sinks(
    out: Path | None, show: bool, title: str
) -> Iterator[tuple[VideoWriter | None, Window | None]]:
    window = Window(title) if show else None
    writer = VideoWriter(out) if out is not None else None
    try:
        yield writer, window
    finally:
        if writer is not None:
            writer.close()
        if window is not None:
            window.close()


# --------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    if getattr(args, "_serve_missing", False):
        raise OdysseyError("the embedded server (odyssey_sync.local) is not available")
    from .local.cli import run_serve

    return int(run_serve(args))


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from .demo import run_demo

    return int(
        run_demo(
            api_url=args.api_url,
            api_key=args.api_key,
            out_dir=args.out,
            prompt=args.prompt,
            seconds=args.seconds,
            portrait=args.portrait,
        )
    )


def cmd_stream(args: argparse.Namespace, out: Output) -> int:
    image = _read_image(args.image)
    _check_out_path(args.out)
    broadcast: dict[str, Any] = {}
    _require_key(args)  # a usage error before any window opens
    with _sinks(args.out, args.show, f"odyssey: {args.prompt[:40]}") as (writer, window), \
            _client(args) as client:
        out.info("connecting…")

        def on_broadcast_ready(info: Any) -> None:
            broadcast.update(webrtc_url=info.webrtc_url, spectator_token=info.spectator_token,
                             hls_url=info.hls_url)
            # The token is the user's own credential to hand out; print it
            # on purpose (stderr), never in logs.
            out.info(f"broadcast ready: {info.webrtc_url}")
            out.info(f"spectator token: {info.spectator_token}")

        client.connect(on_broadcast_ready=on_broadcast_ready if args.broadcast else None)
        kwargs: dict[str, Any] = {"portrait": args.portrait}
        if image is not None:
            kwargs["image"] = image
        if args.broadcast:
            kwargs["broadcast"] = True
        stream_id = client.start_stream(args.prompt, **kwargs)
        out.info(f"stream started: {stream_id}")
        started = time.monotonic()
        frames = _pump_frames(client, args.seconds, writer, window)
        elapsed = time.monotonic() - started
        client.end_stream()
    result: dict[str, Any] = {
        "stream_id": stream_id,
        "frames": frames,
        "seconds": round(elapsed, 3),
        "out": str(args.out) if args.out else None,
    }
    if broadcast:
        result["broadcast"] = broadcast

    def human() -> None:
        out.line(f"stream {stream_id}: {frames} frames in {elapsed:.1f} s")
        if args.out:
            out.line(f"saved {args.out}")

    out.result(result, human)
    return EXIT_OK


def cmd_interact(args: argparse.Namespace, out: Output) -> int:
    image = _read_image(args.image)
    _check_out_path(args.out)
    writer = VideoWriter(args.out) if args.out is not None else None
    acks: list[str] = []
    try:
        client = _client(args)
        with client:
            out.info("connecting…")
            client.connect()
            kwargs: dict[str, Any] = {"portrait": args.portrait}
            if image is not None:
                kwargs["image"] = image
            stream_id = client.start_stream(args.prompt, **kwargs)
            out.info(f"stream started: {stream_id} (one interaction per line; EOF ends)")
            out.event({"event": "stream_started", "stream_id": stream_id})
            # Frames are recorded on a helper thread while the main thread
            # blocks on stdin; it is stopped and joined before the stream ends.
            recorder = _Recorder(client, writer) if writer is not None else None
            try:
                for raw in sys.stdin:
                    prompt = raw.strip()
                    if not prompt:
                        continue
                    ack = client.interact(prompt)
                    acks.append(ack)
                    out.line(f"acknowledged: {ack}")
                    out.event({"event": "interact_acknowledged", "prompt": ack})
            finally:
                if recorder is not None:
                    recorder.join()
            client.end_stream()
            out.event({"event": "stream_ended", "stream_id": stream_id})
    finally:
        if writer is not None:
            writer.close()
    if not out.as_json:
        out.line(f"stream {stream_id} ended after {len(acks)} interaction(s)")
        if args.out:
            out.line(f"saved {args.out}")
    return EXIT_OK


def cmd_spectate(args: argparse.Namespace, out: Output) -> int:
    token = args.token
    if token == "-":
        token = sys.stdin.readline().strip()
    if not token:
        raise UsageError("empty spectator token")
    _check_out_path(args.out)
    from .spectator import connect_to_stream

    ended = threading.Event()
    with _sinks(args.out, args.show, "odyssey spectator") as (writer, window):
        out.info("joining broadcast…")
        with connect_to_stream(
            args.webrtc_url, token, on_disconnected=ended.set, debug=args.debug
        ) as spectator:
            out.info("watching")
            started = time.monotonic()
            frames = _pump_frames(spectator, args.seconds, writer, window, ended)
            elapsed = time.monotonic() - started
            # Read before leaving: after close() it is never "connected".
            broadcast_ended = not spectator.is_connected
    result = {"frames": frames, "seconds": round(elapsed, 3), "ended": broadcast_ended,
              "out": str(args.out) if args.out else None}
    suffix = " (broadcast ended)" if broadcast_ended else ""
    out.result(result, lambda: out.line(f"watched {frames} frames in {elapsed:.1f} s{suffix}"))
    return EXIT_OK


def _load_script(path: Path) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read script {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"script {str(path)!r} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        # Accept {"script": [...]}, {"scripts": [[...]]} or {"script_url": "..."}
        keys = [k for k in ("script", "scripts", "script_url") if k in data]
        if len(keys) != 1:
            raise UsageError(
                f"script {str(path)!r}: an object must have exactly one of "
                "'script', 'scripts', 'script_url'"
            )
        return data
    if isinstance(data, list) and data and all(isinstance(s, list) for s in data):
        return {"scripts": data}
    if isinstance(data, list) and data:
        return {"script": data}
    raise UsageError(f"script {str(path)!r} must be a non-empty JSON list of entries")


def _download_streams(client: Any, job: Any, directory: Path, out: Output) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    saved: list[str] = []
    for stream in job.streams:
        target = directory / _file_name(stream.stream_id)
        path = client.download_recording(stream.stream_id, target, progress=True)
        saved.append(str(path))
        out.info(f"downloaded {saved[-1]}")
    return saved


def cmd_simulate(args: argparse.Namespace, out: Output) -> int:
    spec = _load_script(args.script)
    if args.download is not None and args.download.exists() and not args.download.is_dir():
        raise UsageError(f"--download must be a directory: {str(args.download)!r}")
    client = _client(args)
    with client:
        job = client.simulate(**spec, portrait=args.portrait)
        out.info(f"simulation job {job.job_id}: {job.status}")
        if args.wait or args.download is not None:
            # Raises OdysseyStreamError when the job fails or is cancelled;
            # the status line goes to stderr, so --json output stays clean.
            job = client.wait_for_simulation(job.job_id, timeout=args.timeout, progress=True)
        saved: list[str] = []
        if args.download is not None:
            saved = _download_streams(client, job, args.download, out)
    result = to_jsonable(job)
    if saved:
        result["downloaded"] = saved

    def human() -> None:
        out.line(f"job {job.job_id}: {job.status}")
        for s in job.streams:
            out.line(f"  stream {s.stream_id}  {s.duration_seconds or '?'} s  {s.video_url or ''}")
        if job.error_message:
            out.line(f"  error: {job.error_message}")

    out.result(result, human)
    return EXIT_OK


def cmd_recordings_list(args: argparse.Namespace, out: Output) -> int:
    client = _client(args)
    with client:
        page = client.list_stream_recordings(limit=args.limit, offset=args.offset)

    def human() -> None:
        for r in page.recordings:
            dur = f"{r.duration_seconds:.1f} s" if r.duration_seconds is not None else "live"
            out.line(f"{r.stream_id}  {r.width}x{r.height}  {dur}  {r.started_at}")
        out.line(f"{len(page.recordings)} of {page.total}")

    out.result(page, human)
    return EXIT_OK


def cmd_recordings_get(args: argparse.Namespace, out: Output) -> int:
    client = _client(args)
    with client:
        rec = client.get_recording(args.stream_id)

    def human() -> None:
        for f in dataclasses.fields(rec):
            out.line(f"{f.name}: {getattr(rec, f.name)}")

    out.result(rec, human)
    return EXIT_OK


def cmd_recordings_download(args: argparse.Namespace, out: Output) -> int:
    name = _file_name(args.stream_id)
    target: Path = args.path if args.path is not None else Path(name)
    if target.is_dir():
        target = target / name
    _check_out_path(target)
    client = _client(args)
    with client:
        saved = Path(client.download_recording(args.stream_id, target, progress=True))
    out.result({"stream_id": args.stream_id, "path": str(saved)},
               lambda: out.line(f"saved {saved}"))
    return EXIT_OK


def cmd_simulations_list(args: argparse.Namespace, out: Output) -> int:
    from .types import SimulationJobStatus

    status = SimulationJobStatus(args.status) if args.status else None
    client = _client(args)
    with client:
        page = client.list_simulations(status=status, active=args.active, limit=args.limit,
                                       offset=args.offset)

    def human() -> None:
        for j in page.jobs:
            out.line(f"{j.job_id}  {j.status}  {j.created_at}")
        out.line(f"{len(page.jobs)} of {page.total}")

    out.result(page, human)
    return EXIT_OK


def cmd_simulations_get(args: argparse.Namespace, out: Output) -> int:
    client = _client(args)
    with client:
        job = client.get_simulate_status(args.job_id)

    def human() -> None:
        out.line(f"job {job.job_id}: {job.status}")
        for s in job.streams:
            out.line(f"  stream {s.stream_id}  {s.video_url or ''}")

    out.result(job, human)
    return EXIT_OK


def cmd_simulations_cancel(args: argparse.Namespace, out: Output) -> int:
    client = _client(args)
    with client:
        info = client.cancel_simulation(args.job_id)
    out.result(info, lambda: out.line(f"job {info.job_id}: {info.status}"))
    return EXIT_OK


# --------------------------------------------------------------------------- main


def _one_line(exc: BaseException) -> str:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (does not call ``sys.exit``).

    Blocking: runs the whole command on the calling thread. ``argv`` defaults
    to ``sys.argv[1:]``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help / --version / usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    # ``serve --verbose`` asks for INFO logs; configuring the root logger
    # here first would otherwise turn its own basicConfig() into a no-op.
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
    out = Output(bool(args.json), sys.stdout, sys.stderr)
    handler: Callable[[argparse.Namespace, Output], int] = args.handler
    try:
        return handler(args, out)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # every failure becomes one line (traceback with --debug)
        if args.debug:
            traceback.print_exc()
        if isinstance(exc, (TypeError, ValueError)) and not isinstance(exc, OdysseyError):
            # Bad input rejected by the SDK before any network call.
            print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
