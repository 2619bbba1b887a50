"""The server's video tracks: the paced world track and its spectator copies.

A :class:`WorldTrack` renders at ``ServerConfig.fps``: a dark stamped idle
picture between streams, the stream's world while a stream runs (frame
numbers restart at 0 with every stream). It encodes its frames itself
(:mod:`.encoder`: VP8 or H.264, whichever the answer chose) and hands aiortc
ready packets. The client's sender *pulls* them: a frame is rendered only
when the sender asks for the next one, so an overloaded machine lowers the
frame rate but never skips a frame number (a push relay would overwrite
frames the encoder had no time for). WHEP spectators get a
:class:`SpectatorTrack` tee of the same packets — one encode for everyone, as
a broadcast server forwards one stream — and a slow viewer is resynchronised
on a key frame instead of slowing the client.

Threads: everything runs on the server's event loop; rendering + encoding of
large frames runs in the loop's default executor so that it does not stall
ICE/DTLS/SCTP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from ..context import ServerContext
from ..render.world import World, idle_frame
from .encoder import VideoEncoder

__all__ = ["BROADCAST_READY_FRAMES", "LiveStream", "SpectatorTrack", "WorldTrack"]

#: 90 kHz RTP video clock: pts are stamped in it so encoders need no rescaling.
VIDEO_TIME_BASE = Fraction(1, 90000)
#: frames rendered and encoded in an executor above this many pixels (measured:
#: ≈ 1 ms for both at 320×176, ≈ 5–8 ms at 1280×704 — too long for the loop).
_EXECUTOR_PIXELS = 320 * 240
#: frames a broadcast stream renders before ``broadcast_ready`` (the spectator
#: tee then has a picture to hand out immediately).
BROADCAST_READY_FRAMES = 3
#: packets a slow spectator may lag behind before it is resynchronised on a key frame
SPECTATOR_BACKLOG = 30
_STOP_VIDEO_POLL = 0.05  # fault flags have no change event; poll them while set


@dataclass
class LiveStream:
    """One interactive stream on a connection (loop thread only)."""

    stream_id: str
    world: World
    width: int
    height: int
    portrait: bool
    broadcast: bool
    started_at: float
    #: frames rendered so far == the number of the next frame
    frames: int = 0
    #: updates accepted and not yet handed to the world, in arrival order: the
    #: prompt and its scene being prepared in the executor. Applied between two
    #: renders (the world is never touched while it renders), in order, each
    #: from the first frame rendered after its scene (and every earlier one) is ready
    pending: list[tuple[str, asyncio.Future[Any]]] = field(default_factory=list)
    #: interactions accepted so far: the next update is interaction number
    #: ``accepted + 1`` (the world seeds its scene with that number)
    accepted: int = 0
    on_interacted: Callable[[LiveStream, int, str], None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class SpectatorTrack(MediaStreamTrack):
    """A viewer's copy of a :class:`WorldTrack`'s encoded packets.

    Fed by the world track on the loop with the very packets the client gets
    (one encode for everyone, as a broadcast server forwards one stream).
    Up to ``SPECTATOR_BACKLOG`` packets wait for a slow viewer; beyond that
    the backlog is dropped, a key frame is requested and the viewer resumes
    from it (inter frames without their references would only decode to
    garbage). ``recv()`` raises ``MediaStreamError`` once either track stops.
    """

    kind = "video"

    def __init__(self, source: WorldTrack) -> None:
        super().__init__()
        self._source: WorldTrack | None = source
        self._backlog: collections.deque[av.Packet[Any]] = collections.deque()
        self._wait_keyframe = True
        self._ended = False
        self._fresh = asyncio.Event()
        self.skipped = 0

    def push(self, packet: av.Packet[Any] | None) -> None:
        """Hand over the next packet (None: the source ended). Loop thread."""
        if packet is None:
            self._ended = True
            self._source = None
        elif self._wait_keyframe and not packet.is_keyframe:
            self.skipped += 1
            return
        elif len(self._backlog) >= SPECTATOR_BACKLOG:
            self.skipped += len(self._backlog) + 1
            self._backlog.clear()
            self._wait_keyframe = True
            if self._source is not None:
                self._source.request_keyframe()
            return
        else:
            self._wait_keyframe = False
            self._backlog.append(packet)
        self._fresh.set()

    async def recv(self) -> av.Packet[Any]:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._backlog:
                return self._backlog.popleft()
            if self._ended:
                self.stop()
                raise MediaStreamError
            self._fresh.clear()
            await self._fresh.wait()

    def stop(self) -> None:
        super().stop()
        if self._source is not None:
            self._source.untee(self)
            self._source = None
        self._fresh.set()  # wake a pending recv() so it can raise


class WorldTrack(MediaStreamTrack):
    """Server video track: paced at ``fps``, idle picture between streams.

    ``recv()`` runs on the loop (called by the client's RTP sender). It
    sleeps until the next frame slot, renders the current stream's next frame,
    stamps it with the hand-off time, encodes it with the track's own
    :class:`~odyssey_sync.local.realtime.encoder.VideoEncoder` (both in the default
    executor for large frames) and returns the ``av.Packet`` with a 90 kHz
    pts; aiortc only packetizes it. If the sender falls behind by more than a
    frame the track resynchronises instead of bursting frames. While
    ``Faults.stop_video`` is set it emits nothing (the connection stays up).
    ``stop()`` makes a pending ``recv()`` raise ``MediaStreamError`` at once.
    """

    kind = "video"

    def __init__(self, ctx: ServerContext, codec: str = "vp8") -> None:
        super().__init__()
        self._ctx = ctx
        self._interval = 1.0 / float(ctx.config.fps)
        self._next_at: float | None = None
        self._origin: float | None = None
        self._last_pts = -1
        self._idle_frames = 0
        self._stopped = asyncio.Event()
        self._encoder = VideoEncoder(codec, float(ctx.config.fps))
        #: the stream being rendered, or None for the idle picture
        self.stream: LiveStream | None = None
        self.frames_sent = 0
        self._spectators: set[SpectatorTrack] = set()

    @property
    def codec(self) -> str:
        """The codec packets are encoded with ("vp8" or "h264")."""
        return self._encoder.codec_name

    @property
    def encoder(self) -> VideoEncoder:
        return self._encoder

    def set_codec(self, codec: str) -> None:
        """Switch the encoder (after negotiation, before the first frame). Loop thread."""
        if codec != self._encoder.codec_name:
            self._encoder = VideoEncoder(codec, float(self._ctx.config.fps))

    def next_frame_due(self) -> float:
        """``time.monotonic()`` at which the next frame will be rendered and stamped.

        Non-blocking, loop thread. An estimate: the next frame slot, or now when
        the track is due or late; the frame's stamp is taken a few ms later
        (wake-up, executor hand-off). Used as a new stream's recording stamp origin.
        """
        now = time.monotonic()
        due = self._next_at
        if due is None or now - due > self._interval:
            return now  # first frame, or behind: _next_packet renders at once
        return max(now, due)

    def request_keyframe(self) -> None:
        """Next packet is a key frame (PLI/FIR from any receiver, new viewer). Any thread."""
        self._encoder.request_keyframe()

    def tee(self) -> SpectatorTrack:
        """A new spectator copy of this track's packets (starts at a key frame). Loop thread."""
        spectator = SpectatorTrack(self)
        if self.readyState != "live":
            spectator.push(None)
        else:
            self._spectators.add(spectator)
            self.request_keyframe()
        return spectator

    def untee(self, spectator: SpectatorTrack) -> None:
        self._spectators.discard(spectator)

    def stop(self) -> None:
        super().stop()
        self._stopped.set()
        spectators, self._spectators = self._spectators, set()
        for spectator in spectators:
            spectator.push(None)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless the track stops first (then MediaStreamError)."""
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), seconds)
        if self.readyState != "live":
            raise MediaStreamError

    async def recv(self) -> av.Packet[Any]:
        while True:
            packet = await self._next_packet()
            if packet is not None:
                return packet

    async def _next_packet(self) -> av.Packet[Any] | None:
        if self.readyState != "live":
            raise MediaStreamError
        while self._ctx.faults.stop_video:
            await self._pause(_STOP_VIDEO_POLL)
        now = time.monotonic()
        if self._next_at is None or now - self._next_at > self._interval:
            self._next_at = now  # first frame, or fell behind / resumed: no burst
        await self._pause(self._next_at - now)
        self._next_at += self._interval

        stream = self.stream
        prompts: list[str] = []
        needs_build = False
        if stream is not None:
            number = stream.frames
            # Updates whose scene is ready, in order, up to the first that is not:
            # acknowledged order is applied order; a scene still being built
            # holds back the ones after it (they show from a later frame).
            ready: list[tuple[str, Any]] = []
            while stream.pending and stream.pending[0][1].done():
                prompt, future = stream.pending.pop(0)
                scene = None
                if not future.cancelled() and future.exception() is None:
                    scene = future.result()
                needs_build = needs_build or scene is None
                ready.append((prompt, scene))
            prompts = [prompt for prompt, _ in ready]
            stream.frames += 1
            world = stream.world
            width, height = stream.width, stream.height

            def render() -> av.VideoFrame:
                # Interactions are applied here, between two renders, so the
                # world (not thread-safe) is only ever used by one thread at a
                # time. Their scenes were prepared in the executor, so this is
                # cheap unless preparing failed (then the world builds it).
                for prompt, scene in ready:
                    world.interact(prompt, number, scene)
                return world.video_frame(number, time.monotonic())
        else:
            number = self._idle_frames
            self._idle_frames += 1
            width, height = self._ctx.frame_size(False)

            def render() -> av.VideoFrame:
                return idle_frame(width, height, number, time.monotonic())

        encoder = self._encoder
        origin = self._origin
        last_pts = self._last_pts

        def produce() -> tuple[av.Packet[Any] | None, int, float]:
            frame = render()
            # The stamp's send time was taken inside render(), right before this
            # encode: the closest point to "handed to the encoder" there is.
            sent = time.monotonic()
            start = origin if origin is not None else sent
            pts = max(last_pts + 1, round((sent - start) * 90000))
            frame.pts = pts
            frame.time_base = VIDEO_TIME_BASE
            return encoder.encode(frame), pts, start

        if width * height > _EXECUTOR_PIXELS or needs_build:
            loop = asyncio.get_running_loop()
            packet, pts, start = await loop.run_in_executor(None, produce)
        else:
            packet, pts, start = produce()
        self._origin = start
        self._last_pts = pts
        if stream is not None:
            if stream.on_interacted is not None:
                for prompt in prompts:
                    stream.on_interacted(stream, number, prompt)
            if stream.frames >= BROADCAST_READY_FRAMES:
                stream.ready.set()
        if self.readyState != "live":
            raise MediaStreamError
        if packet is None:
            return None
        self.frames_sent += 1
        for spectator in list(self._spectators):
            spectator.push(packet)
        return packet
