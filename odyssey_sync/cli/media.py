"""Where received frames go: an MP4 file, an OpenCV window, a recording thread.

:class:`Mp4Writer` is the package's one MP4 encoder (the command line and the
demo both use it). :func:`pump_frames` feeds frames to sinks on the calling
thread; :class:`FrameRecorder` does the same on a helper thread while the
calling thread is busy elsewhere (``interact`` reads stdin, the demo sends
interactions).

Frames come from any object with the SDK's ``frames(timeout=...)`` iterator
(:class:`~odyssey_sync.Odyssey`, :class:`~odyssey_sync.SpectatorConnection`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import OdysseyConnectionError, OdysseyTimeoutError
from .output import UsageError

if TYPE_CHECKING:
    import numpy as np

    from .._frames import VideoFrame

__all__ = ["FrameRecorder", "FrameSource", "Mp4Writer", "Window", "pump_frames"]

#: Millisecond presentation clock of written files.
_TIME_BASE = Fraction(1, 1000)
#: Encoders tried in order; PyAV wheels ship libx264, other builds may not.
_CODECS = ("libx264", "h264", "mpeg4")


class FrameSource(Protocol):
    """Anything with the SDK's pull iterator (a client or a spectator)."""

    def frames(self, timeout: float | None = None) -> Iterator[VideoFrame]: ...


class Mp4Writer:
    """Encodes RGB frames into an MP4 file: H.264 when this PyAV has it, else MPEG-4 Part 2.

    Blocking; call from one thread at a time. The file is created at the first
    frame (its size fixes the video's size; an odd last row or column is
    cropped, as encoders want even sizes), so a run that received nothing
    leaves no empty file. Frames may arrive at an irregular rate: each frame's
    presentation time is the moment it was received (``at``, a
    ``time.monotonic()`` value; default: now), so the video plays back at the
    pace it was watched. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path, *, fps: float = 30.0) -> None:
        self.path = Path(path)
        self.fps = fps
        #: frames written so far
        self.frames = 0
        self._container: Any = None
        self._stream: Any = None
        self._t0: float | None = None
        self._last_pts = -1

    def _open(self, width: int, height: int) -> None:
        import av

        container = av.open(str(self.path), mode="w")
        stream: Any = None
        for codec in _CODECS:
            try:
                stream = container.add_stream(codec, rate=round(self.fps))
                break
            except (ValueError, av.FFmpegError):  # codec not built into this PyAV
                continue
        if stream is None:
            container.close()
            raise OSError(f"no MP4 video encoder in this PyAV build (tried {', '.join(_CODECS)})")
        stream.width = width - width % 2
        stream.height = height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = _TIME_BASE
        if stream.codec_context.name == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        self._container, self._stream = container, stream

    def write(self, rgb: np.ndarray, at: float | None = None) -> None:
        """Encode one H×W×3 (or ×4, alpha ignored) RGB ``uint8`` frame received at ``at``."""
        import av

        now = time.monotonic() if at is None else at
        if self._container is None:
            self._open(int(rgb.shape[1]), int(rgb.shape[0]))
            self._t0 = now
        assert self._t0 is not None
        w, h = self._stream.width, self._stream.height
        frame = av.VideoFrame.from_ndarray(rgb[:h, :w, :3], format="rgb24")
        # Strictly increasing, whatever the arrival times: muxers refuse equal pts.
        pts = max(int((now - self._t0) * 1000), self._last_pts + 1)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = _TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file. Blocking; idempotent."""
        container, self._container = self._container, None
        if container is None:
            return
        try:
            for packet in self._stream.encode(None):
                container.mux(packet)
        finally:
            container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Window:
    """An OpenCV window, or a :class:`UsageError` saying why there can be none.

    Checked before anything connects: OpenCV installed, a display, and an
    OpenCV build with GUI support (``opencv-python``, not ``-headless``).
    """

    def __init__(self, title: str) -> None:
        self.title = title
        try:
            import cv2
        except ImportError:
            raise UsageError("--show needs OpenCV: pip install opencv-python") from None
        headless = UsageError("--show needs OpenCV built with GUI support: pip uninstall "
                              "opencv-python-headless && pip install opencv-python")
        if re.search(r"^\s*GUI:\s*NONE\s*$", cv2.getBuildInformation(), re.MULTILINE):
            raise headless
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            # Checked before opening a window: some OpenCV GUI back-ends abort
            # the whole process when no display can be opened.
            raise UsageError("--show needs a display (DISPLAY is not set)")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise headless from None
        self._cv2 = cv2
        #: set when the user pressed q or Esc
        self.closed = False

    def show(self, rgb: np.ndarray) -> None:
        """Display one RGB frame and pump window events (non-blocking)."""
        cv2 = self._cv2
        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.closed = True

    def close(self) -> None:
        """Destroy the window (idempotent; the user may already have closed it)."""
        with contextlib.suppress(Exception):
            self._cv2.destroyWindow(self.title)


def pump_frames(
    source: FrameSource,
    seconds: float,
    writer: Mp4Writer | None,
    window: Window | None,
    *,
    stop: threading.Event | None = None,
    frame_timeout: float = 10.0,
) -> int:
    """Take each new frame of ``source`` for ``seconds``; return how many were seen.

    Blocking, calling thread. Frames go to the writer and/or the window; each
    frame's lease is released when the iterator advances. Ends early when
    ``stop`` is set, the window is closed, or the source ends (it disconnected:
    the caller tells a lost connection from an ended broadcast).

    Raises:
        OdysseyTimeoutError: no new frame within ``frame_timeout`` seconds.
    """
    seen = 0
    end = time.monotonic() + seconds
    for frame in source.frames(timeout=frame_timeout):
        seen += 1
        if writer is not None:
            writer.write(frame.data, frame.received_at)
        if window is not None:
            window.show(frame.data)
        if (
            time.monotonic() >= end
            or (stop is not None and stop.is_set())
            or (window is not None and window.closed)
        ):
            break
    return seen


class FrameRecorder:
    """Records every new frame of ``source`` on a named helper thread.

    Each frame goes to ``writer`` (if any) and then to ``on_frame`` (if any),
    both on the recorder's thread, in arrival order, none twice. Recording runs
    from :meth:`start` until :meth:`stop`, through quiet periods (no frame for
    a while is not an error here) and ends by itself when the source
    disconnects (:attr:`source_ended`). The frame passed to ``on_frame`` is a
    lease valid during the call only.
    """

    #: how often the thread looks at the stop flag while no frame arrives
    _POLL = 0.25

    def __init__(
        self,
        source: FrameSource,
        writer: Mp4Writer | None,
        *,
        on_frame: Callable[[VideoFrame], None] | None = None,
        name: str = "odyssey-cli-recorder",
    ) -> None:
        self._source = source
        self._writer = writer
        self._on_frame = on_frame
        self._stop = threading.Event()
        self._last_seq = -1
        #: frames handled so far
        self.frames = 0
        #: True once the source disconnected (its iterator ended)
        self.source_ended = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> FrameRecorder:
        """Start the thread (non-blocking); returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop recording and join the thread (blocking, at most ``timeout`` s).

        Raises:
            OdysseyTimeoutError: the thread did not finish within ``timeout``
                (an encoder stuck in a write).
            Exception: whatever the writer or ``on_frame`` raised on the thread.
        """
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise OdysseyTimeoutError(f"the recorder did not stop within {timeout:g} s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # A short per-frame timeout only so the stop flag is seen
                # during quiet periods; each new iterator starts at the newest
                # frame, which _take() skips when it was already handled.
                try:
                    for frame in self._source.frames(timeout=self._POLL):
                        self._take(frame)
                        if self._stop.is_set():
                            return
                except OdysseyTimeoutError:
                    continue
                except OdysseyConnectionError:  # not connected (any more)
                    pass
                self.source_ended = True
                return
        except BaseException as exc:  # re-raised by stop() on the caller's thread
            self._error = exc

    def _take(self, frame: VideoFrame) -> None:
        if frame.seq and frame.seq <= self._last_seq:
            return
        self._last_seq = frame.seq
        if self._writer is not None:
            self._writer.write(frame.data, frame.received_at)
        if self._on_frame is not None:
            self._on_frame(frame)
        self.frames += 1
