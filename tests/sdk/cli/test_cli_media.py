"""The MP4 writer and the recording thread, without a server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from odyssey_sync import OdysseyTimeoutError, VideoFrame
from odyssey_sync.cli.media import FrameRecorder, Mp4Writer


def picture(value: int, width: int = 64, height: int = 48) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def test_writer_encodes_frames_at_their_arrival_times(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    with Mp4Writer(path) as writer:
        for i in range(10):
            writer.write(picture(20 * i), at=100.0 + 0.1 * i)
        writer.write(picture(250), at=100.9)  # same instant as the last: still a frame
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert writer.frames == len(frames) == 11
    times = [float(f.time) for f in frames]
    assert times == sorted(times) and times[9] == pytest.approx(0.9, abs=0.002)
    assert frames[5].to_ndarray(format="rgb24").mean() == pytest.approx(100, abs=4)


def test_writer_crops_odd_sizes_and_leaves_no_file_without_frames(tmp_path: Path) -> None:
    empty = Mp4Writer(tmp_path / "empty.mp4")
    empty.close()
    empty.close()  # idempotent
    assert not (tmp_path / "empty.mp4").exists()
    with Mp4Writer(tmp_path / "odd.mp4") as writer:
        writer.write(picture(90, width=65, height=49))
        writer.write(np.full((49, 65, 4), 90, dtype=np.uint8))  # alpha dropped
    with av.open(str(tmp_path / "odd.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (64, 48)
        assert sum(1 for _ in container.decode(stream)) == 2


class FakeSource:
    """``frames()`` like the SDK's: newest first, a timeout per frame, ends on disconnect.

    Each call restarts at the newest published frame (which the recorder has
    usually seen already); the test publishes frames with :meth:`publish`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frames: list[VideoFrame] = []
        self.disconnected = False

    def publish(self, value: int) -> None:
        with self._cond:
            seq = len(self._frames) + 1
            self._frames.append(VideoFrame(picture(value), 64, 48, seq * 33, seq=seq))
            self._cond.notify_all()

    def disconnect(self) -> None:
        with self._cond:
            self.disconnected = True
            self._cond.notify_all()

    def frames(self, timeout: float | None = None) -> Iterator[VideoFrame]:
        last = len(self._frames) - 1 if self._frames else -1
        if last >= 0:
            yield self._frames[last]
        while True:
            with self._cond:
                newest_seen = last
                if not self._cond.wait_for(
                        lambda n=newest_seen: self.disconnected or len(self._frames) - 1 > n,
                        timeout):
                    raise OdysseyTimeoutError("no frame")
                if self.disconnected:
                    return
                last += 1
                frame = self._frames[last]
            yield frame


def test_recorder_takes_every_frame_once_through_quiet_periods() -> None:
    source = FakeSource()
    seen: list[int] = []
    got = threading.Event()

    def on_frame(frame: VideoFrame) -> None:
        seen.append(frame.seq)
        got.set()

    recorder = FrameRecorder(source, None, on_frame=on_frame).start()
    try:
        for value in range(3):
            source.publish(value)
        assert got.wait(5)
        time.sleep(0.6)  # quiet for longer than the recorder's poll
        source.publish(9)
        time.sleep(0.6)
    finally:
        recorder.stop()
    assert seen == sorted(set(seen)) and seen[-1] == 4
    assert recorder.frames == len(seen) and not recorder.source_ended


def test_recorder_ends_with_the_source_and_reraises_errors() -> None:
    source = FakeSource()
    source.publish(1)
    recorder = FrameRecorder(source, None).start()
    source.disconnect()
    recorder.stop()
    assert recorder.source_ended

    def broken(frame: VideoFrame) -> None:
        raise RuntimeError("sink failed")

    busy = FakeSource()
    busy.publish(1)
    failing = FrameRecorder(busy, None, on_frame=broken).start()
    with pytest.raises(RuntimeError, match="sink failed"):
        failing.stop()


def test_stop_without_start_is_harmless() -> None:
    FrameRecorder(FakeSource(), None).stop()
