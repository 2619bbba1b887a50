"""Fails loudly when a new aiortc release moves the seam the low-latency buffer uses.

``odyssey_sync._jitter`` swaps the video ``RTCRtpReceiver``'s private jitter
buffer for a subclass and, when one packet completes several frames, queues
frames to the receiver's decoder the way ``_handle_rtp_packet`` does. Each
name, signature and behaviour it relies on is pinned here. If one of these
tests fails after an aiortc upgrade, re-read aiortc's ``jitterbuffer.py`` and
``rtcrtpreceiver.py`` before widening the version pin.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
from typing import Any

import aiortc
import pytest
from aiortc.codecs import depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from odyssey_sync import _jitter
from odyssey_sync._jitter import (
    LowLatencyJitterBuffer,
    apply_low_latency,
    low_latency_stats,
    low_latency_supported,
)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


class StubTransport:
    """Enough of an RTCDtlsTransport for RTCRtpReceiver.__init__."""

    state = "new"


def make_receiver(kind: str = "video") -> RTCRtpReceiver:
    return RTCRtpReceiver(kind, StubTransport())  # type: ignore[arg-type]


def private(receiver: RTCRtpReceiver, name: str) -> Any:
    """A name-mangled private attribute of RTCRtpReceiver (the seam under test)."""
    return getattr(receiver, f"_RTCRtpReceiver__{name}")


def set_private(receiver: RTCRtpReceiver, name: str, value: Any) -> None:
    setattr(receiver, f"_RTCRtpReceiver__{name}", value)


def params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def vp8_packet(seq: int, ts: int, first: bool, marker: bool) -> RtpPacket:
    payload = bytes([0x10 if first else 0x00]) + bytes([seq & 0xFF]) * 8
    return RtpPacket(
        payload_type=96, marker=int(marker), sequence_number=seq, timestamp=ts, payload=payload
    )


# --- the version and the names we rely on ---------------------------------------------------


def test_aiortc_version_is_one_we_tested() -> None:
    major, minor = (int(x) for x in aiortc.__version__.split(".")[:2])
    assert (1, 9) <= (major, minor) < (1, 17), (
        f"aiortc {aiortc.__version__} is outside the range the low-latency jitter seam was "
        "verified for (>=1.9,<1.17): run this file, then update pyproject.toml"
    )


def test_jitter_buffer_methods_and_signatures() -> None:
    assert params(JitterBuffer.__init__) == ["self", "capacity", "prefetch", "is_video"]
    assert inspect.signature(JitterBuffer.__init__).parameters["prefetch"].default == 0
    assert inspect.signature(JitterBuffer.__init__).parameters["is_video"].default is False
    assert params(JitterBuffer.add) == ["self", "packet"]
    assert params(JitterBuffer._remove_frame) == ["self", "sequence_number"]
    assert params(JitterBuffer.remove) == ["self", "count"]
    assert params(JitterBuffer.smart_remove) == ["self", "count"]
    assert isinstance(inspect.getattr_static(JitterBuffer, "capacity"), property)
    assert params(JitterFrame.__init__) == ["self", "data", "timestamp"]


def test_jitter_buffer_instance_state() -> None:
    buffer = JitterBuffer(capacity=8, is_video=True)
    assert buffer._origin is None
    assert buffer._packets == [None] * 8
    assert (buffer._capacity, buffer._prefetch, buffer._is_video) == (8, 0, True)


def test_add_places_packet_then_asks_remove_frame() -> None:
    """The stock add() calls self._remove_frame after storing: our hook point."""
    calls: list[int] = []

    class Probe(JitterBuffer):  # type: ignore[misc]
        def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
            calls.append(sequence_number)
            assert self._packets[sequence_number % self._capacity] is not None
            return None

    probe = Probe(capacity=8, is_video=True)
    assert probe.add(vp8_packet(5, 0, True, True)) == (False, None)
    assert calls == [5]


def test_stock_reset_and_overflow_go_through_remove_and_smart_remove() -> None:
    calls: list[str] = []

    class Probe(JitterBuffer):  # type: ignore[misc]
        def remove(self, count: int) -> None:
            calls.append(f"remove {count}")
            super().remove(count)

        def smart_remove(self, count: int) -> bool:
            calls.append("smart_remove")
            return bool(super().smart_remove(count))

    probe = Probe(capacity=8, is_video=True)
    probe.add(vp8_packet(100, 0, True, False))
    pli, _ = probe.add(vp8_packet(110, 0, False, False))  # beyond capacity: overflow
    assert pli and "smart_remove" in calls
    calls.clear()
    assert probe._origin is not None
    back = (probe._origin - 200) & 0xFFFF  # far behind the origin: a restarted sender
    pli, _ = probe.add(vp8_packet(back, 9, True, False))  # reset
    assert pli and calls == ["remove 8"]


def test_receiver_private_attributes() -> None:
    video, audio = make_receiver("video"), make_receiver("audio")
    buffer = private(video, "jitter_buffer")
    assert type(buffer) is JitterBuffer
    assert buffer._is_video is True and buffer._prefetch == 0
    assert private(audio, "jitter_buffer")._is_video is False
    assert isinstance(private(video, "codecs"), dict)
    assert isinstance(private(video, "decoder_queue"), queue.Queue)
    assert callable(private(video, "timestamp_mapper").map)
    assert private(video, "decoder_thread") is None
    assert params(RTCRtpReceiver._handle_rtp_packet) == ["self", "packet", "arrival_time_ms"]
    assert inspect.iscoroutinefunction(RTCRtpReceiver._handle_rtp_packet)


def test_supported_on_this_install() -> None:
    assert _jitter._seam_problems() == []
    assert low_latency_supported() is True


def test_probe_notices_a_changed_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    def renamed(self: JitterBuffer, seq: int) -> None:
        return None

    monkeypatch.setattr(JitterBuffer, "_remove_frame", renamed)
    assert any("_remove_frame" in p for p in _jitter._seam_problems())
    monkeypatch.delattr(JitterBuffer, "smart_remove")
    assert any("smart_remove" in p for p in _jitter._seam_problems())


def test_apply_raises_runtime_error_when_seam_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jitter, "_cached_problems", lambda: ("JitterBuffer.add is missing",))
    with pytest.raises(RuntimeError, match=r"JitterBuffer\.add is missing"):
        apply_low_latency(make_receiver())


# --- apply_low_latency on a real receiver ---------------------------------------------------


def test_apply_installs_our_buffer_idempotently() -> None:
    receiver = make_receiver()
    assert low_latency_stats(receiver) is None
    stock = private(receiver, "jitter_buffer")
    apply_low_latency(receiver)
    buffer = private(receiver, "jitter_buffer")
    assert isinstance(buffer, LowLatencyJitterBuffer)
    # Same geometry as aiortc chose (512 packets since 1.16, 128 before).
    assert buffer.capacity == stock.capacity and buffer._prefetch == 0 and buffer._is_video
    apply_low_latency(receiver)
    assert private(receiver, "jitter_buffer") is buffer
    assert low_latency_stats(receiver) == buffer.stats


def test_apply_is_a_noop_for_audio() -> None:
    receiver = make_receiver("audio")
    before = private(receiver, "jitter_buffer")
    apply_low_latency(receiver)
    assert private(receiver, "jitter_buffer") is before
    assert low_latency_stats(receiver) is None


def test_apply_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="RTCRtpReceiver"):
        apply_low_latency(object())  # type: ignore[arg-type]


def test_apply_carries_over_buffered_packets() -> None:
    receiver = make_receiver()
    stock = private(receiver, "jitter_buffer")
    packet = vp8_packet(7, 0, True, False)
    packet._data = b"x"  # type: ignore[attr-defined]
    stock.add(packet)
    apply_low_latency(receiver)
    ours = private(receiver, "jitter_buffer")
    assert ours._origin == 7 and ours._packets[7] is packet


def _drain(q: queue.Queue[Any]) -> list[Any]:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


def _feed(receiver: RTCRtpReceiver, packets: list[RtpPacket]) -> None:
    async def go() -> None:
        for packet in packets:
            await receiver._handle_rtp_packet(packet, arrival_time_ms=0)

    asyncio.run(go())


@pytest.mark.parametrize("low_latency", [True, False])
def test_receiver_feeds_decoder_through_our_buffer(low_latency: bool) -> None:
    """End to end through RTCRtpReceiver._handle_rtp_packet, no network.

    The receiver's codec map is filled and a stand-in for its decoder thread
    set, as receive() would; frames are read back from its decoder queue.
    """
    receiver = make_receiver()
    private(receiver, "codecs")[96] = VP8
    if low_latency:
        apply_low_latency(receiver)
    set_private(receiver, "decoder_thread", object())  # "running"
    try:
        # Three single-packet frames, then a two-packet frame whose first packet
        # is late: it arrives after a single-packet frame that follows it, so
        # one packet completes two frames.
        p = [vp8_packet(100 + i, 3000 * i, True, True) for i in range(3)]
        f3a, f3b = vp8_packet(103, 9000, True, False), vp8_packet(104, 9000, False, True)
        f4 = vp8_packet(105, 12000, True, True)
        _feed(receiver, [*p, f3b, f4, f3a])
        queued = _drain(private(receiver, "decoder_queue"))
    finally:
        set_private(receiver, "decoder_thread", None)

    assert all(codec is VP8 for codec, _ in queued)
    timestamps = [frame.timestamp for _, frame in queued]
    if low_latency:
        # All five frames, in order, timestamps mapped from the first one.
        assert timestamps == [0, 3000, 6000, 9000, 12000]
        assert queued[3][1].data == depayload(VP8, f3a.payload) + depayload(VP8, f3b.payload)
        stats = low_latency_stats(receiver)
        assert stats is not None
        assert stats.frames_on_marker == 5 and stats.frames_batched == 1
    else:
        # Stock: each frame waits for the next one; the backlog is not drained.
        assert timestamps == [0, 3000, 6000]
