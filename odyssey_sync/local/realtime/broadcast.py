"""Broadcast spectators over WHEP (PROTOCOL.md §8), served by the local server itself.

The real service publishes to a MediaMTX server; here the streamer hands the
broadcast stream's encoded video (a :class:`~odyssey_sync.local.realtime.tracks.SpectatorTrack`
tee of its :class:`~odyssey_sync.local.realtime.tracks.WorldTrack`) straight to a
:class:`BroadcastHub`, which answers WHEP on the same host and port:

* ``webrtc_url`` = ``{base_url}/live/{stream_id}``;
* ``POST {webrtc_url}/whep?token=…`` (or ``Authorization: Bearer …``) with an
  ``application/sdp`` offer (recvonly video, usually recvonly audio too) →
  ``201`` with the answer SDP (video send-only; audio answered ``inactive``,
  since there is no audio) and ``Location: /live/{stream_id}/whep/{viewer}``;
* ``401`` for a missing/bad token or one minted for another stream, ``404``
  for an unknown or ended stream, ``400`` for an unusable offer;
* ``DELETE {Location}`` → ``204`` without auth (``404`` when already gone);
* when the stream ends, every viewer's peer connection is closed.

Spectator tokens are ``spt_<nonce>.<HMAC-SHA256(secret, stream_id, nonce)>``:
unguessable, scoped to one stream, checked in constant time, never logged.
No HLS is served: ``broadcast_url`` in ``broadcast_ready`` is ``null``.

Loop thread only (aiohttp handlers and the streamer share the server loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass, field

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from ..context import ServerContext
from .encoder import codec_preferences
from .rtp import route_feedback
from .tracks import WorldTrack

__all__ = ["BroadcastHub"]

log = logging.getLogger(__name__)

_TOKEN_PREFIX = "spt_"
#: how long one WHEP answer (ICE gathering included) may take before 503
_ANSWER_TIMEOUT = 10.0


@dataclass
class _Broadcast:
    stream_id: str
    source: WorldTrack
    viewers: dict[str, RTCPeerConnection] = field(default_factory=dict)


class BroadcastHub:
    """Registry of broadcast streams and their WHEP viewers (loop thread only)."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._streams: dict[str, _Broadcast] = {}
        self._closed = False

    # --- tokens -----------------------------------------------------------

    def _mac(self, stream_id: str, nonce: str) -> str:
        msg = f"spectator\x00{stream_id}\x00{nonce}".encode()
        return hmac.new(self._ctx.secret or b"\x00", msg, hashlib.sha256).hexdigest()

    def mint_token(self, stream_id: str) -> str:
        """A fresh spectator token for ``stream_id``. Non-blocking."""
        nonce = secrets.token_urlsafe(12)
        return f"{_TOKEN_PREFIX}{nonce}.{self._mac(stream_id, nonce)}"

    def check_token(self, token: str, stream_id: str) -> bool:
        """True when ``token`` was minted by this server for ``stream_id``."""
        if not token.startswith(_TOKEN_PREFIX):
            return False
        nonce, sep, mac = token[len(_TOKEN_PREFIX):].partition(".")
        if not sep or not nonce:
            return False
        return hmac.compare_digest(mac, self._mac(stream_id, nonce))

    # --- producer side (called by the streamer) ---------------------------

    def publish(self, stream_id: str, source: WorldTrack) -> tuple[str, str]:
        """Open ``stream_id`` to spectators; returns ``(webrtc_url, spectator_token)``.

        Every viewer gets a tee of ``source``'s encoded packets, so viewers
        negotiate the producer's codec and their PLI/FIR reach its encoder.
        """
        self._streams[stream_id] = _Broadcast(stream_id, source)
        return f"{self._ctx.base_url}/live/{stream_id}", self.mint_token(stream_id)

    async def unpublish(self, stream_id: str) -> None:
        """Close ``stream_id`` to spectators and close every viewer. Idempotent."""
        entry = self._streams.pop(stream_id, None)
        if entry is None:
            return
        viewers = list(entry.viewers.values())
        entry.viewers.clear()
        await asyncio.gather(*(pc.close() for pc in viewers), return_exceptions=True)

    def viewer_count(self, stream_id: str) -> int:
        entry = self._streams.get(stream_id)
        return len(entry.viewers) if entry is not None else 0

    async def close(self) -> None:
        """Drop every broadcast and viewer (server shutdown). Idempotent."""
        self._closed = True
        for stream_id in list(self._streams):
            await self.unpublish(stream_id)

    # --- WHEP -------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Register ``POST /live/{id}/whep`` and ``DELETE /live/{id}/whep/{viewer}``."""
        app.router.add_post("/live/{stream_id}/whep", self._handle_post)
        app.router.add_delete("/live/{stream_id}/whep/{viewer_id}", self._handle_delete)

    @staticmethod
    def _token_of(request: web.Request) -> str:
        token = request.query.get("token", "")
        if not token:
            auth = request.headers.get("Authorization", "")
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer":
                token = value.strip()
        return token

    async def _handle_post(self, request: web.Request) -> web.Response:
        stream_id = request.match_info["stream_id"]
        entry = self._streams.get(stream_id)
        if entry is None or self._closed:
            return web.json_response({"detail": "stream not found"}, status=404)
        if not self.check_token(self._token_of(request), stream_id):
            return web.json_response({"detail": "invalid spectator token"}, status=401)
        content_type = request.content_type
        if content_type not in ("application/sdp", "text/plain", "application/octet-stream"):
            return web.json_response(
                {"detail": "offer must be Content-Type: application/sdp"}, status=415
            )
        offer = await request.text()
        if "m=video" not in offer:
            return web.json_response({"detail": "offer has no video section"}, status=400)

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            await asyncio.wait_for(self._answer(pc, entry, offer), _ANSWER_TIMEOUT)
        except asyncio.TimeoutError:
            await pc.close()
            return web.json_response({"detail": "answer timed out"}, status=503)
        except Exception as exc:
            await pc.close()
            log.info("WHEP offer for %s rejected: %s", stream_id, exc)
            return web.json_response({"detail": "unusable SDP offer"}, status=400)
        if self._streams.get(stream_id) is not entry:  # ended while we negotiated
            await pc.close()
            return web.json_response({"detail": "stream not found"}, status=404)

        viewer_id = uuid.uuid4().hex
        entry.viewers[viewer_id] = pc

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            gone = pc.connectionState in ("failed", "closed")
            if gone and entry.viewers.pop(viewer_id, None) is not None:
                await pc.close()

        return web.Response(
            status=201,
            body=pc.localDescription.sdp.encode(),
            content_type="application/sdp",
            headers={"Location": f"/live/{stream_id}/whep/{viewer_id}"},
        )

    async def _answer(self, pc: RTCPeerConnection, entry: _Broadcast, offer: str) -> None:
        source = entry.source
        track = source.tee()
        try:
            # Created before the offer is applied, so aiortc binds the offered
            # video m-section to it and negotiates with its preferences: one
            # encode serves every viewer, so only the producer's codec is accepted.
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(codec_preferences(source.codec))
            route_feedback(transceiver.sender, source.request_keyframe)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception:
            track.stop()
            raise
        # Audio transceivers get no track: aiortc answers them "inactive".
        await pc.setLocalDescription(await pc.createAnswer())

    async def _handle_delete(self, request: web.Request) -> web.Response:
        stream_id = request.match_info["stream_id"]
        viewer_id = request.match_info["viewer_id"]
        entry = self._streams.get(stream_id)
        pc = entry.viewers.pop(viewer_id, None) if entry is not None else None
        if pc is None:
            return web.json_response({"detail": "viewer not found"}, status=404)
        with contextlib.suppress(Exception):
            await pc.close()
        return web.Response(status=204)
