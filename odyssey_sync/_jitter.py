"""Low-latency video jitter buffer: release each frame as soon as it is complete.

The problem
-----------

aiortc's video :class:`~aiortc.jitterbuffer.JitterBuffer` hands a frame to the
decoder only when a packet of the *next* frame (a new RTP timestamp) arrives;
it ignores the RTP marker bit that tells it "this was the last packet of the
frame". Every frame therefore waits for the next one: one frame interval
(≈ 33 ms at 30 fps) plus the time the sender takes to encode and packetise
that next frame — most of the receive-side latency on a local link.

What this module does
---------------------

:class:`LowLatencyJitterBuffer` subclasses aiortc's buffer and keeps all of its
loss handling: the receiver still generates NACKs from sequence gaps (that
happens before the buffer), the buffer still reorders by sequence number,
drops late packets of frames it already released, resets and requests a
keyframe (PLI) on large sequence jumps, and makes room (with a PLI) when the
buffer overflows. It adds one rule: a frame is released the moment it is
provably complete —

* the packet at the buffer's origin is the frame's first packet: VP8 payload
  descriptor with S=1 and partition index 0; for H.264 a single NAL unit,
  STAP-A or FU-A with the start bit, *and* the origin is known to follow the
  previous frame's last packet (an H.264 packet alone cannot prove that no
  earlier packet of the same access unit was lost);
* every sequence number from that packet up to a packet with the marker bit is
  present, all with the same RTP timestamp.

When completeness cannot be established (unknown codec, a sender that does not
set the marker bit, the first frame of an H.264 stream), the stock rule still
applies: the next frame's first packet closes the frame. A frame whose first
packet is provably *not* a frame start (a VP8 continuation packet, an H.264
FU-A middle fragment — what the stock buffer passes on after a reset) is
dropped and a keyframe is requested instead of feeding the decoder a broken
frame. Payload-less packets (padding) are skipped without a keyframe request.

The seam
--------

:class:`aiortc.RTCRtpReceiver` builds its buffer in ``__init__`` and calls
``buffer.add(packet)`` for every RTP packet, using the returned
``(pli_flag, encoded_frame)``. :func:`apply_low_latency` swaps that one object
(the receiver's private ``__jitter_buffer`` attribute) for ours — no module
globals are patched, other receivers are untouched. The buffer reads the
receiver's private ``__codecs`` map to know each payload type's codec, and
when one packet completes several frames (a retransmission filling a gap) it
queues the earlier ones exactly as the receiver would (``__timestamp_mapper``,
``__decoder_queue``, only while ``__decoder_thread`` runs) before ``add``
returns the last — aiortc's one-frame-per-packet contract would otherwise
leave a backlog that never drains when frames are single packets. These
private names are checked by :func:`low_latency_supported` (and by
``tests/test_jitter_seam.py``). Tested with aiortc 1.16; the same names and
the same ``_handle_rtp_packet`` sequence were checked by reading the sources of
1.9, 1.11, 1.13, 1.14 and 1.15 (only the video buffer's capacity differs: 128
before 1.16), hence the pin ``aiortc>=1.9,<1.17``.

Threading: a buffer is used only on the event loop thread that runs its peer
connection (where aiortc calls it). :attr:`LowLatencyJitterBuffer.stats` may be
read from any thread; it is a snapshot of plain counters.
"""

from __future__ import annotations

import inspect
import queue
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

__all__ = [
    "JitterStats",
    "LowLatencyJitterBuffer",
    "apply_low_latency",
    "low_latency_stats",
    "low_latency_supported",
]

# Name-mangled private attributes of RTCRtpReceiver that form the seam.
_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"
_CODECS_ATTR = "_RTCRtpReceiver__codecs"
_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_MAPPER_ATTR = "_RTCRtpReceiver__timestamp_mapper"
_THREAD_ATTR = "_RTCRtpReceiver__decoder_thread"

# H.264 NAL unit types (RFC 6184 §5.2) that aiortc depayloads.
_H264_STAP_A = 24
_H264_FU_A = 28

_VP8 = "VP8"
_H264 = "H264"

# Result of inspecting a frame's first packet.
_START = 1  # provably the first packet of a frame
_NOT_START = 0  # provably not: the frame is incomplete
_UNKNOWN = -1  # cannot tell (unknown codec, or H.264 without a known boundary)


@dataclass(frozen=True)
class JitterStats:
    """Counters of one :class:`LowLatencyJitterBuffer` (a snapshot).

    ``frames_on_marker``: frames released at their own marker packet, i.e.
    without waiting for the next frame. ``frames_on_timestamp``: frames
    released by the stock rule (a packet of the next frame arrived).
    ``frames_dropped_incomplete``: frames dropped because their first packet
    is provably not a frame start (a keyframe is requested for each).
    ``stray_packets``: packets that arrived after a frame had been released on
    its marker yet carry that frame's timestamp (a sender misusing the marker
    bit); they are dropped and early release is switched off for the stream
    (``early_release`` becomes False). ``frames_batched``: frames that
    completed together with a later one on the same packet (a retransmission
    filling a gap) and were queued to the decoder ahead of it.
    """

    frames_on_marker: int = 0
    frames_on_timestamp: int = 0
    frames_dropped_incomplete: int = 0
    stray_packets: int = 0
    frames_batched: int = 0
    early_release: bool = True

    @property
    def frames_released(self) -> int:
        """Frames handed to the decoder, by either rule."""
        return self.frames_on_marker + self.frames_on_timestamp


def _vp8_first_packet(payload: bytes) -> int:
    # VP8 payload descriptor (RFC 7741 §4.2), first octet: X R N S R PID(3).
    # S=1 with partition index 0 marks the first packet of a frame and nothing else.
    if not payload:
        return _UNKNOWN  # padding: says nothing about the frame
    b = payload[0]
    return _START if (b & 0x10) and (b & 0x07) == 0 else _NOT_START


def _h264_may_start(payload: bytes) -> bool:
    # NAL header (RFC 6184 §5.3): F NRI(2) Type(5). A single NAL unit (1–23)
    # or a STAP-A can open an access unit; an FU-A only with its start bit.
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if 1 <= nal_type <= 23 or nal_type == _H264_STAP_A:
        return True
    if nal_type == _H264_FU_A:
        return len(payload) >= 2 and bool(payload[1] & 0x80)
    return False


class LowLatencyJitterBuffer(JitterBuffer):
    """A video jitter buffer that releases each frame at its marker packet.

    Drop-in for aiortc's video buffer (same constructor, same ``add``
    contract: returns ``(pli_flag, frame_or_None)``); install it with
    :func:`apply_low_latency` rather than directly. ``codec_of`` maps an RTP
    payload type to a codec name (``"VP8"``, ``"H264"``, …) or ``None`` when
    unknown; payload types it cannot name get the stock behaviour.
    ``deliver(frame, payload_type)`` queues a frame to the decoder ahead of
    the one ``add`` returns, for packets that complete several frames at once;
    without it such frames come out one per ``add`` call, as in aiortc. Not
    thread-safe: call ``add`` from the peer connection's loop thread only.
    With ``prefetch`` other than 0 (aiortc's audio setting) it behaves exactly
    like the stock buffer.
    """

    def __init__(
        self,
        capacity: int,
        prefetch: int = 0,
        is_video: bool = False,
        *,
        codec_of: Callable[[int], str | None] | None = None,
        deliver: Callable[[JitterFrame, int], None] | None = None,
    ) -> None:
        super().__init__(capacity=capacity, prefetch=prefetch, is_video=is_video)
        self._codec_of = codec_of
        self._deliver = deliver
        self._codec_names: dict[int, str] = {}
        # Sequence number known to carry the first packet of a frame: the one
        # right after the last packet of the frame released last. None when
        # unknown (stream start, after a reset or an overflow).
        self._next_start: int | None = None
        # Timestamp of the frame released last *on its marker*, to detect
        # packets a sender sent after the marker with the same timestamp.
        self._marker_ts: int | None = None
        self._pli_pending = False
        self._early = True
        self._on_marker = 0
        self._on_timestamp = 0
        self._dropped = 0
        self._stray = 0
        self._batched = 0

    # --- public --------------------------------------------------------------

    @property
    def stats(self) -> JitterStats:
        """A snapshot of the counters. Non-blocking; readable from any thread."""
        return JitterStats(
            frames_on_marker=self._on_marker,
            frames_on_timestamp=self._on_timestamp,
            frames_dropped_incomplete=self._dropped,
            stray_packets=self._stray,
            frames_batched=self._batched,
            early_release=self._early,
        )

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Store one depayloaded packet; return ``(pli_flag, frame_or_None)``.

        Non-blocking, loop thread only. The stock logic places the packet,
        handles reordering, late packets, resets and overflow; the frame
        selection is :meth:`_remove_frame` below.
        """
        pli_flag, frame = super().add(packet)
        if self._pli_pending:
            self._pli_pending = False
            pli_flag = True
        return pli_flag, frame

    # --- aiortc hooks ---------------------------------------------------------

    def remove(self, count: int) -> None:
        # The stock add() calls remove(capacity) when it resets on a large
        # sequence jump: what follows the new origin is not a known boundary.
        super().remove(count)
        self._next_start = None
        self._marker_ts = None

    def smart_remove(self, count: int) -> bool:
        # Overflow: the stock code drops whole frames but may leave the origin
        # anywhere (even on an arbitrary packet), so the boundary is unknown.
        dropped_all = bool(super().smart_remove(count))
        self._next_start = None
        self._marker_ts = None
        return dropped_all

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if self._prefetch != 0 or self._origin is None:
            # Audio-style prefetching: keep the stock behaviour untouched.
            stock: JitterFrame | None = super()._remove_frame(sequence_number)
            return stock
        # One packet can complete several frames (a retransmission filling a
        # gap while later frames are already complete). The receiver takes one
        # frame per add(); with a ``deliver`` hook the earlier ones are queued
        # to the decoder here, *before* add() returns the last one, so decode
        # order is preserved. Without it, one frame per add() as stock does.
        ready: list[tuple[JitterFrame, int]] = []
        while True:
            progressed, item = self._scan()
            if item is not None:
                ready.append(item)
                if self._deliver is None:
                    break
            if not progressed:
                break
        if not ready:
            return None
        assert self._deliver is not None or len(ready) == 1
        for frame, payload_type in ready[:-1]:
            self._batched += 1
            self._deliver(frame, payload_type)  # type: ignore[misc]
        return ready[-1][0]

    # --- internals ------------------------------------------------------------

    def _scan(self) -> tuple[bool, tuple[JitterFrame, int] | None]:
        """Close the first frame from the origin if it is complete.

        Returns ``(progressed, (frame, payload_type) or None)``: ``progressed``
        is True when packets were removed (a frame released or dropped, stray
        packets discarded), so another scan may find the next frame. Every
        step removes at least one packet, so repeated scans terminate.
        """
        origin = self._origin
        assert origin is not None
        capacity = self._capacity
        slots = self._packets
        taken: list[RtpPacket] = []
        timestamp: int | None = None
        first: RtpPacket | None = None
        verdict = _UNKNOWN
        for count in range(capacity):
            packet = slots[(origin + count) % capacity]
            if packet is None:
                # A gap: the frame waits for the missing packet (NACKed by the
                # receiver) or for the stock overflow handling.
                return False, None
            if first is None:
                first = packet
                timestamp = packet.timestamp
                if timestamp == self._marker_ts:
                    self._discard_strays(timestamp)
                    return True, None
                verdict = self._first_packet(first, origin)
            elif packet.timestamp != timestamp:
                # Stock rule: the next frame's packet closes this frame.
                return True, self._close(taken, first, verdict, count, on_marker=False)
            taken.append(packet)
            # The marker closes the frame when its start is provable — or when
            # it is provably missing, so the frame is dropped (and a keyframe
            # requested) now rather than one frame later.
            if packet.marker and self._early and verdict != _UNKNOWN:
                return True, self._close(taken, first, verdict, count + 1, on_marker=True)
        return False, None

    def _close(
        self,
        taken: list[RtpPacket],
        first: RtpPacket,
        verdict: int,
        count: int,
        *,
        on_marker: bool,
    ) -> tuple[JitterFrame, int] | None:
        """Remove ``count`` packets (one frame); return it with its payload type, or
        None when it is dropped as broken."""
        JitterBuffer.remove(self, count)  # the stock removal: no boundary reset
        self._next_start = self._origin
        self._marker_ts = first.timestamp if on_marker else None
        if not any(p.payload for p in taken):
            # Padding only (bandwidth probes): nothing to decode, nothing lost.
            return None
        if verdict == _NOT_START:
            # The frame's beginning was lost for good (reset, overflow, stream
            # joined mid-frame): decoding it would corrupt the picture.
            self._dropped += 1
            self._pli_pending = True
            return None
        if on_marker:
            self._on_marker += 1
        else:
            self._on_timestamp += 1
        frame = JitterFrame(
            data=b"".join(p._data for p in taken),  # type: ignore[attr-defined]
            timestamp=first.timestamp,
        )
        return frame, first.payload_type

    def _discard_strays(self, timestamp: int) -> None:
        """Drop packets at the origin that belong to a frame already released.

        What follows them is still contiguous with the released frame, so the
        next packet is a frame boundary.
        """
        origin = self._origin
        assert origin is not None
        n = 0
        while n < self._capacity:
            packet = self._packets[(origin + n) % self._capacity]
            if packet is None or packet.timestamp != timestamp:
                break
            n += 1
        padding = not any(
            self._packets[(origin + i) % self._capacity].payload  # type: ignore[union-attr]
            for i in range(n)
        )
        JitterBuffer.remove(self, n)
        self._next_start = self._origin
        if padding:
            # Payload-less packets (padding a sender adds to probe bandwidth)
            # carry the last frame's timestamp: harmless, and more may follow.
            return
        self._stray += n
        # The sender's marker bit cannot be trusted: back to the stock rule.
        self._early = False
        # The released frame lacked these packets; a keyframe repairs the picture.
        self._pli_pending = True
        self._marker_ts = None

    def _first_packet(self, packet: RtpPacket, origin: int | None) -> int:
        """Is ``packet`` (at the origin) the first packet of its frame?"""
        codec = self._codec_name(packet.payload_type)
        if codec == _VP8:
            return _vp8_first_packet(packet.payload)
        if not packet.payload:
            return _UNKNOWN  # padding: says nothing about the frame
        if codec == _H264:
            if not _h264_may_start(packet.payload):
                return _NOT_START
            return _START if origin is not None and origin == self._next_start else _UNKNOWN
        return _UNKNOWN

    def _codec_name(self, payload_type: int) -> str | None:
        name = self._codec_names.get(payload_type)
        if name is None and self._codec_of is not None:
            name = self._codec_of(payload_type)
            if name is not None:
                name = name.upper()
                self._codec_names[payload_type] = name
        return name


# --- installing on a receiver --------------------------------------------------


class _StubTransport:
    """Just enough of an RTCDtlsTransport for RTCRtpReceiver.__init__."""

    state = "new"


def _expect_params(func: Any, names: list[str], where: str, problems: list[str]) -> None:
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        problems.append(f"{where}: signature cannot be inspected")
        return
    if params[: len(names)] != names:
        problems.append(f"{where}: parameters {params}, expected {names}")


def _seam_problems() -> list[str]:
    """Everything about the installed aiortc that differs from what we rely on."""
    problems: list[str] = []
    jb = JitterBuffer
    for name in ("add", "_remove_frame", "remove", "smart_remove"):
        if not callable(getattr(jb, name, None)):
            problems.append(f"JitterBuffer.{name} is missing")
    if problems:
        return problems
    _expect_params(
        jb.__init__, ["self", "capacity", "prefetch", "is_video"], "JitterBuffer", problems
    )
    _expect_params(jb.add, ["self", "packet"], "JitterBuffer.add", problems)
    _expect_params(
        jb._remove_frame, ["self", "sequence_number"], "JitterBuffer._remove_frame", problems
    )
    _expect_params(jb.remove, ["self", "count"], "JitterBuffer.remove", problems)
    _expect_params(jb.smart_remove, ["self", "count"], "JitterBuffer.smart_remove", problems)
    _expect_params(JitterFrame.__init__, ["self", "data", "timestamp"], "JitterFrame", problems)
    _expect_params(
        RTCRtpReceiver._handle_rtp_packet,
        ["self", "packet", "arrival_time_ms"],
        "RTCRtpReceiver._handle_rtp_packet",
        problems,
    )
    try:
        probe = JitterBuffer(capacity=4, is_video=True)
        for attr in ("_origin", "_packets", "_capacity", "_prefetch", "_is_video"):
            if not hasattr(probe, attr):
                problems.append(f"JitterBuffer instances lack {attr}")
        packet = RtpPacket(payload_type=96, marker=1, sequence_number=1, timestamp=2, payload=b"x")
        for attr in ("marker", "payload", "payload_type", "sequence_number", "timestamp"):
            if not hasattr(packet, attr):
                problems.append(f"RtpPacket lacks {attr}")
        for kind, video in (("video", True), ("audio", False)):
            receiver = RTCRtpReceiver(kind, _StubTransport())  # type: ignore[arg-type]
            buffer = getattr(receiver, _BUFFER_ATTR, None)
            if not isinstance(buffer, JitterBuffer):
                problems.append(f"{kind} RTCRtpReceiver has no {_BUFFER_ATTR} JitterBuffer")
            elif getattr(buffer, "_is_video", None) is not video:
                problems.append(f"{kind} RTCRtpReceiver's buffer has _is_video != {video}")
            elif video and getattr(buffer, "_prefetch", None) != 0:
                problems.append("video RTCRtpReceiver's buffer prefetches")
            if not isinstance(getattr(receiver, _CODECS_ATTR, None), dict):
                problems.append(f"RTCRtpReceiver has no {_CODECS_ATTR} dict")
            if not isinstance(getattr(receiver, _QUEUE_ATTR, None), queue.Queue):
                problems.append(f"RTCRtpReceiver has no {_QUEUE_ATTR} queue.Queue")
            if not callable(getattr(getattr(receiver, _MAPPER_ATTR, None), "map", None)):
                problems.append(f"RTCRtpReceiver has no {_MAPPER_ATTR} with map()")
            if not hasattr(receiver, _THREAD_ATTR):
                problems.append(f"RTCRtpReceiver has no {_THREAD_ATTR}")
    except Exception as exc:  # any construction failure means the seam moved
        problems.append(f"probing aiortc failed: {type(exc).__name__}: {exc}")
    return problems


@lru_cache(maxsize=1)
def _cached_problems() -> tuple[str, ...]:
    return tuple(_seam_problems())


def low_latency_supported() -> bool:
    """True when the installed aiortc exposes the seam :func:`apply_low_latency` needs.

    Non-blocking (a one-off probe of aiortc's classes, cached); any thread.
    """
    return not _cached_problems()


def _receiver_hooks(
    receiver: RTCRtpReceiver,
) -> tuple[Callable[[int], str | None], Callable[[JitterFrame, int], None]]:
    """The buffer's two views of its receiver: codec names and the decoder queue.

    Both hold the receiver weakly: the receiver owns the buffer, the buffer
    must not keep it alive. The codec map is filled by ``receive()``, which
    aiortc calls after ``setRemoteDescription``, so it is read lazily.
    """
    ref = weakref.ref(receiver)

    def codec_params(payload_type: int) -> Any:
        owner = ref()
        codecs = getattr(owner, _CODECS_ATTR, None) if owner is not None else None
        return codecs.get(payload_type) if isinstance(codecs, dict) else None

    def codec_of(payload_type: int) -> str | None:
        name = getattr(codec_params(payload_type), "name", None)
        return name if isinstance(name, str) else None

    def deliver(frame: JitterFrame, payload_type: int) -> None:
        # Exactly what RTCRtpReceiver._handle_rtp_packet does with the frame
        # add() returns: map the RTP timestamp (in order: the mapper tracks
        # wrap-around) and queue (codec, frame) for the decoder thread.
        owner = ref()
        codec = codec_params(payload_type)
        if owner is None or codec is None or not getattr(owner, _THREAD_ATTR, None):
            return  # no decoder running: aiortc would drop the frame too
        frame.timestamp = getattr(owner, _MAPPER_ATTR).map(frame.timestamp)
        getattr(owner, _QUEUE_ATTR).put((codec, frame))

    return codec_of, deliver


def apply_low_latency(receiver: RTCRtpReceiver) -> None:
    """Make this video receiver release each frame as soon as it is complete.

    Non-blocking. Call on the peer connection's event loop thread, right after
    ``setRemoteDescription`` (before RTP arrives; packets already buffered are
    carried over if it is called later). Idempotent; a no-op for audio
    receivers.

    Raises ``TypeError`` if ``receiver`` is not an ``aiortc.RTCRtpReceiver``,
    and ``RuntimeError`` naming what changed if the installed aiortc does not
    have the seam this module was built for (see
    :func:`low_latency_supported`).
    """
    if not isinstance(receiver, RTCRtpReceiver):
        raise TypeError(f"expected an aiortc RTCRtpReceiver, got {type(receiver).__name__}")
    problems = _cached_problems()
    if problems:
        raise RuntimeError(
            "odyssey_sync low-latency receive path does not support the installed aiortc "
            "(tested with aiortc 1.16; set low_latency=False to run without it): "
            + "; ".join(problems)
        )
    old = getattr(receiver, _BUFFER_ATTR)
    if isinstance(old, LowLatencyJitterBuffer) or not old._is_video:
        return
    codec_of, deliver = _receiver_hooks(receiver)
    new = LowLatencyJitterBuffer(
        capacity=old.capacity,
        prefetch=old._prefetch,
        is_video=True,
        codec_of=codec_of,
        deliver=deliver,
    )
    # Carry over anything already buffered (normally nothing).
    new._origin = old._origin
    new._packets = list(old._packets)
    setattr(receiver, _BUFFER_ATTR, new)


def low_latency_stats(receiver: RTCRtpReceiver) -> JitterStats | None:
    """The counters of the receiver's low-latency buffer, or None if not installed.

    Non-blocking; any thread (a snapshot of plain integers).
    """
    buffer = getattr(receiver, _BUFFER_ATTR, None)
    return buffer.stats if isinstance(buffer, LowLatencyJitterBuffer) else None
