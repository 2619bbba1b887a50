"""Sender-side seams on aiortc's video RTP path: deterministic loss/reorder, RTCP feedback.

Both seams replace one *instance* attribute of an aiortc object (nothing is
patched at class or module level, so other peer connections in the process are
untouched):

* :class:`RtpFaultSeam` wraps ``RTCDtlsTransport._send_rtp`` of the transport a
  video sender uses. Every outgoing RTP packet whose SSRC is the sender's
  *media* SSRC gets a running index (0, 1, 2, …, per peer connection). With
  ``Faults.drop_every = N`` the packets with ``index % N == N - 1`` are not sent;
  with ``Faults.reorder_every = N`` the packets with ``index % N == N - 2`` and
  ``N - 1`` are sent in swapped order (``N`` = 1 is treated as 2: every pair
  swapped). Retransmissions (RTX SSRC) and RTCP are never touched, so a receiver
  that NACKs recovers every dropped packet — the pattern is reproducible
  packet-for-packet, which is what a jitter-buffer test needs. A packet held
  back for a swap is flushed after 100 ms if no successor arrives (e.g. when
  video stops), so nothing is lost by reordering alone.

* :func:`route_feedback` sits in front of a sender's RTCP input: PLI/FIR
  become key-frame requests to the streamer's own encoder (:mod:`.encoder`),
  REMB is dropped (the bitrate is fixed by that encoder; aiortc's encoders
  would rebuild on every REMB change of more than 10 %), and everything else
  (NACK, receiver reports) passes to aiortc unchanged.

Both run on the peer connection's event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..faults import Faults

__all__ = ["RtpFaultSeam", "route_feedback"]

log = logging.getLogger(__name__)

_FLUSH_AFTER = 0.1  # seconds a packet held for a swap may wait for its successor


def _is_rtcp(data: bytes) -> bool:
    # Same test as aiortc.rtp.is_rtcp: RTCP packet types 192..208 sit where RTP has M+PT.
    return len(data) >= 2 and 192 <= data[1] <= 208


class RtpFaultSeam:
    """Deterministic loss/reorder of one video sender's RTP packets (see module docstring).

    Non-blocking to construct; :meth:`install` must run on the loop once the
    sender's transport is final (after the remote description is applied,
    because BUNDLE may swap transports). Counters: :attr:`sent`, :attr:`dropped`,
    :attr:`swapped`.
    """

    def __init__(self, faults: Faults, sender: Any) -> None:
        self._faults = faults
        self._sender = sender
        self._ssrc = int(sender._ssrc).to_bytes(4, "big")
        self._original: Callable[[bytes], Awaitable[None]] | None = None
        self._held: bytes | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._index = 0
        self.sent = 0
        self.dropped = 0
        self.swapped = 0

    def install(self) -> None:
        """Wrap the sender's transport. Idempotent; loop thread."""
        if self._original is not None:
            return
        transport = self._sender.transport
        self._original = transport._send_rtp
        transport._send_rtp = self._send

    def _is_media(self, data: bytes) -> bool:
        return len(data) >= 12 and not _is_rtcp(data) and data[8:12] == self._ssrc

    async def _send(self, data: bytes) -> None:
        original = self._original
        assert original is not None
        if not self._is_media(data):
            await original(data)
            return
        index = self._index
        self._index += 1
        drop_every = int(self._faults.drop_every or 0)
        reorder_every = int(self._faults.reorder_every or 0)
        if drop_every > 0 and index % drop_every == drop_every - 1:
            self.dropped += 1
            return
        held, self._held = self._held, None
        if held is not None:
            self._cancel_flush()
            await self._forward(data)
            await self._forward(held)
            self.swapped += 1
            return
        if reorder_every > 0:
            n = max(2, reorder_every)
            if index % n == n - 2:
                self._held = data
                self._flush = asyncio.get_running_loop().call_later(
                    _FLUSH_AFTER, self._schedule_flush
                )
                return
        await self._forward(data)

    async def _forward(self, data: bytes) -> None:
        assert self._original is not None
        await self._original(data)
        self.sent += 1

    def _cancel_flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def _schedule_flush(self) -> None:
        self._flush = None
        held, self._held = self._held, None
        if held is not None:
            task = asyncio.ensure_future(self._forward_quietly(held))
            task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    async def _forward_quietly(self, data: bytes) -> None:
        # ConnectionError: the transport closed meanwhile, nothing to deliver to.
        with contextlib.suppress(ConnectionError):
            await self._forward(data)

    def close(self) -> None:
        """Drop a held packet and its timer. Loop thread; idempotent."""
        self._cancel_flush()
        self._held = None


def route_feedback(sender: Any, request_keyframe: Callable[[], None]) -> None:
    """Route a sender's key-frame requests to our encoder; drop REMB (module docstring).

    Loop thread, non-blocking; call right after the sender is created. PLI and
    FIR call ``request_keyframe`` (aiortc's own key-frame flag only reaches its
    built-in encoder, which a track of pre-encoded packets bypasses); NACK and
    receiver reports go on to aiortc as before.
    """
    from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket):
            if packet.fmt == RTCP_PSFB_APP:
                return  # REMB: the bitrate is ours (see module docstring)
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                request_keyframe()
        await original(packet)

    sender._handle_rtcp_packet = handle
