"""A loopback WebRTC rig: a plain aiortc sender of stamped frames and a receiver.

The sender draws the local server's frame stamp (frame number and send time)
into each picture; the receiver decodes every frame and records stamp →
decoded latency, with aiortc's stock jitter buffer or our low-latency one.
:func:`run_loopback` runs both peers in one event loop (what
``tests/sdk/test_jitter_e2e.py`` uses); :func:`run_with_sender_process` puts
the sender in its own process (what ``benchmarks/bench_latency.py`` measures
with). A support module: pytest collects nothing here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs import depayload
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from odyssey_sync._jitter import JitterStats, apply_low_latency, low_latency_stats
from odyssey_sync.local.faults import Faults
from odyssey_sync.local.realtime.rtp import RtpFaultSeam
from odyssey_sync.local.render.stamp import decode_stamp, stamp_frame

VIDEO_CLOCK = 90000
BLOCK = 32  # side of the moving white block that proves the whole picture decoded


# --- the sender ---------------------------------------------------------------------------


def _block_origin(index: int, width: int, height: int) -> tuple[int, int]:
    """Where frame ``index`` draws its white block (bottom band, moving right)."""
    span = max(1, (width - BLOCK) // 8)
    return (index % span) * 8, height - BLOCK - 8


class StampedTrack(MediaStreamTrack):  # type: ignore[misc]
    """Video track: ``count`` frames (None: until stopped) at ``fps``, each stamped
    with its number and send time.

    The picture is a dark gradient with a white block whose position follows
    the frame number, so a receiver can check the whole picture decoded, not
    only the stamp band at the top.
    """

    kind = "video"

    def __init__(self, width: int, height: int, fps: float, count: int | None = None) -> None:
        super().__init__()
        self._fps = fps
        self._count = count
        self._index = 0
        self._start: float | None = None
        x = np.linspace(30, 110, width, dtype=np.float32)
        y = np.linspace(0, 40, height, dtype=np.float32)[:, None]
        self._base = np.repeat((x + y).astype(np.uint8)[:, :, None], 3, axis=2)
        self.sent_at: dict[int, float] = {}

    async def recv(self) -> av.VideoFrame:
        if self._count is not None and self._index >= self._count:
            # Done: idle until the peer connection closes (which cancels us).
            await asyncio.Event().wait()
            raise MediaStreamError
        index = self._index
        self._index += 1
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + index / self._fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        img = self._base.copy()
        height, width = img.shape[:2]
        bx, by = _block_origin(index, width, height)
        img[by : by + BLOCK, bx : bx + BLOCK] = 255
        now = time.monotonic()
        stamp_frame(img, index, sent_at=now)
        self.sent_at[index] = now
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = round(index * VIDEO_CLOCK / self._fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        return frame


def _prefer(pc: RTCPeerConnection, codec: str) -> None:
    codecs = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in codecs if c.mimeType == f"video/{codec}"]
    if not chosen:
        raise ValueError(f"aiortc has no {codec} codec")
    rtx = [c for c in codecs if c.mimeType == "video/rtx"]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            transceiver.setCodecPreferences(chosen + rtx)


# --- the receiver ------------------------------------------------------------------------


def picture_ok(img: npt.NDArray[Any], index: int) -> bool:
    """The block of frame ``index`` is where it belongs (the picture decoded whole)."""
    height, width = img.shape[:2]
    bx, by = _block_origin(index, width, height)
    inner = img[by + 4 : by + BLOCK - 4, bx + 4 : bx + BLOCK - 4]
    return bool(inner.mean() > 180.0)


@dataclass
class Received:
    """What the receiver saw: frame numbers in arrival order and their latency."""

    frames: list[int] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    unreadable: int = 0  # decoded pictures without a valid stamp
    unreadable_after: list[int] = field(default_factory=list)  # last good frame before each
    broken: int = 0  # stamp valid but the block is not where it belongs
    cpu_s: float = 0.0  # receiver process CPU after the first frame (process mode only)
    wall_s: float = 0.0  # from the first decoded frame to the last
    first_at: float = 0.0
    first_cpu: float = 0.0
    stats: JitterStats | None = None
    stock_buffer: bool = False  # the receiver kept aiortc's own buffer class
    dropped_by_seam: int = 0
    swapped_by_seam: int = 0
    # With ``inspect=True`` (one-process mode): every media RTP packet the
    # sender produced (before loss/reorder), and every encoded frame the
    # receiver queued to its decoder, in order.
    sent_packets: list[RtpPacket] = field(default_factory=list)
    decoder_input: list[bytes] = field(default_factory=list)

    def sent_frames(self, codec: str) -> list[bytes]:
        """The encoded frames the sender sent, in order, as the decoder must see them."""
        params = RTCRtpCodecParameters(mimeType=f"video/{codec}", clockRate=VIDEO_CLOCK)
        frames: dict[int, list[bytes]] = {}
        for packet in self.sent_packets:
            frames.setdefault(packet.timestamp, []).append(depayload(params, packet.payload))
        return [b"".join(parts) for parts in frames.values()]


async def _consume(track: MediaStreamTrack, got: Received, last: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            frame = await asyncio.wait_for(track.recv(), remaining)
        except (asyncio.TimeoutError, MediaStreamError):
            return
        now = time.monotonic()
        assert isinstance(frame, av.VideoFrame)
        img = frame.to_ndarray(format="rgb24", threads=1)
        stamp = decode_stamp(img, now=now)
        if stamp is None:
            got.unreadable += 1
            got.unreadable_after.append(got.frames[-1] if got.frames else -1)
            continue
        if not got.frames:
            # Rates are measured from the first decoded frame: connecting
            # (ICE, DTLS) is not part of the steady state.
            got.first_at, got.first_cpu = now, time.process_time()
        got.frames.append(stamp.frame)
        got.latency_ms.append(stamp.latency_ms(now))
        if not picture_ok(img, stamp.frame):
            got.broken += 1
        if stamp.frame >= last:
            return


class _VideoConsumer:
    """Consumes the video track *pc* receives into *got* (frames up to *last*)."""

    def __init__(self, pc: RTCPeerConnection, got: Received, last: int, timeout: float) -> None:
        self.task: asyncio.Task[None] | None = None
        self._timeout = timeout

        @pc.on("track")
        def on_track(remote: MediaStreamTrack) -> None:
            if remote.kind == "video":
                self.task = asyncio.ensure_future(_consume(remote, got, last, timeout))

    async def wait(self) -> None:
        """Wait for the track (its event fires during connect), then for its last frame;
        gives up on a track that has not come within the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while self.task is None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.task is not None:
            await self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _config() -> RTCConfiguration:
    # Host candidates only: any STUN/TURN URL would make gathering wait (PITFALLS).
    return RTCConfiguration(iceServers=[])


def _video_receivers(pc: RTCPeerConnection) -> list[Any]:
    return [t.receiver for t in pc.getTransceivers() if t.kind == "video"]


async def _answer(pc: RTCPeerConnection, offer: RTCSessionDescription, low_latency: bool) -> None:
    await pc.setRemoteDescription(offer)
    if low_latency:
        for receiver in _video_receivers(pc):
            apply_low_latency(receiver)  # before any RTP arrives
    await pc.setLocalDescription(await pc.createAnswer())


def _finish(got: Received, pc: RTCPeerConnection) -> None:
    receivers = _video_receivers(pc)
    got.stats = low_latency_stats(receivers[0]) if receivers else None
    got.stock_buffer = bool(receivers) and (
        type(receivers[0]._RTCRtpReceiver__jitter_buffer).__name__ == "JitterBuffer"
    )


# --- one process, one loop (tests) ------------------------------------------------------------


async def run_loopback(
    *,
    codec: str = "VP8",
    width: int = 320,
    height: int = 176,
    fps: float = 30.0,
    frames: int = 60,
    low_latency: bool = True,
    drop_every: int = 0,
    reorder_every: int = 0,
    timeout: float = 10.0,
    inspect: bool = False,
) -> Received:
    """Stream ``frames`` stamped frames from a plain aiortc sender to a receiver.

    Coroutine; both peer connections share the running loop. Loss and
    reordering are injected on the sender with the local server's
    :class:`RtpFaultSeam` (deterministic, by packet index; retransmissions
    pass untouched). Returns when the last frame is decoded or after
    ``timeout`` seconds; both peer connections are closed on return. With
    ``inspect`` the sender's packets and the receiver's decoder input are
    recorded (:attr:`Received.sent_packets`, :attr:`Received.decoder_input`).
    """
    # The sender goes on past ``frames``: the stock buffer releases a frame
    # only when the next one arrives.
    track = StampedTrack(width, height, fps)
    got = Received()
    send, recv = RTCPeerConnection(_config()), RTCPeerConnection(_config())
    consumer = _VideoConsumer(recv, got, frames - 1, timeout)
    seam: RtpFaultSeam | None = None

    try:
        sender = send.addTrack(track)
        _prefer(send, codec)
        await send.setLocalDescription(await send.createOffer())
        await _answer(recv, send.localDescription, low_latency)
        await send.setRemoteDescription(recv.localDescription)
        seam = RtpFaultSeam(Faults(drop_every=drop_every, reorder_every=reorder_every), sender)
        seam.install()
        if inspect:
            _record(got, sender, seam, _video_receivers(recv)[0])
        await consumer.wait()
        if got.frames:
            got.wall_s = time.monotonic() - got.first_at
        _finish(got, recv)
        got.dropped_by_seam, got.swapped_by_seam = seam.dropped, seam.swapped
    finally:
        consumer.cancel()
        if seam is not None:
            seam.close()
        await recv.close()
        await send.close()
    return got


def _record(got: Received, sender: Any, seam: RtpFaultSeam, receiver: Any) -> None:
    """Tap the sender's media packets (ahead of the fault seam) and the decoder queue."""
    transport = sender.transport
    inner = transport._send_rtp

    async def send_rtp(data: bytes) -> None:
        if seam._is_media(data):
            got.sent_packets.append(RtpPacket.parse(data))
        await inner(data)

    transport._send_rtp = send_rtp
    decoder_queue = receiver._RTCRtpReceiver__decoder_queue
    put = decoder_queue.put

    def put_and_record(item: Any, *args: Any, **kwargs: Any) -> None:
        if item is not None:  # None is the decoder thread's stop sentinel
            got.decoder_input.append(bytes(item[1].data))
        put(item, *args, **kwargs)

    decoder_queue.put = put_and_record


# --- sender in its own process (benchmark) ----------------------------------------------------


def _sender_process(
    conn: multiprocessing.connection.Connection,
    codec: str,
    width: int,
    height: int,
    fps: float,
    frames: int,
    drop_every: int,
    reorder_every: int,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pc = RTCPeerConnection(_config())
        try:
            sender = pc.addTrack(StampedTrack(width, height, fps))
            _prefer(pc, codec)
            await pc.setLocalDescription(await pc.createOffer())
            conn.send((pc.localDescription.sdp, pc.localDescription.type))
            sdp, kind = await loop.run_in_executor(None, conn.recv)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            seam = RtpFaultSeam(Faults(drop_every=drop_every, reorder_every=reorder_every), sender)
            seam.install()
            await loop.run_in_executor(None, conn.recv)  # "done" from the receiver
            seam.close()
            conn.send((seam.dropped, seam.swapped))
        finally:
            await pc.close()

    asyncio.run(main())


async def _receive_from_process(
    conn: multiprocessing.connection.Connection, frames: int, low_latency: bool, timeout: float
) -> Received:
    loop = asyncio.get_running_loop()
    got = Received()
    pc = RTCPeerConnection(_config())
    consumer = _VideoConsumer(pc, got, frames - 1, timeout)

    try:
        sdp, kind = await loop.run_in_executor(None, conn.recv)
        await _answer(pc, RTCSessionDescription(sdp=sdp, type=kind), low_latency)
        conn.send((pc.localDescription.sdp, pc.localDescription.type))
        await consumer.wait()
        if got.frames:
            got.cpu_s = time.process_time() - got.first_cpu
            got.wall_s = time.monotonic() - got.first_at
        _finish(got, pc)
    finally:
        consumer.cancel()
        conn.send("done")
        got.dropped_by_seam, got.swapped_by_seam = await loop.run_in_executor(None, conn.recv)
        await pc.close()
    return got


def run_with_sender_process(
    *,
    codec: str,
    width: int,
    height: int,
    fps: float,
    frames: int,
    low_latency: bool,
    drop_every: int = 0,
    reorder_every: int = 0,
) -> Received:
    """Blocking: one measured run, the sender in a spawned process (joined before return)."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(
        target=_sender_process,
        name="bench-latency-sender",
        args=(theirs, codec, width, height, fps, frames, drop_every, reorder_every),
    )
    proc.start()
    try:
        timeout = frames / fps + 15.0
        return asyncio.run(_receive_from_process(mine, frames, low_latency, timeout))
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)


# --- report -----------------------------------------------------------------------------------
