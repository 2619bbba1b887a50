"""Recordings and simulation outputs: the world rendered to MP4 files.

Because :class:`~odyssey_sync.local.render.world.World` is deterministic, the local
server does not keep the live encoder's output: when a stream ends it renders
the recording again from the stream's event log (prompt, input image,
interactions with their frame numbers, frame count). Every frame carries the
same stamp layout as the live stream, with ``sent_at = stamp_origin +
frame / fps``, so a test can decode a recording and compare it frame by
frame with what it received.

Everything here is blocking and CPU-bound (≈ real time ÷ 5 at 1280×704 on
this machine, see the README (The world, frame stamps and recordings)): the server runs it in an
executor, never on its event loop. Files appear atomically: each output is
written to a temporary file in the target directory and renamed on success,
and nothing is left behind on failure.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from .world import World

__all__ = [
    "PART_SUFFIX",
    "RenderedMedia",
    "decode_data_url",
    "decode_image",
    "render_recording",
    "render_script",
]

#: suffix of the temporary files a render writes before renaming them into
#: place; a file with it is what a killed server left behind
PART_SUFFIX = ".part"

# Preview clip: the first few seconds, small, for list views.
_PREVIEW_SECONDS = 5.0
_PREVIEW_MAX_WIDTH = 320
# Decoded images larger than this are refused (decompression bombs): 64 Mpx is
# far above the 1280×704 frames the service works with.
_MAX_IMAGE_PIXELS = 64_000_000


@dataclass(frozen=True)
class RenderedMedia:
    """What a render produced: the numbers the Recording object reports."""

    frame_count: int
    duration_seconds: float
    width: int
    height: int
    #: a JPEG of frame 0 was written to ``thumbnail_path``
    has_thumbnail: bool = False
    #: a short small MP4 was written to ``preview_path``
    has_preview: bool = False


def decode_image(data: bytes | bytearray | memoryview) -> npt.NDArray[np.uint8]:
    """Decode image file bytes (JPEG, PNG, WebP, GIF, BMP…) to an H×W×3 uint8 RGB array.

    Blocking (CPU only), any thread. EXIF orientation is applied; alpha is
    dropped; an animated image yields its first frame. Raises ``TypeError``
    for non-bytes input and ``ValueError`` when the bytes are not a decodable
    image or exceed 64 megapixels.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if not data:
        raise ValueError("image data is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as img:
                if img.width * img.height > _MAX_IMAGE_PIXELS:
                    raise ValueError(f"image too large: {img.width}x{img.height} pixels")
                upright = ImageOps.exif_transpose(img)
                rgb = (upright if upright is not None else img).convert("RGB")
                out: npt.NDArray[np.uint8] = np.array(rgb, dtype=np.uint8)
    except ValueError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,  # some Pillow plugins signal corrupt headers this way
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise ValueError(f"not a decodable image: {exc}") from exc
    return out


def _rate(fps: float) -> Fraction:
    # 30 → 30/1, 29.97 → 30000/1001: a small exact rational for the MP4 time base.
    return Fraction(fps).limit_denominator(1001)


def _check_common(width: int, height: int, fps: float) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be int, not {type(value).__name__}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)):
        raise TypeError(f"fps must be a number, not {type(fps).__name__}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be positive and finite, got {fps}")


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[Path]:
    """A temp file next to ``path``, renamed onto it if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PART_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _open_h264(
    target: Path, width: int, height: int, rate: Fraction, *, crf: int
) -> tuple[Any, Any]:
    container = av.open(str(target), mode="w", format="mp4", options={"movflags": "+faststart"})
    try:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = 1 / rate
        stream.codec_context.time_base = 1 / rate
        # Two encoder threads at most: the server renders recordings while it
        # streams, on a machine with few cores.
        stream.codec_context.thread_count = 2
        stream.codec_context.options = {"preset": "veryfast", "crf": str(crf)}
        stream.codec_context.gop_size = max(1, round(float(rate) * 2))
    except BaseException:
        container.close()
        raise
    return container, stream


def render_recording(
    path: Path,
    *,
    width: int,
    height: int,
    fps: float,
    prompt: str,
    image: np.ndarray | None,
    interactions: Sequence[tuple[int, str]],
    frame_count: int,
    stamp_origin: float = 0.0,
    thumbnail_path: Path | None = None,
    preview_path: Path | None = None,
) -> RenderedMedia:
    """Render frames ``0 … frame_count-1`` of a world to an H.264 MP4 at ``path``.

    Blocking and CPU-bound (run it in an executor); any thread. The world is
    ``World(width, height, prompt, image, fps=fps)`` with every
    ``(frame, prompt)`` of ``interactions`` applied; frame ``i`` is stamped
    with ``(i, stamp_origin + i / fps)`` and has ``pts = i`` in time base
    ``1/fps``. The MP4 (yuv420p, ``+faststart``) appears atomically. With
    ``thumbnail_path`` a JPEG of frame 0 is written, with ``preview_path`` a
    small MP4 of the first 5 seconds (at most 320 pixels wide).

    Returns a :class:`RenderedMedia`. Raises ``TypeError``/``ValueError`` for
    bad arguments (``frame_count`` must be ≥ 1) and ``OSError`` when a file
    cannot be written; partial files are removed.
    """
    _check_common(width, height, fps)
    if isinstance(frame_count, bool) or not isinstance(frame_count, int):
        raise TypeError(f"frame_count must be int, not {type(frame_count).__name__}")
    if frame_count < 1:
        raise ValueError(f"frame_count must be >= 1, got {frame_count}")
    stamp_origin = float(stamp_origin)
    world = World(width, height, prompt, image, fps=fps)
    for item in interactions:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"interactions must be (frame, prompt) pairs, got {item!r}")
        world.interact(item[1], item[0])

    path = Path(path)
    rate = _rate(fps)
    preview_frames = min(frame_count, max(1, round(fps * _PREVIEW_SECONDS)))
    pw = min(_PREVIEW_MAX_WIDTH, width) // 2 * 2
    ph = max(2, round(height * pw / width) // 2 * 2)

    with contextlib.ExitStack() as stack:
        video_tmp = stack.enter_context(_atomic_output(path))
        container, stream = _open_h264(video_tmp, width, height, rate, crf=20)
        stack.callback(container.close)
        preview: tuple[Any, Any] | None = None
        if preview_path is not None:
            preview_tmp = stack.enter_context(_atomic_output(Path(preview_path)))
            preview = _open_h264(preview_tmp, pw, ph, rate, crf=28)
            stack.callback(preview[0].close)
        thumb_tmp = (
            stack.enter_context(_atomic_output(Path(thumbnail_path)))
            if thumbnail_path is not None
            else None
        )

        # Frames are timed in the codec's 1/fps; PyAV rescales packets to whatever
        # time base the MP4 muxer picked for the stream.
        tb = 1 / rate
        for i in range(frame_count):
            frame = world.video_frame(i, stamp_origin + i / fps)
            frame.pts = i
            frame.time_base = tb
            for packet in stream.encode(frame):
                container.mux(packet)
            if i == 0 and thumb_tmp is not None:
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(
                    thumb_tmp, format="JPEG", quality=85
                )
            if preview is not None and i < preview_frames:
                small = frame.reformat(width=pw, height=ph)
                small.pts = i
                small.time_base = tb
                for packet in preview[1].encode(small):
                    preview[0].mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if preview is not None:
            for packet in preview[1].encode(None):
                preview[0].mux(packet)
        # Close explicitly (writes the moov atom) before the temp files are renamed;
        # the ExitStack's close callbacks then find them closed already.
        container.close()
        if preview is not None:
            preview[0].close()

    return RenderedMedia(
        frame_count=frame_count,
        duration_seconds=frame_count / fps,
        width=width,
        height=height,
        has_thumbnail=thumbnail_path is not None,
        has_preview=preview_path is not None,
    )


def decode_data_url(url: str, *, field: str = "image") -> tuple[bytes, npt.NDArray[np.uint8]]:
    """``(file bytes, H×W×3 RGB picture)`` of a ``data:<mime>;base64,<...>`` URL.

    The one data-URL decoder of the server (live starts and simulation
    scripts). Blocking, CPU-bound (base64 + image decode of up to 25 MiB):
    run it in an executor. Raises ``ValueError`` naming ``field`` for anything
    unusable (not a base64 data URL, empty, not a decodable image).
    """
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ValueError(f"{field} must be a data: URL")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValueError(f"{field} must be a base64 data: URL")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not valid base64") from None
    if not data:
        raise ValueError(f"{field} is empty")
    try:
        picture = decode_image(data)
    except ValueError:
        raise ValueError(f"{field} could not be decoded as an image") from None
    return data, np.ascontiguousarray(picture, dtype=np.uint8)


def render_script(
    path: Path,
    *,
    width: int,
    height: int,
    fps: float,
    script: Sequence[Mapping[str, Any]],
    image: np.ndarray | None = None,
    **kw: Any,
) -> RenderedMedia:
    """Render a simulation script to an MP4 (see :func:`render_recording`).

    Blocking and CPU-bound. ``script`` is an already validated list of
    ``{"timestamp_ms": t, "start"|"interact"|"end": {...}}`` entries: the
    ``start`` prompt begins the world, each ``interact`` takes effect at
    frame ``round(t * fps / 1000)``, and the ``end`` timestamp ``T`` gives
    ``round(T * fps / 1000)`` frames (at least one). ``image`` (H×W×3 uint8)
    is the start picture; when it is None, a ``start.image`` data URL in the
    script is decoded instead. ``kw`` is passed on (``stamp_origin``,
    ``thumbnail_path``, ``preview_path``).

    Raises ``ValueError`` for a script without ``start`` or ``end`` (defence
    in depth; the HTTP layer validates first), plus what
    :func:`render_recording` raises.
    """
    _check_common(width, height, fps)
    if isinstance(script, (str, bytes)) or not isinstance(script, Sequence):
        raise TypeError("script must be a sequence of entries")
    prompt: str | None = None
    end_ms: float | None = None
    interactions: list[tuple[int, str]] = []
    for index, entry in enumerate(script):
        if not isinstance(entry, Mapping):
            raise TypeError(f"script entry {index} must be a mapping")
        t = entry.get("timestamp_ms")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise ValueError(f"script entry {index} has no valid timestamp_ms")
        frame = round(t * fps / 1000.0)
        if "start" in entry:
            start = entry["start"] or {}
            prompt = str(start.get("prompt", ""))
            if image is None and start.get("image"):
                image = decode_data_url(start["image"], field="script start.image")[1]
        elif "interact" in entry:
            body = entry["interact"] or {}
            interactions.append((frame, str(body.get("prompt", ""))))
        elif "end" in entry:
            end_ms = float(t)
    if prompt is None:
        raise ValueError("script has no start entry")
    if end_ms is None:
        raise ValueError("script has no end entry")
    frame_count = max(1, round(end_ms * fps / 1000.0))
    return render_recording(
        path,
        width=width,
        height=height,
        fps=fps,
        prompt=prompt,
        image=image,
        interactions=[(f, p) for f, p in interactions if f < frame_count],
        frame_count=frame_count,
        **kw,
    )
