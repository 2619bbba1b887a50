"""``odyssey-sync demo``: stream a prompt, interact, save an MP4 and a contact sheet.

:func:`run_demo` is the whole demo. With no API URL given (``--api-url`` or
``ODYSSEY_API_URL``) it starts the embedded local server at 640×352 in a
temporary data directory, so it works offline; with a URL and a key it talks
to that service; a URL without a key is refused (it never falls back to the
embedded server silently).

Frames are pulled by a recording thread (:class:`~odyssey_sync.cli.media.FrameRecorder`,
never inside a callback, never on the network thread) and encoded with the
command line's MP4 writer. The contact sheet samples the stream evenly from
its first frame to its last, with at least one tile after each interaction,
each tile labelled with its time and the prompt in effect.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cli.media import FrameRecorder, Mp4Writer
from .client import Odyssey
from .types import ConnectionStatus

__all__ = ["DEMO_INTERACTIONS", "STAMP_EXPLANATION", "DemoReport", "run_demo"]

#: what the demo asks for, spread evenly over the run
DEMO_INTERACTIONS = (
    "A gust of wind sweeps through",
    "The sun begins to set",
    "Night falls and stars appear",
)
#: printed when the video comes from the embedded server
STAMP_EXPLANATION = (
    "the band of grey blocks near the top-left corner of each frame is the local "
    "server's machine-readable frame stamp (frame number and send time), which the demo "
    "reads to measure latency; video from the hosted service has no such band"
)
_SHEET_TILES = 12
_SHEET_COLUMNS = 4
_TILE_WIDTH = 320
_EMBEDDED_SIZE = (640, 352)


@dataclass
class DemoReport:
    """What one demo run produced and measured (the ``--json`` result)."""

    server: str  #: "embedded" or the API URL used
    data_dir: str | None  #: the embedded server's data directory (removed at the end)
    stream_id: str
    interactions: list[str]  #: the prompts the streamer acknowledged
    connect_seconds: float
    frames_received: int
    frames_written: int
    frames_dropped: int
    fps: float
    convert_us_p50: float
    convert_us_p99: float
    latency_ms_p50: float | None  #: server send → client frame (embedded server only)
    latency_ms_p99: float | None
    video: str | None
    contact_sheet: str | None
    #: each tile's time, seconds since the stream's first frame
    contact_sheet_seconds: list[float]
    #: each interaction's acknowledgement, seconds since the stream's first frame
    interaction_seconds: list[float]
    notes: list[str] = field(default_factory=list)


@dataclass
class _Tile:
    at: float  #: seconds since the stream's first frame
    image: Any  #: PIL image (thumbnail)


class _StreamSampler:
    """Runs on the recording thread: finds the stream's first frame, writes the
    stream's frames to the MP4, keeps thumbnails for the contact sheet and
    reads the local server's frame stamps for latency.

    The main thread only calls :meth:`stream_requested`, :meth:`started`,
    :meth:`interacted` and :meth:`ending`, under the lock.
    """

    def __init__(self, writer: Mp4Writer, *, stamped: bool, seconds: float) -> None:
        self._writer = writer
        self._decode = _stamp_decoder() if stamped else None
        self._step = seconds / (4 * _SHEET_TILES)  # finer than the sheet needs
        self._lock = threading.Lock()
        self._requested = False
        self._started_at: float | None = None  # start_stream returned (monotonic)
        self._ending_at: float | None = None  # end_stream was called (monotonic)
        self._want_tile = False  # an interaction was acknowledged: keep its next frame
        self._first_at: float | None = None  # the stream's first frame (monotonic)
        self._last_tile = -1.0
        self.tiles: list[_Tile] = []
        self.latencies_ms: list[float] = []

    def stream_requested(self) -> None:
        with self._lock:
            self._requested = True

    def started(self) -> None:
        with self._lock:
            self._started_at = time.monotonic()

    def interacted(self) -> None:
        with self._lock:
            self._want_tile = True

    def first_frame_at(self) -> float | None:
        with self._lock:
            return self._first_at

    def ending(self) -> None:
        with self._lock:
            self._ending_at = time.monotonic()

    def __call__(self, frame: Any) -> None:
        stamp = self._decode(frame.data, now=frame.received_at) if self._decode else None
        with self._lock:
            if self._ending_at is not None and frame.received_at >= self._ending_at:
                return  # after end_stream was asked for: the idle picture again
            if self._first_at is None and not self._is_first(frame):
                return
            if self._first_at is None:
                self._first_at = frame.received_at
            t = frame.received_at - self._first_at
            keep = self._want_tile or t - self._last_tile >= self._step
            self._want_tile = False
        if stamp is not None:
            self.latencies_ms.append(stamp.latency_ms(frame.received_at))
        self._writer.write(frame.data, frame.received_at)
        if keep:
            self._last_tile = t
            self.tiles.append(_Tile(t, _thumbnail(frame.data)))

    def _is_first(self, frame: Any) -> bool:
        """Whether ``frame`` is the stream's first (caller holds the lock).

        Before a stream starts, a server may send an idle picture, and its
        frames can still be in flight when the stream starts; every frame
        carries the stream it belongs to (``VideoFrame.stream_id``), so the
        stream starts with its first frame that has one.
        """
        return self._requested and frame.stream_id is not None


def _stamp_decoder() -> Callable[..., Any]:
    # The stamp belongs to the local server's renderer; only the demo, which
    # starts that server, reads it.
    from .local.render.stamp import decode_stamp

    return decode_stamp


def _thumbnail(rgb: Any) -> Any:
    from PIL import Image

    image = Image.fromarray(rgb[:, :, :3])
    image.thumbnail((_TILE_WIDTH, _TILE_WIDTH))
    return image


def choose_tiles(
    times: list[float], interactions: list[float], count: int = _SHEET_TILES
) -> list[int]:
    """Which of the candidate frames at ``times`` (ascending seconds since the
    stream's first frame) go on the contact sheet: ``count`` spread evenly from
    the first to the last, plus, for each interaction (its acknowledgement
    time) whose span up to the next one has none yet, that span's first
    candidate. Pure; returns indices in ascending order."""
    if not times:
        return []
    end = times[-1]
    chosen: set[int] = set()
    for i in range(count):
        target = end * i / (count - 1) if count > 1 else 0.0
        chosen.add(min(range(len(times)), key=lambda k: abs(times[k] - target)))
    bounds = [*interactions, float("inf")]
    for start, stop in itertools.pairwise(bounds):
        inside = [k for k, t in enumerate(times) if start <= t < stop]
        if inside and not any(start <= times[k] < stop for k in chosen):
            chosen.add(inside[0])
    return sorted(chosen)


def _contact_sheet(
    tiles: list[_Tile], acked: list[tuple[float, str]], prompt: str, path: Path
) -> list[float]:
    from PIL import Image, ImageDraw

    chosen = [tiles[k] for k in choose_tiles([t.at for t in tiles], [at for at, _ in acked])]
    if not chosen:
        return []
    w, h = chosen[0].image.size
    cols = min(_SHEET_COLUMNS, len(chosen))
    rows = (len(chosen) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * w, rows * h), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(chosen):
        x, y = (i % cols) * w, (i // cols) * h
        sheet.paste(tile.image, (x, y))
        in_effect = prompt
        for at, text in acked:
            if at <= tile.at:
                in_effect = text
        label = f"{tile.at:4.1f} s  {in_effect}"[:48]
        draw.rectangle((x, y + h - 14, x + w, y + h), fill=(0, 0, 0))
        draw.text((x + 4, y + h - 13), label, fill=(235, 235, 235))
    sheet.save(path)
    return [round(tile.at, 3) for tile in chosen]


def run_demo(
    *,
    api_url: str | None,
    api_key: str | None,
    out_dir: Path,
    prompt: str,
    seconds: float,
    portrait: bool,
    say: Callable[[str], None] = print,
) -> DemoReport:
    """Run the demo and return what it produced and measured.

    Blocking for about ``seconds`` plus connection time, on the caller's
    thread (plus one recording thread, joined before returning). With no
    ``api_url`` (argument or ``ODYSSEY_API_URL``) it starts the embedded
    server in a temporary data directory, removed at the end; otherwise it
    uses ``api_url`` with ``api_key`` (argument or ``ODYSSEY_API_KEY``).
    Connects, starts a stream with ``prompt``, sends the
    :data:`DEMO_INTERACTIONS` spread over the run, ends the stream and
    disconnects. Writes ``out_dir/demo.mp4`` and ``out_dir/contact_sheet.png``;
    progress lines go to ``say``.

    Raises:
        ValueError: empty prompt, ``seconds`` not > 0, or an API URL without a
            key (before anything starts).
        OdysseyError: connecting or streaming failed (no secret in the message).
        OSError: the output directory or the video cannot be written.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError("seconds must be a positive number")
    api_url = api_url or os.environ.get("ODYSSEY_API_URL") or None
    api_key = api_key or os.environ.get("ODYSSEY_API_KEY") or None
    if api_url is not None and api_key is None:
        raise ValueError(
            f"an API URL was given ({api_url}) but no API key: pass --api-key or set "
            "ODYSSEY_API_KEY, or give no URL to use the embedded server")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        data_dir: str | None = None
        if api_url is None:
            from .local import LocalOdyssey

            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="odyssey-demo-"))
            server = stack.enter_context(LocalOdyssey(
                size=_EMBEDDED_SIZE, fps=30, data_dir=data_dir, recordings=False))
            api_url, api_key = server.url, server.api_key
            say(f"embedded server: {api_url}")
            say(f"  data directory: {data_dir} (temporary, removed when the demo ends)")
        assert api_key is not None
        report = _stream(api_url, api_key, out_dir, prompt, float(seconds), portrait,
                         embedded=data_dir is not None, say=say)
        report.data_dir = data_dir
        return report
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack never swallows


def _stream(
    api_url: str, api_key: str, out_dir: Path, prompt: str, seconds: float, portrait: bool,
    *, embedded: bool, say: Callable[[str], None],
) -> DemoReport:
    video_path = out_dir / "demo.mp4"
    sheet_path = out_dir / "contact_sheet.png"
    acked: list[tuple[float, str]] = []  # (monotonic time of the ack, prompt)

    def on_status(status: ConnectionStatus, message: str | None) -> None:
        say(f"  status: {status.value}" + (f" ({message})" if message else ""))

    with Mp4Writer(video_path) as writer, Odyssey(api_key, api_url=api_url) as client:
        began = time.monotonic()
        client.connect(on_status_change=on_status,
                       on_stream_error=lambda r, m: say(f"  stream error: {r}: {m}"))
        connect_seconds = time.monotonic() - began
        say(f"connected in {connect_seconds:.2f} s (session {client.current_session_id})")
        sampler = _StreamSampler(writer, stamped=embedded, seconds=seconds)
        recorder = FrameRecorder(client, None, on_frame=sampler,
                                 name="odyssey-demo-recorder").start()
        try:
            sampler.stream_requested()
            stream_id = client.start_stream(prompt, portrait=portrait)
            sampler.started()
            say(f"stream {stream_id}: {client.last_applied_prompt or prompt}")
            t0 = time.monotonic()
            slots = len(DEMO_INTERACTIONS) + 1
            for i, text in enumerate(DEMO_INTERACTIONS, start=1):
                _sleep_until(t0 + seconds * i / slots)
                ack = client.interact(text)
                acked.append((time.monotonic(), ack))
                sampler.interacted()
                say(f"  interact → {ack}")
            _sleep_until(t0 + seconds)
            sampler.ending()
            client.end_stream()
            stats = client.stats
        finally:
            recorder.stop()
    first = sampler.first_frame_at()
    relative = [(at - first, text) for at, text in acked] if first is not None else []
    tiles = _contact_sheet(sampler.tiles, relative, prompt, sheet_path)
    lat = sorted(sampler.latencies_ms)
    report = DemoReport(
        server="embedded" if embedded else api_url, data_dir=None, stream_id=stream_id,
        interactions=[text for _, text in acked], connect_seconds=round(connect_seconds, 3),
        frames_received=stats.received, frames_written=writer.frames,
        frames_dropped=stats.dropped, fps=round(stats.fps, 2),
        convert_us_p50=round(stats.convert_us_p50, 1),
        convert_us_p99=round(stats.convert_us_p99, 1),
        latency_ms_p50=round(lat[len(lat) // 2], 2) if lat else None,
        latency_ms_p99=round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else None,
        video=str(video_path) if writer.frames else None,
        contact_sheet=str(sheet_path) if tiles else None, contact_sheet_seconds=tiles,
        interaction_seconds=[round(at, 3) for at, _ in relative],
    )
    if embedded:
        report.notes.append(STAMP_EXPLANATION)
    _say_report(report, say)
    return report


def _say_report(report: DemoReport, say: Callable[[str], None]) -> None:
    say(f"frames: received {report.frames_received}, written {report.frames_written}, "
        f"dropped {report.frames_dropped}, {report.fps:.1f} fps")
    say(f"conversion: p50 {report.convert_us_p50:.0f} µs, p99 {report.convert_us_p99:.0f} µs")
    if report.latency_ms_p50 is not None:
        say(f"latency (server send → client frame): p50 {report.latency_ms_p50:.1f} ms, "
            f"p99 {report.latency_ms_p99:.1f} ms")
    if report.video:
        say(f"wrote {report.video}")
    if report.contact_sheet:
        say(f"wrote {report.contact_sheet} ({len(report.contact_sheet_seconds)} moments, evenly "
            "over the stream, each labelled with its time and prompt)")
    for note in report.notes:
        say(f"note: {note}")


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
