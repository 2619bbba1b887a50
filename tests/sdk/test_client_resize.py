"""End to end: the client and a spectator deliver frames resized (and cropped) in the
conversion pass, against the embedded server over real sockets.

``Odyssey(..., frame_size=, resize=, crop=)`` and ``connect_to_stream(..., frame_size=,
resize=, crop=)`` build a ``FrameGeometry`` (validated before any network call) and give
it to their ``FrameRing``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from odyssey_sync.client import Odyssey
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.spectator import connect_to_stream

pytestmark = pytest.mark.e2e

SOURCE = (320, 176)


def assert_picture(data: Any, width: int, height: int) -> None:
    """A real picture of the output size: right shape, read-only, not blank."""
    assert data.shape == (height, width, 3) and data.dtype == np.uint8
    assert not data.flags.writeable
    assert float(data.std()) > 1.0, "resized frame is blank"


@pytest.mark.parametrize(("frame_size", "resize", "crop"), [
    ((84, 84), "area", None),
    ((84, 84), "bilinear", (72, 0, 176, 176)),  # centre square
    ((48, 30), "area", (10, 6, 300, 170)),
])
def test_client_delivers_frames_at_the_requested_size(
    server: LocalOdyssey, frame_size: tuple[int, int], resize: str,
    crop: tuple[int, int, int, int] | None,
) -> None:
    seen: list[tuple[int, int, int, int]] = []
    got_callback = threading.Event()

    def on_frame(frame: Any) -> None:
        seen.append((frame.width, frame.height, frame.source_width, frame.source_height))
        assert_picture(frame.data, *frame_size)
        got_callback.set()

    with Odyssey(server.api_key, api_url=server.url, connect_timeout=20,
                 frame_size=frame_size, resize=resize, crop=crop) as client:
        client.connect(on_video_frame=on_frame)
        client.start_stream("a lighthouse at dusk", portrait=False)
        with client.get_latest_frame(timeout=10) as frame:
            assert (frame.width, frame.height) == frame_size
            assert (frame.source_width, frame.source_height) == SOURCE
            assert_picture(frame.data, *frame_size)
            kept = frame.copy()
        assert (kept.width, kept.source_width) == (frame_size[0], SOURCE[0])
        for pulled, frame in enumerate(client.frames(timeout=10), start=1):
            assert frame.data.shape == (frame_size[1], frame_size[0], 3)
            if pulled == 3:
                break
        assert got_callback.wait(10), "on_video_frame never ran"
        client.end_stream()
    assert seen and all(s == (*frame_size, *SOURCE) for s in seen)


def test_full_size_stays_the_default(server: LocalOdyssey) -> None:
    with Odyssey(server.api_key, api_url=server.url, connect_timeout=20) as client:
        client.connect()
        client.start_stream("a lighthouse at dusk", portrait=False)
        with client.get_latest_frame(timeout=10) as frame:
            assert (frame.width, frame.height) == SOURCE
            assert (frame.source_width, frame.source_height) == SOURCE


@pytest.mark.parametrize(("kwargs", "exc"), [
    ({"frame_size": (1, 84)}, ValueError),
    ({"frame_size": "84x84"}, TypeError),
    ({"frame_size": (84, 84), "resize": "cubic"}, ValueError),
    ({"crop": (-2, 0, 64, 64)}, ValueError),
])
def test_bad_geometry_is_rejected_before_any_network_call(kwargs: dict[str, Any],
                                                          exc: type[Exception]) -> None:
    # Nothing listens on port 9: a network call would fail with a connection error,
    # so getting the argument error proves validation came first.
    with pytest.raises(exc), Odyssey("ody_test_key_not_used", api_url="http://127.0.0.1:9",
                 connect_timeout=2, **kwargs) as client:
        client.connect()


def test_spectator_receives_frames_at_the_requested_size(
        server: LocalOdyssey) -> None:
    ready = threading.Event()
    infos: list[Any] = []

    def on_broadcast_ready(info: Any) -> None:
        infos.append(info)
        ready.set()

    with Odyssey(server.api_key, api_url=server.url, connect_timeout=20) as owner:
        owner.connect(on_broadcast_ready=on_broadcast_ready)
        owner.start_stream("A harbour at dawn", portrait=False, broadcast=True)
        assert ready.wait(15), "no broadcast_ready"
        info = infos[0]
        with connect_to_stream(info.webrtc_url, info.spectator_token, timeout=15,
                               frame_size=(84, 84), resize="area",
                               crop=(72, 0, 176, 176)) as spectator, \
                spectator.get_latest_frame(timeout=10) as frame:
            assert (frame.width, frame.height) == (84, 84)
            assert (frame.source_width, frame.source_height) == SOURCE
            assert_picture(frame.data, 84, 84)
        with pytest.raises(ValueError):
            connect_to_stream(info.webrtc_url, info.spectator_token, timeout=15,
                              frame_size=(84, 84), resize="nearest")
