"""Live-video commands: ``stream``, ``interact`` and ``spectate``.

Each runs on the calling (main) thread and returns an exit code; usage
mistakes are refused before connecting (:mod:`.inputs`). When the server goes
away mid-stream, the error says the connection was lost and where the video
received so far was saved (the file is finished, not truncated).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..client import Odyssey
from ..errors import OdysseyError
from ..spectator import connect_to_stream
from ..types import BroadcastInfo
from .inputs import check_out_path, open_client, read_image, require_key
from .media import FrameRecorder, Mp4Writer, Window, pump_frames
from .output import EXIT_OK, CommandFailed, Output, UsageError, one_line

__all__ = ["cmd_interact", "cmd_spectate", "cmd_stream"]

#: ``interact --hold`` default when stdin is a pipe or a file (seconds)
PIPED_HOLD = 2.0


@contextlib.contextmanager
def _sinks(
    out: Path | None, show: bool, title: str
) -> Iterator[tuple[Mp4Writer | None, Window | None]]:
    window = Window(title) if show else None
    writer = Mp4Writer(out) if out is not None else None
    try:
        yield writer, window
    finally:
        if writer is not None:
            writer.close()
        if window is not None:
            window.close()


def _saved(writer: Mp4Writer | None) -> str:
    if writer is None:
        return ""
    if writer.frames == 0:
        return "; no video was saved"
    return f"; the video so far ({writer.frames} frames) is saved in {writer.path}"


def _stream_failed(client: Odyssey, exc: OdysseyError, writer: Mp4Writer | None) -> CommandFailed:
    """The user's view of a failure while streaming: a lost connection is named as such."""
    if client.is_connected:
        reason = one_line(exc)
    else:
        # The SDK's own message here is about the call that found the client
        # disconnected ("end_stream requires a connected client"), not the cause.
        reason = f"the connection to the server was lost ({client.current_status.value})"
    failed = CommandFailed(reason + _saved(writer))
    failed.__cause__ = exc
    return failed


def _broadcast_reporter(out: Output, details: dict[str, Any]) -> Any:
    def on_broadcast_ready(info: BroadcastInfo) -> None:
        details.update(webrtc_url=info.webrtc_url, spectator_token=info.spectator_token,
                       hls_url=info.hls_url)
        out.info(f"broadcast ready: {info.webrtc_url}")
        if out.as_json:
            out.event({"event": "broadcast_ready", **details})
        else:
            # The token is the user's own credential to hand out: printed on
            # purpose (stderr), never logged.
            out.info(f"spectator token: {info.spectator_token}")

    return on_broadcast_ready


def cmd_stream(args: argparse.Namespace, out: Output) -> int:
    """``stream PROMPT``: stream for ``--seconds``, saving/showing the video."""
    require_key(args)
    image = read_image(args.image, portrait=args.portrait)
    check_out_path(args.out)
    broadcast: dict[str, Any] = {}
    with _sinks(args.out, args.show, f"odyssey: {args.prompt[:40]}") as (writer, window), \
            open_client(args) as client:
        out.info("connecting…")
        client.connect(
            on_broadcast_ready=_broadcast_reporter(out, broadcast) if args.broadcast else None)
        stream_id = client.start_stream(args.prompt, portrait=args.portrait, image=image,
                                        broadcast=args.broadcast)
        out.info(f"stream started: {stream_id}"
                 + (" (resume on: the session outlives the service's stream limit)"
                    if args.resume else ""))
        started = time.monotonic()
        try:
            frames = pump_frames(client, args.seconds, writer, window)
            elapsed = time.monotonic() - started
            if not client.is_connected:
                raise CommandFailed(
                    f"the connection to the server was lost after {elapsed:.1f} s "
                    f"({client.current_status.value})" + _saved(writer))
            client.end_stream()
        except OdysseyError as exc:
            raise _stream_failed(client, exc, writer) from exc
    result: dict[str, Any] = {"stream_id": stream_id, "stream_ids": client.stream_ids,
                              "frames": frames,
                              "seconds": round(elapsed, 3),
                              "out": str(args.out) if args.out else None}
    if broadcast:
        result["broadcast"] = broadcast

    def human() -> None:
        out.line(f"stream {stream_id}: {frames} frames in {elapsed:.1f} s")
        if args.out:
            out.line(f"saved {args.out}")

    out.result(result, human)
    return EXIT_OK


def _hold(args: argparse.Namespace) -> float:
    if args.hold is not None:
        return float(args.hold)
    return 0.0 if sys.stdin.isatty() else PIPED_HOLD


def cmd_interact(args: argparse.Namespace, out: Output) -> int:
    """``interact PROMPT``: one interaction per stdin line until EOF.

    ``--hold`` keeps the stream running after the start and after each
    interaction, so a piped script's effects are on screen (and in ``--out``)
    before the next line is sent.
    """
    require_key(args)
    image = read_image(args.image, portrait=args.portrait)
    check_out_path(args.out)
    hold = _hold(args)
    acks: list[str] = []
    with _sinks(args.out, False, "") as (writer, _), open_client(args) as client:
        out.info("connecting…")
        client.connect()
        stream_id = client.start_stream(args.prompt, portrait=args.portrait, image=image)
        out.info(f"stream started: {stream_id} (one interaction per line; EOF ends)")
        out.event({"event": "stream_started", "stream_id": stream_id})
        # Frames are recorded on a helper thread while this one blocks on
        # stdin; the recorder is joined before the file is finished.
        recorder = FrameRecorder(client, writer).start() if writer is not None else None
        try:
            time.sleep(hold)
            for raw in sys.stdin:
                prompt = raw.strip()
                if not prompt:
                    continue
                acks.append(client.interact(prompt))
                out.line(f"acknowledged: {acks[-1]}")
                out.event({"event": "interact_acknowledged", "prompt": acks[-1]})
                time.sleep(hold)
            if not client.is_connected:
                raise CommandFailed(
                    f"the connection to the server was lost ({client.current_status.value})"
                    + _saved(writer))
            client.end_stream()
        except OdysseyError as exc:
            raise _stream_failed(client, exc, writer) from exc
        finally:
            if recorder is not None:
                recorder.stop()
    frames = writer.frames if writer is not None else None
    out.event({"event": "stream_ended", "stream_id": stream_id, "interactions": len(acks),
               "frames": frames, "out": str(args.out) if args.out else None})
    out.line(f"stream {stream_id} ended after {len(acks)} interaction(s)")
    if args.out:
        out.line(f"saved {args.out} ({frames} frames)")
    return EXIT_OK


def cmd_spectate(args: argparse.Namespace, out: Output) -> int:
    """``spectate URL TOKEN``: watch a broadcast for ``--seconds`` (or until it ends)."""
    token = args.token
    if token == "-":
        token = sys.stdin.readline().strip()
    if not token:
        raise UsageError("empty spectator token")
    check_out_path(args.out)
    ended = threading.Event()
    with _sinks(args.out, args.show, "odyssey spectator") as (writer, window):
        out.info("joining broadcast…")
        with connect_to_stream(
            args.webrtc_url, token, on_disconnected=ended.set, debug=args.debug
        ) as spectator:
            out.info("watching")
            started = time.monotonic()
            frames = pump_frames(spectator, args.seconds, writer, window, stop=ended)
            elapsed = time.monotonic() - started
            # Read before leaving: after close() it is never "connected".
            broadcast_ended = not spectator.is_connected
    result = {"frames": frames, "seconds": round(elapsed, 3), "ended": broadcast_ended,
              "out": str(args.out) if args.out else None}
    suffix = " (broadcast ended)" if broadcast_ended else ""
    out.result(result, lambda: out.line(f"watched {frames} frames in {elapsed:.1f} s{suffix}"))
    return EXIT_OK
