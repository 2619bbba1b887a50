"""The WebRTC peers (PROTOCOL §5, §6, §8.2): aiortc, on a loop thread only.

:class:`RtcPeer` (the client) answers the streamer's offer, tracks the two
data channels and adds trickled remote candidates; :class:`WhepPeer` (the
spectator) makes a receive-only WHEP offer. Both run the same *track readers*:

* the video reader awaits each decoded frame and writes it into the frame
  ring (native conversion, GIL released; never ``to_ndarray`` on the loop),
  so the track is drained whether or not anyone consumes frames;
* an audio track, should a server offer one, is drained and discarded
  (aiortc would otherwise queue decoded audio without bound, PITFALLS).

Everything here runs on the event loop; results leave through the
:class:`PeerEvents` callbacks (also called on the loop), which the facade
turns into status changes and dispatcher posts. No user code runs here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from .errors import OdysseyConnectionError

__all__ = [
    "DATA_CHANNEL_FALLBACK_BYTES",
    "PeerEvents",
    "RTCPeerConnection",
    "RtcPeer",
    "WhepPeer",
    "ice_servers_from_config",
    "max_message_size_from_sdp",
]

log = logging.getLogger("odyssey_sync.rtc")

#: used when the remote SDP does not announce ``a=max-message-size`` (§5.2)
DATA_CHANNEL_FALLBACK_BYTES = 16 * 1024
CLIENT_TO_STREAMER = "clientToStreamer"
STREAMER_TO_CLIENT = "streamerToClient"

_MAX_MESSAGE_RE = re.compile(r"^a=max-message-size:(\d+)\s*$", re.MULTILINE)


class FrameSink(Protocol):
    """The part of ``odyssey_sync._frames.FrameRing`` the reader uses."""

    def write(self, frame: Any) -> int | None: ...


class PeerEvents(Protocol):
    """Callbacks of :class:`RtcPeer`, all invoked on the loop thread."""

    def peer_ready(self) -> None:
        """Video track announced and ``clientToStreamer`` open (first time only)."""

    def peer_message(self, message: dict[str, Any]) -> None:
        """A JSON object with a string ``type`` arrived on ``streamerToClient``."""

    def peer_bad_message(self, error: Exception) -> None:
        """A ``streamerToClient`` message could not be parsed (non-fatal)."""

    def peer_failed(self, reason: str) -> None:
        """The peer connection failed or closed on its own (fatal)."""

    def frame_written(self, seq: int) -> None:
        """A video frame was published in the ring with sequence number ``seq``."""


def ice_servers_from_config(servers: list[dict[str, Any]]) -> list[RTCIceServer]:
    """Parsed ICE servers (``_whep.parse_ice_servers``) → aiortc's objects.

    TURN credentials are kept. An empty list means "no STUN/TURN at all"
    (host candidates only) — never a public fallback (§15.8).
    """
    return [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in servers
    ]


def max_message_size_from_sdp(sdp: str) -> int:
    """The remote ``a=max-message-size`` (§5.2), or 16 KiB when absent or ≤ 0."""
    match = _MAX_MESSAGE_RE.search(sdp)
    if match is None:
        return DATA_CHANNEL_FALLBACK_BYTES
    value = int(match.group(1))
    return value if value > 0 else DATA_CHANNEL_FALLBACK_BYTES


class _Peer:
    """What both peers share: the peer connection, the track readers, low latency, close.

    Loop thread only. The video reader awaits each decoded frame and writes
    it into ``sink`` (native conversion, GIL released; never ``to_ndarray``
    on the loop), so the track is drained whether or not anyone consumes
    frames; any other track is drained and discarded.
    """

    def __init__(
        self,
        *,
        ice_servers: list[dict[str, Any]],
        sink: FrameSink,
        on_frame: Callable[[int], None],
        low_latency: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._on_frame = on_frame
        self._low_latency = low_latency
        self._clock = clock
        self._pc = RTCPeerConnection(
            # iceServers=[] (not None): None would make aiortc add a public STUN server.
            RTCConfiguration(iceServers=ice_servers_from_config(ice_servers))
        )
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.frames_received = 0
        self.frames_dropped = 0
        self.low_latency_active = False
        self.video_ended = False
        self._unfit_warned = False
        self._arrivals: collections.deque[float] = collections.deque(maxlen=120)

    @property
    def pc(self) -> RTCPeerConnection:
        """The aiortc peer connection (loop thread only)."""
        return self._pc

    def _install_low_latency(self) -> None:
        if not self._low_latency:
            return
        from ._jitter import apply_low_latency

        for transceiver in self._pc.getTransceivers():
            if transceiver.kind == "video":
                try:
                    apply_low_latency(transceiver.receiver)
                    self.low_latency_active = True
                except Exception:  # a seam change must not break connecting
                    log.warning("could not enable the low-latency receive path", exc_info=True)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_reader(self, track: Any) -> None:
        if track.kind == "video":
            self._spawn(self._read_video(track))
        else:
            # Never used by the interactive API; drained so it cannot grow without bound.
            self._spawn(self._drain(track))

    async def _read_video(self, track: Any) -> None:
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    log.debug("video track ended")
                    return
                self.frames_received += 1
                self._arrivals.append(self._clock())
                try:
                    seq = self._sink.write(frame)
                except ValueError as exc:
                    # The ring's crop does not fit this frame (the stream changed
                    # size): drop it, say so once, keep draining.
                    if not self._unfit_warned:
                        self._unfit_warned = True
                        log.warning("dropping frames the frame geometry does not fit: %s", exc)
                    continue
                except Exception:  # a conversion bug must not stop draining the track
                    log.exception("frame conversion failed")
                    continue
                if seq is None:
                    self.frames_dropped += 1
                else:
                    self._on_frame(seq)
        finally:
            self.video_ended = True
            self._video_ended()

    def _video_ended(self) -> None:
        """Hook: the video track ended (or its reader was cancelled)."""

    @staticmethod
    async def _drain(track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    @property
    def fps(self) -> float:
        """Frames per second over the last (up to) 120 arrivals."""
        arrivals = self._arrivals
        if len(arrivals) < 2:
            return 0.0
        span = arrivals[-1] - arrivals[0]
        return (len(arrivals) - 1) / span if span > 0 else 0.0

    async def close(self) -> None:
        """Close the peer connection (stops aiortc's decoder threads) and readers.

        Idempotent; never raises. No failure event is reported for it.
        """
        if self._closing:
            return
        self._closing = True
        try:
            await self._pc.close()
        except Exception:
            log.debug("error while closing the peer connection", exc_info=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)


class RtcPeer(_Peer):
    """The client's answering peer: data channels, trickled candidates, readiness.

    Loop thread only: construct, call and close it on the loop. Create one
    per ``offer``; the owner closes the previous one before replacing it.

    Args:
        ice_servers: ``/config`` entries (credentials kept; ``[]`` → no STUN).
        sink: where decoded video frames go (``write`` must not block).
        events: the owner's callbacks.
        low_latency: install the complete-frame jitter buffer on each video
            receiver (``odyssey_sync._jitter``).
        prefer_codec: ``"H264"`` or ``"VP8"``: answer with only that codec when
            the offer carries it; ``None``: take the offer's first codec.
    """

    def __init__(
        self,
        *,
        ice_servers: list[dict[str, Any]],
        sink: FrameSink,
        events: PeerEvents,
        low_latency: bool = True,
        prefer_codec: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ice_servers=ice_servers, sink=sink, on_frame=events.frame_written,
                         low_latency=low_latency, clock=clock)
        self._prefer_codec = prefer_codec
        self._events = events
        self._send_channel: Any = None
        self._has_video = False
        self._ready_sent = False
        self._failed = False
        self.max_message_size = DATA_CHANNEL_FALLBACK_BYTES
        self._pc.on("track", self._on_track)
        self._pc.on("datachannel", self._on_datachannel)
        self._pc.on("connectionstatechange", self._on_connection_state)

    # ----------------------------------------------------------- negotiation
    async def accept_offer(self, sdp: str) -> str:
        """Apply the streamer's offer and return our answer SDP (with candidates)."""
        if self._prefer_codec is not None and f" {self._prefer_codec}/90000" in sdp:
            self._prefer(self._prefer_codec)
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self.max_message_size = max_message_size_from_sdp(sdp)
        self._install_low_latency()
        answer = await self._pc.createAnswer()
        # aiortc gathers all local candidates here and puts them into the SDP.
        await self._pc.setLocalDescription(answer)
        local = self._pc.localDescription
        return str(local.sdp)

    def _prefer(self, codec: str) -> None:
        """Answer with only ``codec`` (and its RTX); the offer carries it.

        The streamer sends the first codec of our answer and aiortc keeps the
        offer's order, so choosing means leaving the others out: a receive-only
        video transceiver with these codec preferences, made before the offer
        is applied, is the one the offer's video section binds to. Decoding is
        most of a stream's client cost: H.264 decodes in about a quarter of
        VP8's time here (PITFALLS), hence the default.
        """
        from aiortc import RTCRtpReceiver

        capabilities = RTCRtpReceiver.getCapabilities("video")
        if capabilities is None:
            return
        wanted = f"video/{codec}".lower()
        chosen = [c for c in capabilities.codecs if c.mimeType.lower() in (wanted, "video/rtx")]
        self._pc.addTransceiver("video", direction="recvonly").setCodecPreferences(chosen)

    async def add_remote_candidate(self, message: dict[str, Any]) -> None:
        """Add a trickled candidate (§4.4); empty ones (end-of-candidates) are skipped."""
        raw = message.get("candidate")
        if not isinstance(raw, str) or not raw.strip():
            return
        mid = message.get("sdpMid")
        index = message.get("sdpMLineIndex")
        if mid is None and index is None:
            log.debug("ignoring a candidate with neither sdpMid nor sdpMLineIndex")
            return
        text = raw.strip()
        if text.startswith("a="):
            text = text[2:]
        if text.startswith("candidate:"):
            text = text[len("candidate:"):]
        # aiortc's parser asserts on short input; check the 8 mandatory fields first.
        if len(text.split()) < 8:
            log.debug("ignoring a malformed remote candidate")
            return
        try:
            candidate = candidate_from_sdp(text)
        except (ValueError, IndexError, AssertionError):
            log.debug("ignoring a malformed remote candidate")
            return
        candidate.sdpMid = mid if isinstance(mid, str) else None
        candidate.sdpMLineIndex = index if isinstance(index, int) else None
        await self._pc.addIceCandidate(candidate)

    # -------------------------------------------------------------- channels
    def _on_datachannel(self, channel: Any) -> None:
        label = channel.label
        if label == CLIENT_TO_STREAMER:
            self._send_channel = channel
            if channel.readyState == "open":
                self._check_ready()
            else:
                channel.on("open", self._check_ready)
            channel.on("close", lambda: self._lost("data channel clientToStreamer closed"))
        elif label == STREAMER_TO_CLIENT:
            channel.on("message", self._on_channel_message)
        else:
            log.debug("ignoring data channel %r", label)

    def _on_channel_message(self, data: str | bytes) -> None:
        try:
            message = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            self._events.peer_bad_message(
                OdysseyConnectionError(f"unparseable streamer message: {exc}")
            )
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._events.peer_bad_message(
                OdysseyConnectionError("streamer message without a string 'type'")
            )
            return
        self._events.peer_message(message)

    @property
    def channel_open(self) -> bool:
        """True while ``clientToStreamer`` is open."""
        return self._send_channel is not None and self._send_channel.readyState == "open"

    def send(self, text: str) -> None:
        """Send a JSON text on ``clientToStreamer`` (loop thread).

        Raises :class:`OdysseyConnectionError` when the channel is not open.
        """
        if not self.channel_open:
            raise OdysseyConnectionError("data channel clientToStreamer is not open")
        self._send_channel.send(text)

    # ---------------------------------------------------------------- tracks
    def _on_track(self, track: Any) -> None:
        self._start_reader(track)
        if track.kind == "video":
            self._has_video = True
            self._check_ready()


    # ------------------------------------------------------------- readiness
    def _check_ready(self) -> None:
        if self._ready_sent or self._closing:
            return
        if self._has_video and self.channel_open:
            self._ready_sent = True
            self._events.peer_ready()

    @property
    def missing(self) -> list[str]:
        """What readiness still waits for: ``video_track`` and/or ``data_channel``."""
        missing = []
        if not self._has_video:
            missing.append("video_track")
        if not self.channel_open:
            missing.append("data_channel")
        return missing

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        log.debug("peer connection state: %s", state)
        if state in ("failed", "closed"):
            self._lost(f"peer connection {state}")

    def _lost(self, reason: str) -> None:
        if self._closing or self._failed:
            return
        self._failed = True
        self._events.peer_failed(reason)


class WhepPeer(_Peer):
    """The spectator's offering peer (WHEP, PROTOCOL §8.2): receive-only, no data channels.

    Loop thread only. :meth:`make_offer` returns a complete (non-trickle)
    offer with a video and an audio receive-only transceiver;
    :meth:`accept_answer` applies the server's answer; :meth:`wait_connected`
    resolves once the peer connection is up; :meth:`request_keyframe` asks
    for a key frame so the picture starts at once. ``on_ended`` runs (on the
    loop) when the connection fails or closes after it was up, or the video
    track ends.
    """

    def __init__(
        self,
        *,
        ice_servers: list[dict[str, Any]],
        sink: FrameSink,
        on_frame: Callable[[int], None],
        on_ended: Callable[[], None],
        low_latency: bool = True,
    ) -> None:
        super().__init__(ice_servers=ice_servers, sink=sink, on_frame=on_frame,
                         low_latency=low_latency)
        self._on_ended = on_ended
        self._media_ssrc: int | None = None
        self.connected = False
        self._connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Nobody awaits it when connecting is abandoned: mark its exception as seen.
        self._connected.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._pc.on("track", self._start_reader)
        self._pc.on("connectionstatechange", self._on_connection_state)

    async def make_offer(self, gathering_timeout: float) -> str:
        """Our complete offer SDP; ICE gathering bounded by ``gathering_timeout``."""
        from .errors import OdysseyTimeoutError

        self._pc.addTransceiver("video", direction="recvonly")
        # The audio transceiver is part of the WHEP offer shape (§8.2); a track
        # that appears on it is drained (PITFALLS: unbounded queue).
        self._pc.addTransceiver("audio", direction="recvonly")
        offer = await self._pc.createOffer()
        # aiortc gathers every candidate inside setLocalDescription, so the SDP
        # it leaves in localDescription is already complete (non-trickle).
        try:
            await asyncio.wait_for(self._pc.setLocalDescription(offer), gathering_timeout)
        except asyncio.TimeoutError:
            raise OdysseyTimeoutError(
                f"ICE gathering did not finish within {gathering_timeout:g} s"
            ) from None
        return str(self._pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        """Apply the WHEP answer; :class:`OdysseyConnectionError` when it is unusable."""
        from aiortc.sdp import SessionDescription

        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except ValueError as exc:
            raise OdysseyConnectionError(f"WHEP answer rejected: {exc}") from exc
        self._install_low_latency()
        with contextlib.suppress(Exception):  # the SSRC is only needed for the PLI
            for media in SessionDescription.parse(sdp).media:
                if media.kind == "video" and media.ssrc:
                    self._media_ssrc = int(media.ssrc[0].ssrc)
                    break

    async def wait_connected(self) -> None:
        """Return once the peer connection is ``connected``; raise if it failed first."""
        await asyncio.shield(self._connected)

    async def request_keyframe(self) -> None:
        """RTCP PLI on the video receiver: the picture starts at the next key frame."""
        for transceiver in self._pc.getTransceivers():
            if transceiver.kind != "video":
                continue
            receiver = transceiver.receiver
            ssrc = self._media_ssrc
            if ssrc is None:
                sources = receiver.getSynchronizationSources()
                ssrc = sources[0].source if sources else None
            # aiortc has no public API for PLI; this private coroutine is the one
            # it uses itself after packet loss.
            send_pli = getattr(receiver, "_send_rtcp_pli", None)
            if ssrc is not None and send_pli is not None:
                await send_pli(ssrc)
            return

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        log.debug("spectator peer connection state: %s", state)
        if state == "connected":
            self.connected = True
            if not self._connected.done():
                self._connected.set_result(None)
        elif state in ("failed", "closed"):
            if not self._connected.done():
                self._connected.set_exception(OdysseyConnectionError(
                    f"spectator peer connection {state} before it connected"))
            if self.connected and not self._closing:
                self._on_ended()

    def _video_ended(self) -> None:
        if self.connected and not self._closing:
            self._on_ended()
