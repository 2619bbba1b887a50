"""The low-latency receive path end to end: the Odyssey client against the local
server over a lossy, reordering link (the server's RTP fault switches).

Unit-level and packet-level checks live in tests/test_jitter*.py; here the
whole product runs: server encoder → RTP with deterministic loss and reorder →
our receiver (with and without ``low_latency``) → decoder → ring → frames().
No timing assertions: order, uniqueness, stamp integrity and recovery counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from odyssey_sync.client import Odyssey
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.local.render.stamp import decode_stamp

pytestmark = pytest.mark.e2e

FRAMES = 45


def stream_frames(server: LocalOdyssey, *, low_latency: bool) -> tuple[list[int], int]:
    """Stamp numbers of the frames pulled during one stream, and frames received."""
    stamps: list[int] = []
    with Odyssey(server.api_key, api_url=server.url, low_latency=low_latency,
                 connect_timeout=20) as client:
        client.connect()
        client.start_stream("a lossy harbour", portrait=False)
        frames = client.frames(timeout=10)
        for frame in frames:
            stamp = decode_stamp(frame.data)
            assert stamp is not None, "a delivered frame's stamp did not decode (broken frame?)"
            if is_idle_picture(frame.data):
                # Idle frames still in flight when the stream started; they have
                # their own numbering.
                assert not stamps, "idle picture after the stream's frames"
                continue
            stamps.append(stamp.frame)
            if len(stamps) >= FRAMES:
                break
        received = client.stats.received
        session_id = client.current_session_id
        assert session_id is not None
        streamer = server.realtime.streamer(session_id)
        assert streamer is not None and streamer.rtp_seam is not None
        # The link really was lossy and reordering during this stream.
        assert streamer.rtp_seam.dropped > 0 and streamer.rtp_seam.swapped > 0
        client.end_stream()
    return stamps, received


def is_idle_picture(rgb: np.ndarray) -> bool:
    """The server's idle picture is flat grey below the stamp band; worlds never are."""
    return float(rgb[rgb.shape[0] // 2:].std()) < 4.0


@pytest.fixture(params=["vp8", "h264"])
def lossy_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalOdyssey]:
    with LocalOdyssey(size=(320, 176), fps=30, codec=request.param, recordings=False,
                      data_dir=tmp_path) as server:
        # Every 9th video RTP packet dropped (NACK must bring it back) and every
        # 5th pair swapped (the buffer must reorder inside a frame).
        server.faults.set(drop_every=9, reorder_every=5)
        yield server


@pytest.mark.parametrize("low_latency", [True, False], ids=["low_latency", "stock"])
def test_lossy_link_frames_in_order_never_twice_and_recovered(
    lossy_server: LocalOdyssey, low_latency: bool
) -> None:
    stamps, received = stream_frames(lossy_server, low_latency=low_latency)
    assert len(stamps) >= FRAMES // 2
    # In order and never twice (frames() may skip frames, never repeat or go back).
    assert stamps == sorted(set(stamps)), stamps
    # Loss is recovered (NACK) or resynchronised (PLI): the stream keeps flowing,
    # most frames of the span reach the ring.
    span = stamps[-1] - stamps[0] + 1
    assert received >= span // 2, (received, span)
