"""The streamer side of one signaling connection: PROTOCOL.md §5–§6.

The server is the offerer; its offer carries one send-only video m-section
(VP8 and/or constrained-baseline H.264, packetization-mode 1, per
``ServerConfig.codec``), no audio, and the two server-created data channels
``clientToStreamer`` and ``streamerToClient`` (reliable, ordered, UTF-8 JSON
text). aiortc gathers host candidates before it returns the offer, so they are
all in the SDP and nothing is trickled. Video comes from the connection's
:class:`~.tracks.WorldTrack`.

The application protocol (``interactive_stream_start`` / ``update`` /
``interactive_stream_end`` and the replies) is served by :class:`StreamerSession`.
Inbound messages from both transports (data channel and signaling WebSocket)
go through one queue and are handled strictly in arrival order by one task, so
an ``ack_delay`` fault delays later replies too instead of reordering them.

Threads: everything runs on the server's event loop; world construction, the
scenes of updates (``World.prepare``) and image decoding run in the loop's
default executor so that they do not stall ICE/DTLS/SCTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from ..context import ServerContext
from ..limits import JsonProblem, decode_json, prompt_problem
from ..render.media import decode_data_url
from ..render.world import World, applied_prompt
from .encoder import codec_preferences, negotiated_video_codec
from .rtp import RtpFaultSeam, route_feedback
from .tracks import LiveStream, WorldTrack

__all__ = ["BroadcastPublisher", "StreamerSession"]

log = logging.getLogger(__name__)

#: how long a reply may wait for ``streamerToClient`` to open (start over the
#: WebSocket can arrive before the data channel is up).
_CHANNEL_OPEN_TIMEOUT = 30.0
#: trickled candidates kept while the answer has not arrived yet
_EARLY_CANDIDATE_LIMIT = 64
#: inbound application messages queued per connection before new ones are dropped
_INBOX_LIMIT = 256
#: earliest reply to a start that came over the WebSocket, seconds after receipt.
#: The official Python client arms its reply slot only after its WebSocket send
#: returns (PROTOCOL.md §15 item 3); a reply faster than that is lost and its
#: start_stream() hangs. The real streamer never answers that fast.
_WS_START_MIN_REPLY = 0.05
#: what the service says when a stream reaches its duration limit (PROTOCOL §17)
STREAM_LIMIT_MESSAGE = "Stream ended: credit lease expired"
#: replies that are acknowledgements (the ``drop_acks`` fault withholds them)
_ACK_TYPES = frozenset({"stream_started", "update_acknowledged", "stream_ended"})
#: longest wait for a last message to leave before the server closes a connection
_FLUSH_TIMEOUT = 1.0


class BroadcastPublisher(Protocol):
    """What the streamer needs from the broadcast (WHEP) side; see broadcast.py."""

    def publish(self, stream_id: str, source: WorldTrack) -> tuple[str, str]:
        """Open stream ``stream_id`` to spectators; returns ``(webrtc_url, spectator_token)``."""

    async def unpublish(self, stream_id: str) -> None:
        """Close the stream to spectators and drop every viewer."""



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
        close_connection: Callable[[str], None] | None = None,
    ) -> None:
        self._ctx = ctx
        self.session_id = session_id
        self._broadcasts = broadcasts
        #: called (with a reason) when the server ends the whole connection:
        #: the stream limit closes it, as the service does (PROTOCOL §17)
        self._close_connection = close_connection
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
            message = decode_json(data, unicode_text=False)
        except JsonProblem as exc:
            log.info("ignoring data-channel message: %s", exc.msg)
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
            problem = prompt_problem(prompt)
            if problem is not None:
                raise _Reject("invalid_request", problem)
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
                        None, lambda: decode_data_url(image_url, field="input_image_base64")
                    )
                except ValueError as exc:
                    raise _Reject("invalid_image", str(exc)) from None
            width, height = self._ctx.frame_size(portrait)
            fps = float(self._ctx.config.fps)
            world = await loop.run_in_executor(
                None, lambda: World(width, height, prompt, image, fps=fps)
            )
            applied = applied_prompt(prompt)
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
            float(self._ctx.config.stream_limit),
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
        problem = prompt_problem(prompt)
        if problem is not None:
            await self._reply({"type": "interactive_stream_error", "reason": "invalid_request",
                               "message": problem})
            return
        # Build the new scene off the loop while frames keep rendering (≈ 35 ms
        # at 1280×704); the track installs it between two renders once ready.
        # Acknowledged now, in arrival order; the world changes from the first
        # frame after the scene is ready.
        stream.accepted += 1
        loop = asyncio.get_running_loop()
        # World.prepare with an explicit index is pure: safe while the track renders.
        future = loop.run_in_executor(None, stream.world.prepare, prompt, stream.accepted)
        stream.pending.append((prompt, future))
        await self._reply({"type": "update_acknowledged",
                           "prompt": applied_prompt(prompt)})

    async def _handle_end(self) -> None:
        await self._finish_stream()
        # Replied even without an active stream, so official clients never hang.
        await self._reply({"type": "stream_ended"})

    async def _handle_timeout(self, message: dict[str, Any]) -> None:
        """The stream limit: the service's error, the stream ends, the connection closes."""
        stream = self._stream
        if stream is None or stream.stream_id != message.get("stream_id"):
            return  # that stream already ended
        log.info("session %s: stream %s reached the stream limit (%g s)", self.session_id,
                 stream.stream_id, self._ctx.config.stream_limit)
        await self._send({"type": "interactive_stream_error", "reason": "session_timeout",
                          "message": STREAM_LIMIT_MESSAGE})
        await self._finish_stream()
        await self._flush()
        if self._close_connection is not None:
            # Only requested here: closing the connection closes this session,
            # which cancels the task running this handler.
            self._close_connection("stream limit reached")

    async def _flush(self) -> None:
        """Wait (≤ _FLUSH_TIMEOUT) until messages queued on streamerToClient have left."""
        channel = self._s2c
        deadline = time.monotonic() + _FLUSH_TIMEOUT
        while (channel is not None and channel.readyState == "open"
               and channel.bufferedAmount > 0 and time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        # bufferedAmount counts bytes not yet handed to SCTP; give the transport a
        # moment to put the last chunk on the wire.
        await asyncio.sleep(0.05)

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
        if message.get("type") in _ACK_TYPES and faults.take("drop_acks"):
            log.info("session %s: dropping %s (fault)", self.session_id, message.get("type"))
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
            # ensure_ascii=False: a prompt echoed back costs at most 4 bytes per
            # character instead of 12 for escaped astral characters.
            channel.send(json.dumps(message, ensure_ascii=False))

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
