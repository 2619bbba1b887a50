"""End to end on loopback: plain aiortc sender → aiortc receiver with/without our buffer.

Two RTCPeerConnections in one event loop (host candidates only), a sender
track of stamped 320×176 frames at 30 fps, deterministic loss/reorder on the
sender (the local server's ``RtpFaultSeam``). The sender's media packets and
the receiver's decoder input are tapped, so "complete" is checked exactly:
every encoded frame the decoder gets is byte-for-byte one the sender sent.

No timing assertions: the latencies are printed (``pytest -s``); the
qualitative property asserted is the buffer's own count of frames released
at their marker packet, i.e. before any packet of the next frame arrived.
"""

from __future__ import annotations

import asyncio
import logging
import statistics

import pytest
from aiortc.jitterbuffer import JitterBuffer

from tests.loopback import Received, run_loopback

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

FRAMES = 45


def stream(codec: str, low_latency: bool, drop_every: int = 0, reorder_every: int = 0) -> Received:
    got = asyncio.run(
        run_loopback(
            codec=codec,
            frames=FRAMES,
            low_latency=low_latency,
            drop_every=drop_every,
            reorder_every=reorder_every,
            timeout=20.0,
            inspect=True,
        )
    )
    lat = got.latency_ms[5:]
    median = statistics.median(lat) if lat else float("nan")
    print(
        f"\n{codec} low_latency={low_latency} drop_every={drop_every} "
        f"reorder_every={reorder_every}: {len(got.frames)} frames, latency median "
        f"{median:.1f} ms, seam dropped {got.dropped_by_seam} swapped {got.swapped_by_seam}, "
        f"stats {got.stats}"
    )
    return got


def check_delivery(got: Received, codec: str) -> list[int]:
    """In order, never twice, never incomplete, and the stream reached its end.

    Returns the positions (in sending order) of the frames the decoder got.
    """
    sent = got.sent_frames(codec)
    position = {data: i for i, data in enumerate(sent)}
    assert len(position) == len(sent), "two sent frames with identical bytes"
    assert got.decoder_input, "the decoder got nothing"
    indexes = []
    for data in got.decoder_input:
        # Complete: byte-identical to one whole frame the sender sent.
        assert data in position, "the decoder was handed a frame the sender never sent whole"
        indexes.append(position[data])
    # In order and never twice.
    assert indexes == sorted(set(indexes))
    # Decoded pictures: in order, never twice, every one whole; the last one arrived.
    assert got.frames == sorted(set(got.frames))
    assert got.broken == 0
    assert got.frames[-1] >= FRAMES - 1  # (the sender goes on past FRAMES)
    # A few stamps may be unreadable (a VP8 encoder artefact, seen with either
    # buffer); most must be read.
    assert len(got.frames) >= FRAMES // 2
    return indexes


@pytest.fixture
def no_decode_errors(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="aiortc.rtcrtpreceiver")
    return caplog


def assert_no_decode_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r.getMessage() for r in caplog.records if "failed to decode" in r.getMessage()]
    assert errors == []


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_clean_link_frames_released_at_marker(
    codec: str, no_decode_errors: pytest.LogCaptureFixture
) -> None:
    got = stream(codec, low_latency=True)
    check_delivery(got, codec)
    assert_no_decode_errors(no_decode_errors)
    stats = got.stats
    assert stats is not None, "the receiver does not use the low-latency buffer"
    # On a clean link every frame but possibly the very first (H.264: no known
    # boundary yet) is released at its own marker packet, not one frame later.
    assert stats.frames_on_timestamp <= 1
    assert stats.frames_on_marker >= len(got.decoder_input) - 1
    assert stats.frames_dropped_incomplete == 0


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_loss_and_reorder_recovered(codec: str, no_decode_errors: pytest.LogCaptureFixture) -> None:
    got = stream(codec, low_latency=True, drop_every=9, reorder_every=5)
    assert got.dropped_by_seam > 0 and got.swapped_by_seam > 0
    indexes = check_delivery(got, codec)
    # On loopback NACK brings every lost packet back: no frame is skipped.
    assert indexes == list(range(len(indexes)))
    assert_no_decode_errors(no_decode_errors)
    stats = got.stats
    assert stats is not None
    # Lost packets come back by NACK (or the stream restarts on a keyframe):
    # most frames still go out at their marker.
    assert stats.frames_on_marker >= len(got.decoder_input) // 2


def test_low_latency_off_keeps_stock_behaviour() -> None:
    got = stream("VP8", low_latency=False, drop_every=9, reorder_every=5)
    assert got.stats is None and got.stock_buffer
    check_delivery(got, "VP8")


def test_stock_buffer_class_is_untouched_by_other_receivers() -> None:
    # apply_low_latency replaces one receiver's instance attribute only.
    assert JitterBuffer.__module__ == "aiortc.jitterbuffer"
    assert JitterBuffer.__name__ == "JitterBuffer"
    got = stream("H264", low_latency=False)
    assert got.stock_buffer
    check_delivery(got, "H264")
