"""The local server's WebRTC streamer: one aiortc peer per signaling connection.

PROTOCOL.md §5–§6. The server is the offerer; its offer carries one send-only
video m-section (VP8 and/or constrained-baseline H.264, packetization-mode 1,
per ``ServerConfig.codec``), no audio, and the two server-created data channels
``clientToStreamer`` and ``streamerToClient`` (reliable, ordered, UTF-8 JSON
text). aiortc gathers host candidates before it returns the offer, so they are
all in the SDP and nothing is trickled.

Video comes from a :class:`WorldTrack` that renders at ``ServerConfig.fps``:
a dark stamped idle picture between streams, the stream's world while a stream
runs (frame numbers restart at 0 with every stream). The track encodes its
frames itself (``_rt_encode``: VP8 or H.264, whichever the answer chose) and
hands aiortc ready packets. The client's sender *pulls* them: a frame is
rendered only when the sender asks for the next one, so an overloaded machine
lowers the frame rate but never skips a frame number (a push relay would
overwrite frames the encoder had no time for). WHEP spectators get a
:class:`SpectatorTrack` tee of the same packets — one encode for everyone, as
a broadcast server forwards one stream — and a slow viewer is resynchronised
on a key frame instead of slowing the client.

The application protocol (``interactive_stream_start`` / ``update`` /
``interactive_stream_end`` and the replies) is served by :class:`StreamerSession`.
Inbound messages from both transports (data channel and signaling WebSocket)
go through one queue and are handled strictly in arrival order by one task, so
an ``ack_delay`` fault delays later replies too instead of reordering them.

Threads: everything runs on the server's event loop; rendering + encoding of
large frames, world construction, the scenes of updates (``World.prepare``)
and image decoding run in the loop's default executor so that they do not
stall ICE/DTLS/SCTP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription, candidate_from_sdp

from . import _rt_world
from ._rt_encode import VideoEncoder
from ._rt_rtp import RtpFaultSeam, route_feedback
from .context import ServerContext

__all__ = [
    "BroadcastPublisher",
    "SpectatorTrack",
    "StreamerSession",
    "WorldTrack",
    "codec_preferences",
    "negotiated_video_codec",
]

log = logging.getLogger(__name__)

#: 90 kHz RTP video clock: pts are stamped in it so encoders need no rescaling.
VIDEO_TIME_BASE = Fraction(1, 90000)
#: frames rendered and encoded in an executor above this many pixels (measured:
#: ≈ 1 ms for both at 320×176, ≈ 5–8 ms at 1280×704 — too long for the loop).
_EXECUTOR_PIXELS = 320 * 240
#: frames a broadcast stream renders before ``broadcast_ready`` (the spectator
#: tee then has a picture to hand out immediately).
BROADCAST_READY_FRAMES = 3
#: how long a reply may wait for ``streamerToClient`` to open (start over the
#: WebSocket can arrive before the data channel is up).
_CHANNEL_OPEN_TIMEOUT = 30.0
#: trickled candidates kept while the answer has not arrived yet
_EARLY_CANDIDATE_LIMIT = 64
#: inbound application messages queued per connection before new ones are dropped
_INBOX_LIMIT = 256
#: packets a slow spectator may lag behind before it is resynchronised on a key frame
_SPECTATOR_BACKLOG = 30
_STOP_VIDEO_POLL = 0.05  # fault flags have no change event; poll them while set
#: earliest reply to a start that came over the WebSocket, seconds after receipt.
#: The official Python client arms its reply slot only after its WebSocket send
#: returns (PROTOCOL.md §15 item 3); a reply faster than that is lost and its
#: start_stream() hangs. The real streamer never answers that fast.
_WS_START_MIN_REPLY = 0.05


def codec_preferences(choice: str) -> list[RTCRtpCodecCapability]:
    """aiortc video codec capabilities for ``ServerConfig.codec`` ("vp8", "h264", "any").

    Non-blocking. H.264 is limited to constrained baseline (42001f / 42e01f) with
    packetization-mode 1 — what both official clients decode. RTX stays in so
    NACK retransmissions keep working. Raises ``ValueError`` for other choices.
    """
    if choice not in ("vp8", "h264", "any"):
        raise ValueError(f"codec must be 'vp8', 'h264' or 'any', not {choice!r}")
    caps = RTCRtpSender.getCapabilities("video").codecs
    vp8 = [c for c in caps if c.mimeType.lower() == "video/vp8"]
    h264 = [
        c
        for c in caps
        if c.mimeType.lower() == "video/h264"
        and c.parameters.get("packetization-mode") == "1"
        and str(c.parameters.get("profile-level-id", "")).lower() in ("42001f", "42e01f")
    ]
    rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
    chosen = {"vp8": vp8, "h264": h264, "any": vp8 + h264}[choice]
    return chosen + rtx


def negotiated_video_codec(sdp: str) -> str | None:
    """"vp8" / "h264" — the first video codec of an SDP (what aiortc's sender uses).

    Non-blocking. None when the SDP has no video section or neither codec.
    """
    try:
        description = SessionDescription.parse(sdp)
    except Exception:
        return None
    for media in description.media:
        if media.kind != "video":
            continue
        for codec in media.rtp.codecs:
            name = codec.mimeType.lower()
            if name == "video/vp8":
                return "vp8"
            if name == "video/h264":
                return "h264"
    return None


class BroadcastPublisher(Protocol):
    """What the streamer needs from the broadcast (WHEP) side; see broadcast.py."""

    def publish(self, stream_id: str, source: WorldTrack) -> tuple[str, str]:
        """Open stream ``stream_id`` to spectators; returns ``(webrtc_url, spectator_token)``."""

    async def unpublish(self, stream_id: str) -> None:
        """Close the stream to spectators and drop every viewer."""


@dataclass
class LiveStream:
    """One interactive stream on a connection (loop thread only)."""

    stream_id: str
    world: _rt_world.RenderWorld
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
    Up to ``_SPECTATOR_BACKLOG`` packets wait for a slow viewer; beyond that
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
        elif len(self._backlog) >= _SPECTATOR_BACKLOG:
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
    :class:`~odyssey_sync.local._rt_encode.VideoEncoder` (both in the default
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
                    _rt_world.apply_interaction(world, prompt, number, scene)
                return world.video_frame(number, time.monotonic())
        else:
            number = self._idle_frames
            self._idle_frames += 1
            width, height = self._ctx.frame_size(False)

            def render() -> av.VideoFrame:
                return _rt_world.idle_frame(width, height, number, time.monotonic())

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


def _discard_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _Reject(Exception):
    """Internal: answer the current request with interactive_stream_error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class StreamerSession:
    """The streamer side of one signaling connection (PROTOCOL.md §5–§6).

    Loop thread only. Lifecycle: :meth:`create_offer` → :meth:`accept_answer`
    (+ :meth:`add_remote_candidate`) → :meth:`submit` for every application
    message → :meth:`close` (idempotent; ends a running stream and closes the
    peer connection on the loop so aiortc's encoder work stops).
    """

    def __init__(
        self,
        ctx: ServerContext,
        session_id: str,
        broadcasts: BroadcastPublisher | None = None,
    ) -> None:
        self._ctx = ctx
        self.session_id = session_id
        self._broadcasts = broadcasts
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._track = WorldTrack(ctx, "h264" if ctx.config.codec == "h264" else "vp8")
        self._seam: RtpFaultSeam | None = None
        self._c2s: RTCDataChannel | None = None
        self._s2c: RTCDataChannel | None = None
        self._s2c_open = asyncio.Event()
        #: (message, received at, came over the WebSocket)
        self._inbox: asyncio.Queue[tuple[dict[str, Any], float, bool]] = asyncio.Queue(
            maxsize=_INBOX_LIMIT
        )
        self._worker: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._stream: LiveStream | None = None
        self._timeout: asyncio.TimerHandle | None = None
        self._answered = False
        self._early_candidates: list[dict[str, Any]] = []
        self._closed = False

    @property
    def peer_connection(self) -> RTCPeerConnection:
        """The aiortc peer (for stats and tests)."""
        return self._pc

    @property
    def track(self) -> WorldTrack:
        """The server video track (its encoder, frame counters; for tests)."""
        return self._track

    @property
    def rtp_seam(self) -> RtpFaultSeam | None:
        """The loss/reorder seam on the video sender (None until the answer is applied)."""
        return self._seam

    @property
    def active_stream_id(self) -> str | None:
        """The running stream's id, or None between streams."""
        return self._stream.stream_id if self._stream is not None else None

    # --- negotiation ------------------------------------------------------

    async def create_offer(self) -> str:
        """Build the peer connection and return the offer SDP (candidates included)."""
        pc = self._pc
        transceiver = pc.addTransceiver(self._track, direction="sendonly")
        transceiver.setCodecPreferences(codec_preferences(self._ctx.config.codec))
        route_feedback(transceiver.sender, self._track.request_keyframe)
        self._c2s = pc.createDataChannel("clientToStreamer", ordered=True)
        self._s2c = pc.createDataChannel("streamerToClient", ordered=True)
        self._c2s.on("message", self._on_channel_message)
        self._s2c.on("open", self._s2c_open.set)
        self._worker = asyncio.ensure_future(self._serve())
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        """Apply the client's answer. Raises ``ValueError`` for an unusable SDP."""
        if self._answered:
            raise ValueError("answer already applied")
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:  # aiortc raises ValueError/InvalidStateError/...
            raise ValueError(f"invalid answer: {exc}") from exc
        self._answered = True
        codec = negotiated_video_codec(sdp)
        if codec is not None:
            self._track.set_codec(codec)
        sender = next(
            (t.sender for t in self._pc.getTransceivers() if t.kind == "video"), None
        )
        if sender is not None and sender.transport is not None:
            self._seam = RtpFaultSeam(self._ctx.faults, sender)
            self._seam.install()
        early, self._early_candidates = self._early_candidates, []
        for message in early:
            await self.add_remote_candidate(message)

    def trickle_candidate(self, message: dict[str, Any]) -> None:
        """Add a trickled candidate in the background (loop thread, returns at once).

        Browsers trickle mDNS (``<uuid>.local``) host candidates that aioice may
        spend seconds failing to resolve; awaited inline, every later signaling
        message (an image start, ``client_disconnecting``) would wait behind
        them. The task is tracked and cancelled by :meth:`close`.
        """
        self._spawn(self.add_remote_candidate(message))

    async def add_remote_candidate(self, message: dict[str, Any]) -> None:
        """Add one trickled client candidate; unusable ones are skipped (logged).

        Empty candidate strings (end-of-candidates) are ignored; the
        ``candidate:`` prefix is optional; mDNS (``*.local``) hosts that aiortc
        cannot resolve are skipped after at most 2 s.
        """
        raw = message.get("candidate")
        if not isinstance(raw, str) or not raw.strip():
            return
        if not self._answered:
            if len(self._early_candidates) < _EARLY_CANDIDATE_LIMIT:
                self._early_candidates.append(message)
            return
        text = raw.strip()
        if text.startswith("a="):
            text = text[2:]
        if text.startswith("candidate:"):
            text = text[len("candidate:"):]
        try:
            candidate = candidate_from_sdp(text)
        except Exception:
            log.info("ignoring malformed ICE candidate from session %s", self.session_id)
            return
        mid = message.get("sdpMid")
        index = message.get("sdpMLineIndex")
        candidate.sdpMid = mid if isinstance(mid, str) else None
        candidate.sdpMLineIndex = index if isinstance(index, int) else None
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0  # everything is BUNDLEd on the first m-line
        try:
            await asyncio.wait_for(self._pc.addIceCandidate(candidate), 2.0)
        except Exception:
            # Typically an mDNS name (browser privacy) aioice could not resolve.
            log.info("skipping ICE candidate %s for session %s", candidate.ip, self.session_id)

    # --- application messages --------------------------------------------

    def _on_channel_message(self, data: Any) -> None:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                log.info("ignoring non-UTF-8 data-channel message")
                return
        try:
            message = json.loads(data)
        except ValueError:
            log.info("ignoring non-JSON data-channel message")
            return
        self.submit(message)

    def submit(self, message: Any, *, via_websocket: bool = False) -> None:
        """Queue one application message (from either transport). Non-blocking, loop thread.

        Non-objects, messages without a string ``type`` and unknown types are
        ignored, as the protocol asks. ``via_websocket`` marks a start that
        came over signaling (its reply is held back ``_WS_START_MIN_REPLY``).
        """
        if self._closed or not isinstance(message, dict):
            return
        if not isinstance(message.get("type"), str):
            return
        try:
            self._inbox.put_nowait((message, time.monotonic(), via_websocket))
        except asyncio.QueueFull:
            log.warning("session %s: inbound message queue full, dropping", self.session_id)

    async def _serve(self) -> None:
        while True:
            message, received_at, via_websocket = await self._inbox.get()
            try:
                await self._handle(message, received_at if via_websocket else None)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Never let one bad message end the session, and never send the
                # traceback to the peer: log it here, answer generically.
                log.exception("session %s: error handling %r", self.session_id, message.get("type"))
                await self._send({"type": "interactive_stream_error", "reason": "unknown",
                                  "message": "internal streamer error"})

    async def _handle(self, message: dict[str, Any], ws_received_at: float | None) -> None:
        kind = message["type"]
        if kind == "interactive_stream_start":
            await self._handle_start(message, ws_received_at)
        elif kind == "update":
            await self._handle_update(message)
        elif kind == "interactive_stream_end":
            await self._handle_end()
        elif kind == "_session_timeout":
            await self._handle_timeout(message)
        # anything else: ignored (PROTOCOL.md §6.2 "unknown types are ignored")

    async def _handle_start(self, message: dict[str, Any], ws_received_at: float | None) -> None:
        faults = self._ctx.faults
        if ws_received_at is not None:
            # See _WS_START_MIN_REPLY. Sleeping first (not before the reply) keeps
            # the stream's frame 0 and stream_started together.
            await asyncio.sleep(max(0.0, ws_received_at + _WS_START_MIN_REPLY - time.monotonic()))
        try:
            prompt = message.get("prompt", "")
            portrait = message.get("portrait", True)
            image_url = message.get("input_image_base64")
            broadcast = message.get("broadcast", False)
            bypass = message.get("bypass_vlm_expansion", False)
            if prompt is None:
                prompt = ""
            if not isinstance(prompt, str):
                raise _Reject("invalid_request", "prompt must be a string")
            if not isinstance(portrait, bool) or not isinstance(broadcast, bool):
                raise _Reject("invalid_request", "portrait and broadcast must be booleans")
            if bypass is None:
                bypass = False
            if not isinstance(bypass, bool):
                raise _Reject("invalid_request", "bypass_vlm_expansion must be a boolean")
            if image_url is not None and not isinstance(image_url, str):
                raise _Reject("invalid_image", "input_image_base64 must be a data URL string")
            injected = faults.stream_error
            if injected:
                faults.set(stream_error=None)
                raise _Reject(str(injected), faults.stream_error_message)
            if bypass and not self._ctx.config.bypass_privileged:
                raise _Reject("bypass_not_allowed",
                              "bypass_vlm_expansion is not enabled for this account")
            loop = asyncio.get_running_loop()
            image_bytes: bytes | None = None
            image = None
            if image_url:
                try:
                    image_bytes, image = await loop.run_in_executor(
                        None, _rt_world.decode_data_url, image_url
                    )
                except _rt_world.InvalidImage as exc:
                    raise _Reject("invalid_image", str(exc)) from None
            width, height = self._ctx.frame_size(portrait)
            fps = float(self._ctx.config.fps)
            world = await loop.run_in_executor(
                None, _rt_world.make_world, width, height, prompt, image, fps
            )
            applied = _rt_world.applied_prompt(prompt)
        except _Reject as reject:
            await self._reply({"type": "interactive_stream_error", "reason": reject.reason,
                               "message": reject.message})
            return

        if self._stream is not None:
            # A new start replaces the running stream; the client learns of the
            # end through an unsolicited stream_ended (allowed by §6.2).
            await self._finish_stream()
            await self._send({"type": "stream_ended"})

        stream = LiveStream(
            stream_id="st-" + uuid.uuid4().hex,
            world=world,
            width=width,
            height=height,
            portrait=portrait,
            broadcast=broadcast,
            started_at=time.monotonic(),
            on_interacted=self._report_interaction,
        )
        self._stream = stream
        self._track.stream = stream
        self._sink_call(
            "stream_started",
            stream_id=stream.stream_id,
            session_id=self.session_id,
            width=width,
            height=height,
            fps=fps,
            prompt=prompt,
            applied_prompt=applied,
            portrait=portrait,
            image=image_bytes,
            broadcast=broadcast,
            # Frame 0 is not rendered yet (the sink must know the stream before
            # the client does), so this is the frame's slot, not its stamp: a
            # recording's stamps then line up with the live ones to within a
            # few ms at frame 0 (later live frames follow the wall-clock pacing).
            stamp_origin=self._track.next_frame_due(),
        )
        self._timeout = loop.call_later(
            float(self._ctx.config.session_timeout),
            self.submit,
            {"type": "_session_timeout", "stream_id": stream.stream_id},
        )
        await self._reply(
            {"type": "stream_started", "stream_id": stream.stream_id, "applied_prompt": applied}
        )
        if broadcast:
            self._spawn(self._announce_broadcast(stream))

    async def _handle_update(self, message: dict[str, Any]) -> None:
        prompt = message.get("prompt")
        stream = self._stream
        if stream is None:
            await self._reply({"type": "interactive_stream_error", "reason": "no_active_stream",
                               "message": "update received with no active stream"})
            return
        if not isinstance(prompt, str):
            await self._reply({"type": "interactive_stream_error", "reason": "invalid_request",
                               "message": "update needs a string prompt"})
            return
        # Build the new scene off the loop while frames keep rendering (≈ 35 ms
        # at 1280×704); the track installs it between two renders once ready.
        # Acknowledged now, in arrival order; the world changes from the first
        # frame after the scene is ready.
        stream.accepted += 1
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            None, _rt_world.prepare_scene, stream.world, prompt, stream.accepted
        )
        stream.pending.append((prompt, future))
        await self._reply({"type": "update_acknowledged",
                           "prompt": _rt_world.applied_prompt(prompt)})

    async def _handle_end(self) -> None:
        await self._finish_stream()
        # Replied even without an active stream, so official clients never hang.
        await self._reply({"type": "stream_ended"})

    async def _handle_timeout(self, message: dict[str, Any]) -> None:
        stream = self._stream
        if stream is None or stream.stream_id != message.get("stream_id"):
            return  # that stream already ended
        limit = self._ctx.config.session_timeout
        await self._send({"type": "interactive_stream_error", "reason": "session_timeout",
                          "message": f"maximum stream duration of {limit:g} s reached"})
        await self._finish_stream()
        await self._send({"type": "stream_ended"})

    def _report_interaction(self, stream: LiveStream, frame: int, prompt: str) -> None:
        self._sink_call("stream_interacted", stream.stream_id, frame, prompt)

    async def _announce_broadcast(self, stream: LiveStream) -> None:
        if self._broadcasts is None:
            await self._send({"type": "broadcast_ready", "broadcast_url": None,
                              "webrtc_url": None, "spectator_token": None})
            return
        # Set after BROADCAST_READY_FRAMES frames, or when the stream ends first
        # (stop_video may hold frames back for as long as the stream lasts).
        await stream.ready.wait()
        if self._stream is not stream:
            return
        url, token = self._broadcasts.publish(stream.stream_id, self._track)
        # No HLS is served locally: broadcast_url is null (documented).
        await self._send({"type": "broadcast_ready", "broadcast_url": None,
                          "webrtc_url": url, "spectator_token": token})

    async def _finish_stream(self) -> None:
        stream = self._stream
        if stream is None:
            return
        self._stream = None
        self._track.stream = None
        stream.ready.set()  # a broadcast announcement still waiting gives up
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        # Updates acknowledged but not yet rendered still belong to the stream's record.
        for prompt, future in stream.pending:
            self._report_interaction(stream, stream.frames, prompt)
            # Nobody will install it; retrieve a failure so asyncio does not log it.
            future.add_done_callback(_discard_result)
        stream.pending.clear()
        if stream.broadcast and self._broadcasts is not None:
            await self._broadcasts.unpublish(stream.stream_id)
        self._sink_call("stream_ended", stream.stream_id, stream.frames)

    # --- replies ----------------------------------------------------------

    async def _reply(self, message: dict[str, Any]) -> None:
        """Send a reply to a client request, honouring never_ack / ack_delay."""
        faults = self._ctx.faults
        if faults.never_ack:
            return
        delay = float(faults.ack_delay or 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        await self._send(message)

    async def _send(self, message: dict[str, Any]) -> None:
        channel = self._s2c
        if channel is None or self._closed:
            return
        if channel.readyState != "open":
            try:
                await asyncio.wait_for(self._s2c_open.wait(), _CHANNEL_OPEN_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("session %s: streamerToClient never opened; dropping %s",
                            self.session_id, message.get("type"))
                return
        if channel.readyState == "open":
            channel.send(json.dumps(message))

    def _sink_call(self, name: str, *args: Any, **kwargs: Any) -> None:
        try:
            getattr(self._ctx.sink, name)(*args, **kwargs)
        except Exception:
            log.exception("StreamSink.%s failed", name)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # --- teardown ---------------------------------------------------------

    async def close(self) -> None:
        """End any running stream and close the peer. Idempotent; loop thread."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Task[None]] = list(self._side_tasks)
        if self._worker is not None:
            tasks.append(self._worker)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await self._finish_stream()
        except Exception:
            log.exception("session %s: error ending stream on close", self.session_id)
        if self._seam is not None:
            self._seam.close()
        self._track.stop()
        await self._pc.close()
