"""Unit tests of the low-latency jitter buffer on synthetic RTP packet sequences.

Every scenario runs the same packets through aiortc's stock buffer and ours:
ours must release the same complete frames in the same order, only earlier
(at the marker packet instead of at the next frame's first packet).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from aiortc.codecs import depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from odyssey_sync._jitter import LowLatencyJitterBuffer

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
OTHER = RTCRtpCodecParameters(mimeType="video/VP9", clockRate=90000, payloadType=98)
CODECS = {c.payloadType: c for c in (VP8, H264, OTHER)}
TS_STEP = 3000  # 30 fps at 90 kHz


def codec_of(payload_type: int) -> str | None:
    codec = CODECS.get(payload_type)
    return codec.name if codec is not None else None


# --- building packets -------------------------------------------------------


@dataclass
class Frame:
    timestamp: int
    packets: list[RtpPacket] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(p._data for p in self.packets)  # type: ignore[attr-defined]


def _packet(
    codec: RTCRtpCodecParameters, seq: int, ts: int, payload: bytes, marker: bool
) -> RtpPacket:
    assert codec.payloadType is not None
    packet = RtpPacket(
        payload_type=codec.payloadType,
        marker=int(marker),
        sequence_number=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=1234,
        payload=payload,
    )
    # What RTCRtpReceiver does before handing the packet to the buffer.
    packet._data = depayload(codec, payload) if payload else b""  # type: ignore[attr-defined]
    return packet


def _vp8_payloads(index: int, count: int) -> list[bytes]:
    # One-octet descriptor: S=1/PID=0 on the first packet, continuation after.
    return [bytes([0x10 if i == 0 else 0x00]) + bytes([index & 0xFF, i]) * 4 for i in range(count)]


def _fu_a(nal_type: int, body: bytes, pieces: int) -> list[bytes]:
    step = max(1, -(-len(body) // pieces))
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    out = []
    for i, chunk in enumerate(chunks):
        header = nal_type | (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0)
        out.append(bytes([0x7C, header]) + chunk)
    return out


def _h264_payloads(index: int, count: int) -> list[bytes]:
    body = bytes([index & 0xFF]) * (6 * max(count, 1))
    if index == 0:
        # Keyframe: SPS + PPS aggregated in a STAP-A, then a fragmented IDR slice.
        sps, pps = b"\x67\x42\x00\x1f", b"\x68\xce\x3c\x80"
        stap = bytes([0x78]) + len(sps).to_bytes(2, "big") + sps + len(pps).to_bytes(2, "big") + pps
        return [stap, *_fu_a(5, body, count - 1)] if count > 1 else [stap]
    if count == 1:
        return [bytes([0x41]) + body]  # single NAL unit, non-IDR slice
    return _fu_a(1, body, count)


def make_stream(
    codec: RTCRtpCodecParameters,
    sizes: list[int],
    *,
    seq0: int = 1000,
    ts0: int = 90000,
    markers: bool = True,
) -> list[Frame]:
    """Frames of ``sizes[i]`` packets each, consecutive sequence numbers."""
    frames = []
    seq = seq0
    for index, size in enumerate(sizes):
        ts = ts0 + index * TS_STEP
        payloads = _h264_payloads(index, size) if codec is H264 else _vp8_payloads(index, size)
        frame = Frame(timestamp=ts & 0xFFFFFFFF)
        for i, payload in enumerate(payloads):
            last = i == len(payloads) - 1
            frame.packets.append(_packet(codec, seq, ts, payload, markers and last))
            seq += 1
        frames.append(frame)
    return frames


def packets_of(frames: list[Frame]) -> list[RtpPacket]:
    return [p for f in frames for p in f.packets]


# --- running buffers -------------------------------------------------------------


@dataclass
class Run:
    released: list[tuple[int, JitterFrame]]  # (index of the packet that released it, frame)
    pli: list[int]  # indexes of packets whose add() asked for a keyframe

    @property
    def frames(self) -> list[tuple[int, bytes]]:
        return [(f.timestamp, f.data) for _, f in self.released]

    def at(self, timestamp: int) -> int:
        return next(i for i, f in self.released if f.timestamp == timestamp)


def run(
    buffer: JitterBuffer, packets: list[RtpPacket], early: list[JitterFrame] | None = None
) -> Run:
    """Feed ``packets``; ``early`` is where the buffer's ``deliver`` hook appends."""
    result = Run(released=[], pli=[])
    for i, packet in enumerate(packets):
        pli, frame = buffer.add(packet)
        if pli:
            result.pli.append(i)
        if early:
            # Delivered by the hook during add(): ahead of the returned frame.
            result.released += [(i, f) for f in early]
            early.clear()
        if frame is not None:
            result.released.append((i, frame))
    return result


def ours_buffer(
    capacity: int = 128, prefetch: int = 0
) -> tuple[LowLatencyJitterBuffer, list[JitterFrame]]:
    early: list[JitterFrame] = []
    buffer = LowLatencyJitterBuffer(
        capacity=capacity,
        prefetch=prefetch,
        is_video=prefetch == 0,
        codec_of=codec_of,
        deliver=lambda frame, pt: early.append(frame),
    )
    return buffer, early


def both(packets: list[RtpPacket], capacity: int = 128) -> tuple[Run, Run, LowLatencyJitterBuffer]:
    ours, early = ours_buffer(capacity)
    stock = JitterBuffer(capacity=capacity, is_video=True)
    return run(stock, packets), run(ours, packets, early), ours


def expected(frames: list[Frame]) -> list[tuple[int, bytes]]:
    return [(f.timestamp, f.data) for f in frames]


def assert_same_but_earlier(stock: Run, ours: Run) -> None:
    """Stock's frames are a prefix of ours (stock may hold frames back), none later."""
    assert stock.frames == ours.frames[: len(stock.frames)]
    for (i_ours, _), (i_stock, _) in zip(ours.released, stock.released, strict=False):
        assert i_ours <= i_stock


def last_index(frame: Frame, packets: list[RtpPacket]) -> int:
    """Index in ``packets`` of the last arrival of any of the frame's packets."""
    wanted = {id(p) for p in frame.packets}
    return max(i for i, p in enumerate(packets) if id(p) in wanted)


# --- in-order streams -------------------------------------------------------------


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
@pytest.mark.parametrize("sizes", [[1] * 6, [3, 2, 4, 1, 5, 2]], ids=["single", "multi"])
def test_in_order_frames_released_at_their_marker(
    codec: RTCRtpCodecParameters, sizes: list[int]
) -> None:
    if codec is H264:
        sizes = [max(s, 2) if i == 0 else s for i, s in enumerate(sizes)]
    frames = make_stream(codec, sizes)
    packets = packets_of(frames)
    stock, ours, buffer = both(packets)

    # Stock never releases the last frame (no next frame arrives); ours does.
    assert stock.frames == expected(frames[:-1])
    assert ours.frames == expected(frames)
    for frame in frames:
        marker_at = last_index(frame, packets)
        if codec is H264 and frame is frames[0]:
            # No boundary known before the first H.264 frame: stock rule.
            assert ours.at(frame.timestamp) == marker_at + 1
        else:
            assert ours.at(frame.timestamp) == marker_at
    for frame in frames[:-1]:
        assert stock.at(frame.timestamp) == last_index(frame, packets) + 1
    first_by_timestamp = 1 if codec is H264 else 0
    assert buffer.stats.frames_on_timestamp == first_by_timestamp
    assert buffer.stats.frames_on_marker == len(frames) - first_by_timestamp
    assert ours.pli == [] and stock.pli == []


def test_h264_keyframe_after_known_boundary_released_at_marker() -> None:
    frames = make_stream(H264, [3, 1, 4, 2])
    packets = packets_of(frames)
    _, ours, buffer = both(packets)
    assert ours.frames == expected(frames)
    assert buffer.stats.frames_on_marker == 3


# --- reordering, loss, duplicates ---------------------------------------------------------


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
def test_reordered_packets_inside_a_frame_still_assemble(codec: RTCRtpCodecParameters) -> None:
    frames = make_stream(codec, [2, 3, 4, 3])
    f1 = frames[1].packets
    f2 = frames[2].packets
    # Frame 1: marker first, then the rest backwards. Frame 2: first and second swapped.
    order = [
        *frames[0].packets,
        f1[2],
        f1[1],
        f1[0],
        f2[1],
        f2[0],
        f2[2],
        f2[3],
        *frames[3].packets,
    ]
    stock, ours, _ = both(order)
    assert ours.frames == expected(frames)
    assert stock.frames == expected(frames[:-1])
    # Frame 1 is complete when its first packet (sent last) arrives.
    assert ours.at(frames[1].timestamp) == order.index(f1[0])
    assert ours.at(frames[2].timestamp) == order.index(f2[3])


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
@pytest.mark.parametrize("lost", [0, 1, 2], ids=["first", "middle", "marker"])
def test_missing_packet_holds_frame_until_retransmitted(
    codec: RTCRtpCodecParameters, lost: int
) -> None:
    frames = make_stream(codec, [2, 3, 2, 2, 1])
    missing = frames[1].packets[lost]
    packets = [p for p in packets_of(frames) if p is not missing]
    # The retransmission arrives after frame 2 and the first packet of frame 3.
    retransmit_at = packets.index(frames[3].packets[0]) + 1
    packets.insert(retransmit_at, missing)
    stock, ours, _ = both(packets)

    assert ours.frames == expected(frames)
    assert_same_but_earlier(stock, ours)
    # Held until the retransmission, never released incomplete.
    assert ours.at(frames[1].timestamp) == retransmit_at
    # Frame 2, complete meanwhile, is queued right behind it (same packet).
    assert ours.at(frames[2].timestamp) == retransmit_at
    assert [ts for ts, _ in ours.frames] == [f.timestamp for f in frames]


def test_lost_packet_never_recovered_falls_back_to_stock_overflow() -> None:
    frames = make_stream(VP8, [2] * 30)
    missing = frames[3].packets[1]
    packets = [p for p in packets_of(frames) if p is not missing]
    stock, ours, buffer = both(packets, capacity=16)

    # The stock overflow handling drops the incomplete frame and asks for a keyframe.
    assert ours.pli and stock.pli
    assert (frames[3].timestamp, frames[3].data) not in ours.frames
    timestamps = [ts for ts, _ in ours.frames]
    assert timestamps == sorted(timestamps)
    assert all(item in expected(frames) for item in ours.frames)  # each complete
    # Same frames as stock, plus the last one that stock holds back.
    assert ours.frames[: len(stock.frames)] == stock.frames
    assert ours.frames[-1] == (frames[-1].timestamp, frames[-1].data)
    # After the overflow the stream runs early again.
    assert buffer.stats.frames_on_marker >= len(frames) - 8


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
def test_duplicates_never_release_twice(codec: RTCRtpCodecParameters) -> None:
    frames = make_stream(codec, [2, 1, 3, 2, 1])
    packets: list[RtpPacket] = []
    for frame in frames:
        for p in frame.packets:
            packets += [p, p]
        # A late duplicate of the previous frame's first packet.
        packets.append(frame.packets[0])
    stock, ours, _ = both(packets)
    assert ours.frames == expected(frames)
    assert stock.frames == expected(frames[:-1])


def test_late_packet_of_released_frame_is_dropped() -> None:
    frames = make_stream(VP8, [3, 3, 3])
    packets = packets_of(frames)
    late = frames[0].packets[1]
    packets.insert(packets.index(frames[1].packets[2]) + 1, late)
    buffer, early = ours_buffer(64)
    result = run(buffer, packets, early)
    assert result.frames == expected(frames)
    assert result.pli == []


def test_randomised_loss_reorder_duplicates_match_stock() -> None:
    rng = random.Random(6)
    for codec in (VP8, H264):
        frames = make_stream(codec, [rng.randint(1, 6) for _ in range(200)], seq0=65000)
        sent = packets_of(frames)
        arrivals: list[RtpPacket] = []
        pending: list[tuple[int, RtpPacket]] = []  # (due index, packet) retransmissions
        for i, packet in enumerate(sent):
            roll = rng.random()
            if roll < 0.05:
                pending.append((i + rng.randint(1, 12), packet))  # lost, NACKed, resent later
            elif roll < 0.10 and arrivals:
                arrivals.insert(len(arrivals) - 1, packet)  # swapped with its predecessor
            else:
                arrivals.append(packet)
            if rng.random() < 0.03:
                arrivals.append(rng.choice(sent[max(0, i - 20) : i + 1]))  # duplicate
            for due, resent in [x for x in pending if x[0] <= i]:
                arrivals.append(resent)
                pending.remove((due, resent))
        arrivals += [p for _, p in pending]
        stock, ours, buffer = both(arrivals, capacity=512)
        want = expected(frames)
        # Every frame arrives eventually: ours releases all of them, complete, in
        # order, once; stock releases the same ones bar the last.
        assert ours.frames == want, codec.name
        assert_same_but_earlier(stock, ours)
        assert buffer.stats.frames_on_marker > 0.8 * len(frames)


# --- wrap-around ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
def test_sequence_number_wraps_at_65535(codec: RTCRtpCodecParameters) -> None:
    frames = make_stream(codec, [2, 3, 4, 3, 2], seq0=65530)
    assert frames[2].packets[0].sequence_number == 65535
    assert frames[2].packets[1].sequence_number == 0
    packets = packets_of(frames)
    stock, ours, buffer = both(packets)
    assert ours.frames == expected(frames)
    assert stock.frames == expected(frames[:-1])
    assert ours.at(frames[2].timestamp) == last_index(frames[2], packets)
    assert buffer.stats.frames_on_marker >= len(frames) - 1


def test_rtp_timestamp_wraps() -> None:
    frames = make_stream(VP8, [2, 2, 2, 2], ts0=2**32 - 2 * TS_STEP)
    assert frames[2].timestamp == 0
    packets = packets_of(frames)
    stock, ours, buffer = both(packets)
    assert ours.frames == expected(frames)
    assert stock.frames == expected(frames[:-1])
    assert buffer.stats.frames_on_marker == 4


# --- fallbacks -----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
def test_no_marker_bit_falls_back_to_next_timestamp(codec: RTCRtpCodecParameters) -> None:
    frames = make_stream(codec, [2, 3, 1, 2], markers=False)
    stock, ours, buffer = both(packets_of(frames))
    assert ours.released and [i for i, _ in ours.released] == [i for i, _ in stock.released]
    assert ours.frames == stock.frames == expected(frames[:-1])
    assert buffer.stats.frames_on_marker == 0


def test_one_marker_lost_only_that_frame_waits_for_next_timestamp() -> None:
    frames = make_stream(VP8, [2, 2, 2, 2])
    frames[1].packets[-1].marker = 0
    packets = packets_of(frames)
    _, ours, buffer = both(packets)
    assert ours.frames == expected(frames)
    assert ours.at(frames[1].timestamp) == packets.index(frames[2].packets[0])
    assert buffer.stats.frames_on_timestamp == 1
    assert buffer.stats.frames_on_marker == 3


def test_unknown_codec_behaves_like_stock() -> None:
    frames = make_stream(OTHER, [2, 3, 1, 2])
    stock, ours, buffer = both(packets_of(frames))
    assert ours.released and [i for i, _ in ours.released] == [i for i, _ in stock.released]
    assert ours.frames == stock.frames
    assert buffer.stats.frames_on_marker == 0


def test_without_codec_lookup_behaves_like_stock() -> None:
    frames = make_stream(VP8, [2, 3, 1, 2])
    packets = packets_of(frames)
    buffer = LowLatencyJitterBuffer(capacity=64, is_video=True)
    ours = run(buffer, packets)
    stock = run(JitterBuffer(capacity=64, is_video=True), packets)
    assert ours.frames == stock.frames == expected(frames[:-1])


def test_prefetching_audio_buffer_is_stock() -> None:
    frames = make_stream(VP8, [1] * 10)
    packets = packets_of(frames)
    buffer, early = ours_buffer(16, prefetch=4)
    ours = run(buffer, packets, early)
    stock = run(JitterBuffer(capacity=16, prefetch=4), packets)
    assert [i for i, _ in ours.released] == [i for i, _ in stock.released]
    assert ours.frames == stock.frames


def test_joined_mid_frame_drops_the_partial_frame_and_asks_for_keyframe() -> None:
    frames = make_stream(VP8, [3, 2, 2])
    packets = packets_of(frames)[1:]  # the first packet of frame 0 never came
    stock, ours, buffer = both(packets)
    # Stock hands the decoder the headless frame; we drop it and request a keyframe.
    headless = Frame(frames[0].timestamp, frames[0].packets[1:])
    assert stock.frames[0] == (headless.timestamp, headless.data)
    assert ours.frames == expected(frames[1:])
    assert ours.pli == [1]  # at frame 0's marker
    assert buffer.stats.frames_dropped_incomplete == 1


def test_h264_fu_a_middle_fragment_at_origin_is_dropped() -> None:
    frames = make_stream(H264, [2, 3, 2, 2])
    packets = packets_of(frames)
    packets.remove(frames[1].packets[0])  # lost forever; origin will sit on an FU-A middle
    # A big sequence jump makes the buffer reset right on frame 1's second packet.
    ours, early = ours_buffer()
    run(ours, packets_of(frames[:1]), early)
    ours.remove(ours.capacity)  # as the stock reset does
    ours._origin = None
    result = run(ours, packets[len(frames[0].packets) :], early)
    assert (frames[1].timestamp, frames[1].data) not in result.frames
    assert all(ts != frames[1].timestamp for ts, _ in result.frames)
    assert result.pli
    assert ours.stats.frames_dropped_incomplete == 1
    assert result.frames == expected(frames[2:])


def test_large_sequence_jump_resets_and_requests_keyframe() -> None:
    first = make_stream(VP8, [2, 2])
    second = make_stream(VP8, [2, 2, 2], seq0=30000, ts0=900000)
    packets = packets_of(first) + packets_of(second)
    stock, ours, _ = both(packets)
    jump = len(packets_of(first))
    assert jump in ours.pli and jump in stock.pli
    assert ours.frames == expected(first) + expected(second)


def test_packets_after_marker_with_same_timestamp_disable_early_release() -> None:
    frames = make_stream(VP8, [2, 2, 2, 2])
    # A sender that sets the marker one packet too early in frame 1.
    stray = _packet(
        VP8, frames[1].packets[-1].sequence_number + 1, frames[1].timestamp, b"\x00zz", False
    )
    later = make_stream(
        VP8, [2, 2, 2], seq0=stray.sequence_number + 1, ts0=frames[1].timestamp + TS_STEP
    )
    packets = [*packets_of(frames[:2]), stray, *packets_of(later)]
    _, ours, buffer = both(packets)
    assert buffer.stats.stray_packets == 1
    assert buffer.stats.early_release is False
    assert packets.index(stray) in ours.pli
    # Nothing carrying the stray's timestamp is released twice; the rest is stock-timed.
    timestamps = [ts for ts, _ in ours.frames]
    assert timestamps == [frames[0].timestamp, frames[1].timestamp] + [
        f.timestamp for f in later[:-1]
    ]


def _padding(seq: int, ts: int) -> RtpPacket:
    return _packet(VP8, seq, ts, b"", False)


def test_padding_after_marker_is_skipped_quietly() -> None:
    frames = make_stream(VP8, [2, 2, 2, 2])
    # Two padding packets after frame 1, with frame 1's timestamp; the frames
    # after them are shifted in sequence numbers accordingly.
    seq = frames[1].packets[-1].sequence_number
    pads = [_padding(seq + 1, frames[1].timestamp), _padding(seq + 2, frames[1].timestamp)]
    later = make_stream(VP8, [2, 2], seq0=seq + 3, ts0=frames[1].timestamp + TS_STEP)
    packets = [*packets_of(frames[:2]), *pads, *packets_of(later)]
    _, ours, buffer = both(packets)
    assert ours.frames == expected(frames[:2]) + expected(later)
    assert ours.pli == []
    assert buffer.stats.early_release is True and buffer.stats.stray_packets == 0
    assert buffer.stats.frames_on_marker == 4


def test_padding_with_its_own_timestamp_is_skipped_quietly() -> None:
    frames = make_stream(VP8, [2, 2])
    seq = frames[1].packets[-1].sequence_number
    pad = _padding(seq + 1, frames[1].timestamp + 1)
    later = make_stream(VP8, [2, 2], seq0=seq + 2, ts0=frames[1].timestamp + TS_STEP)
    packets = [*packets_of(frames), pad, *packets_of(later)]
    _, ours, buffer = both(packets)
    assert ours.frames == expected(frames) + expected(later)
    assert ours.pli == []
    assert buffer.stats.frames_dropped_incomplete == 0
    # The frame after the padding is still released at its marker.
    assert ours.at(later[0].timestamp) == packets.index(later[0].packets[-1])
