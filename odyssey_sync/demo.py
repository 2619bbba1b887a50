"""``odyssey-sync demo``: stream a prompt, interact, save an MP4 and a contact sheet.

:func:`run_demo` is the whole demo. With no API URL/key given (and none in
``ODYSSEY_API_URL`` / ``ODYSSEY_API_KEY``) it starts the embedded local server
at 640×352, so it works offline; otherwise it talks to the service you point
it at. The received frames are encoded by a *writer thread* that pulls them
with :meth:`Odyssey.frames` (never inside a callback, never on the network
thread), and a contact sheet of a dozen moments is saved next to the video.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from .client import Odyssey
from .errors import OdysseyError

__all__ = ["DEMO_INTERACTIONS", "run_demo"]

#: what the demo asks for after the first quarter of the run, one by one
DEMO_INTERACTIONS = (
    "A gust of wind sweeps through",
    "The sun begins to set",
    "Night falls and stars appear",
)
_SHEET_TILES = 12
_SHEET_COLUMNS = 4
_TILE_WIDTH = 320


class _Recorder:
    """Writer thread: pulls frames from the client and encodes them to MP4."""

    def __init__(self, client: Odyssey, path: Path, *, stamped: bool) -> None:
        self._client = client
        self._path = path
        self._stamped = stamped
        self._stop = threading.Event()
        self.frames = 0
        self.latencies_ms: list[float] = []
        self.thumbnails: list[Any] = []  # PIL images
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="odyssey-demo-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _frames(self) -> Iterator[Any]:
        while not self._stop.is_set():
            try:
                yield from self._client.frames(timeout=0.5)
                return  # iterator ended: disconnected
            except OdysseyError:
                continue  # no frame within 0.5 s: check the stop flag again

    def _run(self) -> None:
        import av
        from PIL import Image

        try:
            from .local.render.stamp import decode_stamp
        except ImportError:  # pragma: no cover - the local package ships with us
            decode_stamp = None  # type: ignore[assignment]
        container = None
        stream = None
        start = 0.0
        last_thumb = -1.0
        try:
            for frame in self._frames():
                if self._stop.is_set():
                    break
                if container is None:
                    container = av.open(str(self._path), mode="w")
                    stream = container.add_stream("libx264", rate=30)
                    stream.width, stream.height = frame.width, frame.height
                    stream.pix_fmt = "yuv420p"
                    stream.codec_context.time_base = Fraction(1, 1000)
                    stream.options = {"preset": "veryfast", "crf": "23"}
                    start = frame.received_at
                assert stream is not None
                if self._stamped and decode_stamp is not None:
                    stamp = decode_stamp(frame.data, now=frame.received_at)
                    if stamp is not None:
                        self.latencies_ms.append(stamp.latency_ms(frame.received_at))
                t = frame.received_at - start
                if t - last_thumb >= 0.5:
                    last_thumb = t
                    thumb = Image.fromarray(frame.data[:, :, :3])
                    thumb.thumbnail((_TILE_WIDTH, _TILE_WIDTH))
                    self.thumbnails.append(thumb)
                out = av.VideoFrame.from_ndarray(frame.data[:, :, :3], format="rgb24")
                out.pts = int(t * 1000)
                out.time_base = Fraction(1, 1000)
                for packet in stream.encode(out):
                    container.mux(packet)
                self.frames += 1
            if container is not None and stream is not None:
                for packet in stream.encode():
                    container.mux(packet)
        except BaseException as exc:  # reported by run_demo
            self.error = exc
        finally:
            if container is not None:
                container.close()


def _contact_sheet(thumbnails: list[Any], path: Path) -> bool:
    from PIL import Image

    if not thumbnails:
        return False
    step = max(1, len(thumbnails) // _SHEET_TILES)
    tiles = thumbnails[::step][:_SHEET_TILES]
    w, h = tiles[0].size
    cols = min(_SHEET_COLUMNS, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * w, rows * h), (16, 16, 16))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * w, (i // cols) * h))
    sheet.save(path)
    return True


def run_demo(
    *,
    api_url: str | None,
    api_key: str | None,
    out_dir: Path,
    prompt: str,
    seconds: float,
    portrait: bool,
) -> int:
    """Run the demo; return a process exit code (0 = success).

    Blocking for about ``seconds`` plus connection time, caller's thread.
    Starts the embedded server unless ``api_url``/``api_key`` (or the
    ``ODYSSEY_API_URL``/``ODYSSEY_API_KEY`` environment variables) point to
    another one; connects, starts a stream with ``prompt``, sends the
    :data:`DEMO_INTERACTIONS` spread over the run, ends the stream and
    disconnects. Writes ``out_dir/demo.mp4`` and ``out_dir/contact_sheet.png``
    and prints what it measured. Errors are printed (never with secrets) and
    give exit code 1; bad arguments raise ``TypeError``/``ValueError``.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError("seconds must be a positive number")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    api_url = api_url or os.environ.get("ODYSSEY_API_URL") or None
    api_key = api_key or os.environ.get("ODYSSEY_API_KEY") or None
    with contextlib.ExitStack() as stack:
        local = api_url is None or api_key is None
        if local:
            from .local import LocalOdyssey

            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="odyssey-demo-"))
            server = stack.enter_context(
                LocalOdyssey(size=(640, 352), fps=30, data_dir=data_dir, recordings=False)
            )
            api_url, api_key = server.url, server.api_key
            print(f"embedded server: {api_url}")
        assert api_url is not None and api_key is not None
        return _stream(api_url, api_key, out_dir, prompt, float(seconds), portrait, local)
    return 1  # pragma: no cover - ExitStack never swallows; keeps mypy happy


def _stream(
    api_url: str, api_key: str, out_dir: Path, prompt: str, seconds: float, portrait: bool,
    stamped: bool,
) -> int:
    video_path = out_dir / "demo.mp4"
    sheet_path = out_dir / "contact_sheet.png"
    acks: list[str] = []
    try:
        with Odyssey(api_key, api_url=api_url) as client:
            began = time.monotonic()
            client.connect(
                on_status_change=_print_status,
                on_stream_error=lambda r, m: print(f"  stream error: {r}: {m}"),
            )
            print(f"connected in {time.monotonic() - began:.2f} s "
                  f"(session {client.current_session_id})")
            recorder = _Recorder(client, video_path, stamped=stamped)
            recorder.start()
            try:
                stream_id = client.start_stream(prompt, portrait=portrait)
                print(f"stream {stream_id}: {client.last_applied_prompt or prompt}")
                t0 = time.monotonic()
                slots = len(DEMO_INTERACTIONS) + 1
                for i, text in enumerate(DEMO_INTERACTIONS, start=1):
                    _sleep_until(t0 + seconds * i / slots)
                    acks.append(client.interact(text))
                    print(f"  interact → {acks[-1]}")
                _sleep_until(t0 + seconds)
                client.end_stream()
                stats = client.stats
            finally:
                recorder.stop()
        if recorder.error is not None:
            print(f"video writer failed: {type(recorder.error).__name__}: {recorder.error}")
            return 1
    except OdysseyError as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}")
        return 1
    sheet = _contact_sheet(recorder.thumbnails, sheet_path)
    print(f"frames: received {stats.received}, written {recorder.frames}, "
          f"dropped {stats.dropped}, {stats.fps:.1f} fps")
    print(f"conversion: p50 {stats.convert_us_p50:.0f} µs, p99 {stats.convert_us_p99:.0f} µs")
    if recorder.latencies_ms:
        lat = sorted(recorder.latencies_ms)
        print(f"latency (server send → client frame): p50 {lat[len(lat) // 2]:.1f} ms, "
              f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.1f} ms")
    print(f"wrote {video_path}" + (f" and {sheet_path}" if sheet else ""))
    return 0 if recorder.frames else 1


def _print_status(status: Any, message: str | None) -> None:
    print(f"  status: {status.value}" + (f" ({message})" if message else ""))


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
