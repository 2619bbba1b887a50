"""Watch a broadcast stream as a spectator: :func:`connect_to_stream` (WHEP).

A stream started with ``start_stream(..., broadcast=True)`` announces a
:class:`~odyssey_sync.types.BroadcastInfo` (``on_broadcast_ready``); anyone
holding its ``webrtc_url`` and ``spectator_token`` can watch it::

    from odyssey_sync import connect_to_stream

    with connect_to_stream(info.webrtc_url, info.spectator_token) as spectator:
        for frame in spectator.frames(timeout=5.0):
            show(frame.data)

The flow is WHEP (PROTOCOL §8.2), with the spectator as the offerer:

1. ``GET <origin of webrtc_url>/config`` → ICE servers, TURN credentials kept
   (an empty list means host candidates only — no public STUN server is added);
2. a peer connection with two receive-only transceivers, video then audio;
3. a complete (non-trickle) offer, ICE gathering bounded at 5 s;
4. ``POST {webrtc_url}/whep?token=…`` with ``Content-Type: application/sdp``;
   201 + answer SDP + ``Location`` (resolved against the POST URL);
5. wait for the peer connection to reach ``connected``, then ask for a key
   frame with RTCP PLI so the picture starts at once;
6. on :meth:`SpectatorConnection.close`: ``DELETE <Location>`` (only while
   still connected — after the broadcast ended the server has dropped us).

Threads: REST (``/config``, the POST and the DELETE) runs on the caller's
thread with ``requests``; aiortc runs on the connection's own loop thread
(``odyssey-spectator-loop-N``); user callbacks run on the dispatcher's worker
threads, never on the loop. Frames take the same path as the client's: the
loop's track reader converts each decoded picture into a preallocated
:class:`~odyssey_sync._frames.FrameRing` slot; ``on_video_frame`` gets the
latest frame (a slow callback skips frames, it never queues them) and
:meth:`~SpectatorConnection.get_latest_frame` / :meth:`~SpectatorConnection.frames`
pull from the same ring.

Errors (all :mod:`odyssey_sync.errors`): a refused token (401) is
:class:`~odyssey_sync.errors.OdysseyAuthError` (a ``ValueError``); an unknown
stream (404) and every other failure to connect is
:class:`~odyssey_sync.errors.OdysseyConnectionError` (a ``ConnectionError``,
``status`` set when an HTTP status caused it); running out of time is
:class:`~odyssey_sync.errors.OdysseyTimeoutError`. The spectator token never
appears in logs, reprs or exception texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import requests

from ._deadline import Deadline
from ._loop import LoopThread
from .client import ClientStats
from .config import PIXEL_FORMATS
from .errors import OdysseyAuthError, OdysseyConnectionError, OdysseyTimeoutError

if TYPE_CHECKING:
    from aiortc import RTCIceServer, RTCPeerConnection

    from ._dispatch import Dispatcher
    from ._frames import FrameRing, PixelFormat, VideoFrame

__all__ = ["SpectatorConnection", "SpectatorStats", "connect_to_stream"]

log = logging.getLogger("odyssey_sync.spectator")

#: Step budgets of PROTOCOL §2.2 ("WHEP timings (Py)"); each is further
#: clamped by the caller's overall ``timeout``.
ICE_CONFIG_TIMEOUT = 5.0
ICE_GATHERING_TIMEOUT = 5.0
POST_TIMEOUT = 10.0
DELETE_TIMEOUT = 5.0
#: With ``timeout=None`` the wait for ``connected`` still ends: ICE gives up on
#: its own after its checks fail, but we do not rely on that alone.
CONNECT_CAP = 60.0

VideoFrameCallback = Callable[["VideoFrame"], None]
DisconnectedCallback = Callable[[], None]

_ids = itertools.count(1)

# Open connections, closed at interpreter exit if the user forgot to.
_LIVE: weakref.WeakSet[SpectatorConnection] = weakref.WeakSet()


@dataclass(frozen=True)
class SpectatorStats(ClientStats):
    """Frame counters of one spectator connection (a snapshot).

    The fields are those of :class:`~odyssey_sync.ClientStats`, with two
    readings of its own: ``fps`` counts received frames per second since the
    first one, and ``callback_errors`` covers ``on_video_frame`` and
    ``on_disconnected``.
    """

    @classmethod
    def collect(
        cls, ring: FrameRing | None, dispatch: Dispatcher | None, first_frame_at: float | None
    ) -> SpectatorStats:
        """A snapshot of the counters of ``ring`` and ``dispatch`` (zeros without a ring)."""
        if ring is None:
            return cls()
        r = ring.stats
        d = dispatch.stats() if dispatch is not None else None
        elapsed = time.monotonic() - first_frame_at if first_frame_at is not None else 0.0
        return cls(
            received=r.written + r.dropped,
            delivered=d.delivered if d else 0,
            dropped=r.dropped,
            skipped=d.skipped if d else 0,
            fps=(r.written - 1) / elapsed if elapsed > 0 and r.written > 1 else 0.0,
            convert_us_p50=r.convert_us_p50,
            convert_us_p99=r.convert_us_p99,
            delivery_us_p50=d.delivery_us_p50 if d else 0.0,
            delivery_us_p99=d.delivery_us_p99 if d else 0.0,
            callback_errors=d.callback_errors if d else 0,
            events_dropped=d.events_dropped if d else 0,
        )


def _apply_low_latency(pc: RTCPeerConnection) -> None:
    """Release each video frame to the decoder as soon as it is complete (if available)."""
    try:
        from ._jitter import apply_low_latency  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            try:
                apply_low_latency(transceiver.receiver)
            except Exception:  # a changed aiortc seam must not break watching
                log.warning("low-latency receive path unavailable", exc_info=True)


# --------------------------------------------------------------------------- HTTP side


def _redact(url: str) -> str:
    """``url`` without its query string (which carries the spectator token)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def whep_endpoint(webrtc_url: str, token: str) -> str:
    """The WHEP POST URL: ``{webrtc_url}/whep?token=<token, fully escaped>``.

    Every reserved character of the token is escaped (``/`` included, unlike
    the reference client), so a token can never change the path or query.
    """
    return f"{webrtc_url.rstrip('/')}/whep?token={quote(token, safe='')}"


def parse_ice_servers(body: Any) -> list[dict[str, Any]]:
    """``{"iceServers": [...]}`` → ``[{"urls": [...], "username"?, "credential"?}]``.

    Accepts ``urls`` (string or list) or the legacy ``url``; keeps TURN
    credentials (the reference client drops them, so relays never work);
    silently skips malformed entries.
    """
    servers = body.get("iceServers") if isinstance(body, dict) else None
    if not isinstance(servers, list):
        return []
    out: list[dict[str, Any]] = []
    for entry in servers:
        if not isinstance(entry, dict):
            continue
        urls = entry.get("urls", entry.get("url"))
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list):
            continue
        urls = [u for u in urls if isinstance(u, str) and u]
        if not urls:
            continue
        server: dict[str, Any] = {"urls": urls}
        for key in ("username", "credential"):
            if isinstance(entry.get(key), str):
                server[key] = entry[key]
        out.append(server)
    return out


def fetch_ice_servers(
    session: requests.Session, webrtc_url: str, deadline: Deadline
) -> list[dict[str, Any]]:
    """``GET <origin>/config``; any failure → ``[]`` (host candidates only).

    Blocking, caller's thread, at most ``ICE_CONFIG_TIMEOUT`` (and the
    deadline). A failure is logged, not raised: on one machine or a LAN host
    candidates suffice, and a public STUN fallback only slows gathering down
    where there is no internet.
    """
    url = _origin(webrtc_url) + "/config"
    timeout = deadline.clamp(ICE_CONFIG_TIMEOUT)
    if not timeout:  # out of time: the caller's next step reports the timeout
        return []
    try:
        response = session.get(url, timeout=timeout, headers={"Cache-Control": "no-store"})
        if not response.ok:
            log.warning("ICE config %s answered HTTP %d; using host candidates only",
                        url, response.status_code)
            return []
        return parse_ice_servers(response.json())
    except (requests.RequestException, ValueError) as exc:
        log.info("ICE config %s failed (%s); using host candidates only",
                    url, type(exc).__name__)
        return []


def post_offer(
    session: requests.Session, webrtc_url: str, token: str, offer_sdp: str, deadline: Deadline
) -> tuple[str, str | None]:
    """POST the offer; returns ``(answer_sdp, resource_url or None)``.

    Blocking, caller's thread, at most ``POST_TIMEOUT`` (and the deadline).

    Raises:
        OdysseyAuthError: 401 (also a ``ValueError``), the token was refused.
        OdysseyConnectionError: 404 (unknown stream) or any other non-2xx status
            (``status`` set), or the request failed on the network.
        OdysseyTimeoutError: no answer in time.
    """
    url = whep_endpoint(webrtc_url, token)
    shown = _redact(url)
    deadline.check("connect_to_stream")
    try:
        response = session.post(
            url,
            data=offer_sdp.encode(),
            headers={"Content-Type": "application/sdp", "Accept": "application/sdp"},
            timeout=deadline.clamp(POST_TIMEOUT),
            allow_redirects=False,
        )
    except requests.Timeout:
        # ``from None``: the requests exception text contains the URL with the token.
        raise OdysseyTimeoutError(f"WHEP offer to {shown} timed out") from None
    except requests.RequestException as exc:
        raise OdysseyConnectionError(
            f"WHEP offer to {shown} failed: {type(exc).__name__}"
        ) from None
    status = response.status_code
    if status == 401:
        raise OdysseyAuthError("spectator token refused (401)", status=401)
    if status == 404:
        raise OdysseyConnectionError(f"broadcast stream not found (404): {shown}", status=404)
    if not 200 <= status < 300:
        raise OdysseyConnectionError(
            f"WHEP offer to {shown} failed with HTTP {status}", status=status
        )
    answer = response.text
    if "v=0" not in answer[:64]:
        raise OdysseyConnectionError(f"WHEP server at {shown} did not answer with SDP",
                                     status=status)
    location = response.headers.get("Location")
    resource = urljoin(url, location) if location else None
    if resource is None:
        log.warning("WHEP server sent no Location header; leaving will not free the viewer slot")
    return answer, resource


def delete_resource(session: requests.Session, resource: str, timeout: float) -> bool:
    """``DELETE <resource>`` (no auth); True on 2xx. Never raises; bounded."""
    try:
        response = session.delete(resource, timeout=timeout)
    except requests.RequestException as exc:
        log.debug("WHEP DELETE %s failed: %s", _redact(resource), type(exc).__name__)
        return False
    if not response.ok and response.status_code != 404:
        log.debug("WHEP DELETE %s answered HTTP %d", _redact(resource), response.status_code)
    return bool(response.ok)


def _validate(
    webrtc_url: Any,
    spectator_token: Any,
    on_video_frame: Any,
    on_disconnected: Any,
    timeout: Any,
    frame_format: Any,
    ring_size: Any,
) -> None:
    if not isinstance(webrtc_url, str):
        raise TypeError(f"webrtc_url must be a str, not {type(webrtc_url).__name__}")
    parts = urlsplit(webrtc_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"webrtc_url must be an http(s) URL, got {_redact(webrtc_url)!r}")
    if not isinstance(spectator_token, str):
        raise TypeError(f"spectator_token must be a str, not {type(spectator_token).__name__}")
    if not spectator_token.strip():
        raise ValueError("spectator_token must not be empty")
    for name, cb in (("on_video_frame", on_video_frame), ("on_disconnected", on_disconnected)):
        if cb is not None and not callable(cb):
            raise TypeError(f"{name} must be callable or None")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds or None")
        if math.isnan(timeout) or timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
    if frame_format not in PIXEL_FORMATS:
        raise ValueError(f"frame_format must be one of {', '.join(PIXEL_FORMATS)}")
    if isinstance(ring_size, bool) or not isinstance(ring_size, int):
        raise TypeError("ring_size must be an int")
    if ring_size < 2:
        raise ValueError("ring_size must be >= 2 (one slot written, one readable)")


# --------------------------------------------------------------------------- connection


class SpectatorConnection:
    """A live spectator view of a broadcast stream (from :func:`connect_to_stream`).

    Use it as a context manager or call :meth:`close` when done. All methods
    may be called from any thread, including from inside the callbacks.
    """

    def __init__(self, _token: object) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use connect_to_stream() to create a SpectatorConnection")
        self._id = next(_ids)
        self._lock = threading.Lock()
        self._closed = False
        self._connected = False
        self._ended = threading.Event()
        self._resource: str | None = None
        self._pc: RTCPeerConnection | None = None
        self._http = requests.Session()
        self._loop = LoopThread(f"odyssey-spectator-loop-{self._id}")
        self._tasks: list[asyncio.Task[None]] = []
        self._connected_fut: asyncio.Future[None] | None = None
        self._on_video_frame: VideoFrameCallback | None = None
        self._on_disconnected: DisconnectedCallback | None = None
        self._disconnect_notified = False
        self._media_ssrc: int | None = None
        self._ring: FrameRing | None = None
        self._dispatch: Dispatcher | None = None
        self._url_shown = ""
        self._first_frame_at: float | None = None
        self._low_latency = True

    # ---------------------------------------------------------------- public
    @property
    def is_connected(self) -> bool:
        """True while the peer connection is up and :meth:`close` was not called."""
        return self._connected and not self._closed and not self._ended.is_set()

    @property
    def peer_connection(self) -> RTCPeerConnection | None:
        """The underlying aiortc ``RTCPeerConnection`` (for ``getStats``); None after close.

        It lives on the connection's loop thread: only call its coroutines
        through that loop, never directly from your thread.
        """
        return self._pc

    @property
    def stats(self) -> SpectatorStats:
        """A snapshot of the frame counters and latency percentiles (non-blocking, any thread)."""
        return SpectatorStats.collect(self._ring, self._dispatch, self._first_frame_at)

    def get_latest_frame(self, timeout: float | None = None) -> VideoFrame:
        """The newest decoded frame, waiting for the first one if none arrived yet.

        Blocking, any thread. ``timeout=None`` waits until a frame arrives or
        the connection ends; ``0`` only looks; a number bounds the wait
        (:class:`~odyssey_sync.errors.OdysseyTimeoutError` after it). Returns a
        ``VideoFrame`` whose ``data`` is a read-only view of a ring slot, held
        until you release it (``frame.release()`` / ``with frame:``) or take
        ``frame.copy()``.

        Raises:
            OdysseyConnectionError: closed, or ended before any frame arrived.
            OdysseyTimeoutError: no frame within ``timeout``.
        """
        ring = self._ring
        if ring is None or self._closed:
            raise OdysseyConnectionError("spectator connection is closed")
        frame = ring.latest()
        if frame is not None:
            return frame
        return self._wait_newer(-1, timeout, "get_latest_frame")

    def frames(self, timeout: float | None = None) -> Iterator[VideoFrame]:
        """Iterate over frames as they arrive (frames that went by unseen are skipped).

        Blocking, any thread. Each step waits up to ``timeout`` seconds for a
        frame newer than the previous one (``None``: no limit) and raises
        :class:`~odyssey_sync.errors.OdysseyTimeoutError` after it. The
        previous frame is released when the next one is requested (take
        ``frame.copy()`` to keep it). The iteration ends when the connection
        closes or the broadcast ends.
        """
        if self._ring is None or self._closed:
            raise OdysseyConnectionError("spectator connection is closed")
        return self._iter_frames(timeout)

    def _iter_frames(self, timeout: float | None) -> Iterator[VideoFrame]:
        last = -1
        while not self._closed and not self._ended.is_set():
            try:
                frame = self._wait_newer(last, timeout, "frames")
            except OdysseyConnectionError:
                return  # closed or ended while waiting: the iteration is over
            last = frame.seq
            try:
                yield frame
            finally:
                frame.release()

    def _wait_newer(self, after_seq: int, timeout: float | None, what: str) -> VideoFrame:
        # Wait in short slices so that the end of the broadcast (or close()
        # from another thread) ends the wait promptly, whatever the ring does.
        deadline = Deadline(timeout)
        ring = self._ring
        while True:
            if ring is None or self._closed or ring.closed:
                raise OdysseyConnectionError("spectator connection is closed")
            frame = ring.wait_newer(after_seq, timeout=deadline.clamp(0.2))
            if frame is not None:
                return frame
            if self._ended.is_set():
                raise OdysseyConnectionError("the broadcast ended (no newer frame)")
            if deadline.expired:
                raise OdysseyTimeoutError(f"{what}: no frame within {timeout:g} s")

    def close(self, timeout: float = DELETE_TIMEOUT) -> None:
        """Leave the broadcast and release everything. Idempotent.

        Blocking, any thread (also from inside a callback). While still
        connected, the WHEP resource is deleted first (bounded by ``timeout``
        seconds) so the server frees the viewer at once; then the peer
        connection is closed on the loop, the loop thread stopped and joined,
        and the dispatcher workers joined. ``on_disconnected`` is called once
        if it was not already.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            was_connected = self._connected and not self._ended.is_set()
        _LIVE.discard(self)
        log.debug("spectator %d: closing", self._id)
        if was_connected and self._resource is not None:
            delete_resource(self._http, self._resource, timeout)
        self._teardown()

    def disconnect(self, timeout: float = DELETE_TIMEOUT) -> None:
        """Alias of :meth:`close` (the reference client's name)."""
        self.close(timeout)

    def __enter__(self) -> SpectatorConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self.is_connected else ("closed" if self._closed else "ended")
        return f"<SpectatorConnection #{self._id} {self._url_shown} {state}>"

    # -------------------------------------------------------------- internals
    def _teardown(self) -> None:
        loop = self._loop
        if loop.running:
            with contextlib.suppress(Exception):
                # Closing on the loop gives aiortc's decoder threads their sentinel.
                loop.submit(self._close_pc(), timeout=5.0, what="closing the peer connection")
            loop.stop(timeout=5.0)
        self._pc = None
        self._notify_disconnected()
        if self._ring is not None:
            self._ring.close()
        if self._dispatch is not None:
            # drain=True: on_disconnected (just posted) still runs before we
            # return, unless close() was called from a callback (no self-join).
            self._dispatch.stop(timeout=5.0, drain=True)
        self._http.close()

    async def _close_pc(self) -> None:
        for task in self._tasks:
            task.cancel()
        pc = self._pc
        if pc is not None:
            await pc.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)

    def _notify_disconnected(self) -> None:
        with self._lock:
            if self._disconnect_notified:
                return
            self._disconnect_notified = True
        self._ended.set()
        cb = self._on_disconnected
        if cb is not None and self._dispatch is not None:
            self._dispatch.post(cb, name="on_disconnected")

    # ---------------------------------------------------------------- on loop
    async def _make_offer(self, ice_servers: list[dict[str, Any]]) -> str:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

        servers: list[RTCIceServer] = [RTCIceServer(**s) for s in ice_servers]
        # An explicit (possibly empty) list: None would make aiortc add its
        # public STUN default, which stalls gathering without internet.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self._pc = pc
        loop = asyncio.get_running_loop()
        self._connected_fut = fut = loop.create_future()
        # Nobody awaits this future when connecting is abandoned (timeout,
        # close): mark its exception as seen so asyncio does not log it.
        fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        pc.addTransceiver("video", direction="recvonly")
        # The audio transceiver is part of the WHEP offer shape (§8.2);
        # a track that appears on it is drained (PITFALLS: unbounded queue).
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                self._tasks.append(asyncio.ensure_future(self._read_video(track)))
            else:
                self._tasks.append(asyncio.ensure_future(self._drain(track)))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            log.debug("spectator %d: peer %s", self._id, state)
            fut = self._connected_fut
            if state == "connected":
                self._connected = True
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif state in ("failed", "closed"):
                if fut is not None and not fut.done():
                    fut.set_exception(OdysseyConnectionError(
                        f"spectator peer connection {state} before it connected"))
                if self._connected:
                    self._notify_disconnected()

        offer = await pc.createOffer()
        # aiortc gathers every candidate inside setLocalDescription, so the
        # SDP it leaves in localDescription is already complete (non-trickle).
        try:
            await asyncio.wait_for(pc.setLocalDescription(offer), ICE_GATHERING_TIMEOUT)
        except asyncio.TimeoutError:
            raise OdysseyTimeoutError(
                f"ICE gathering did not finish within {ICE_GATHERING_TIMEOUT:g} s"
            ) from None
        return str(pc.localDescription.sdp)

    async def _apply_answer(self, answer_sdp: str) -> None:
        from aiortc import RTCSessionDescription
        from aiortc.sdp import SessionDescription

        assert self._pc is not None
        try:
            answer = RTCSessionDescription(sdp=answer_sdp, type="answer")
            await self._pc.setRemoteDescription(answer)
        except ValueError as exc:
            raise OdysseyConnectionError(f"WHEP answer rejected: {exc}") from exc
        if self._low_latency:
            _apply_low_latency(self._pc)
        with contextlib.suppress(Exception):  # SSRC is only needed for the PLI
            for media in SessionDescription.parse(answer_sdp).media:
                if media.kind == "video" and media.ssrc:
                    self._media_ssrc = int(media.ssrc[0].ssrc)
                    break

    async def _wait_connected(self) -> None:
        assert self._connected_fut is not None
        await self._connected_fut

    async def _request_keyframe(self) -> None:
        """RTCP PLI on the video receiver: the picture starts at the next key frame."""
        pc = self._pc
        if pc is None:
            return
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "video":
                continue
            receiver = transceiver.receiver
            ssrc = self._media_ssrc
            if ssrc is None:
                sources = receiver.getSynchronizationSources()
                ssrc = sources[0].source if sources else None
            if ssrc is None:
                log.debug("spectator %d: no media SSRC known yet; PLI skipped", self._id)
                return
            # aiortc has no public API for PLI; this private coroutine is the
            # one it uses itself after packet loss.
            send_pli = getattr(receiver, "_send_rtcp_pli", None)
            if send_pli is not None:
                await send_pli(ssrc)
                log.debug("spectator %d: PLI sent for ssrc %d", self._id, ssrc)
            return

    async def _read_video(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        ring = self._ring
        assert ring is not None  # set before the peer connection exists
        try:
            while True:
                frame = await track.recv()
                # Converted straight into a ring slot; the dispatcher's video
                # worker (and pullers) wait on the ring, nothing is queued here.
                try:
                    seq = ring.write(frame)
                except Exception:  # a conversion bug must not stop draining the track
                    log.exception("spectator %d: frame conversion failed", self._id)
                    continue
                if seq is not None and self._first_frame_at is None:
                    self._first_frame_at = time.monotonic()
        except MediaStreamError:
            log.debug("spectator %d: video track ended", self._id)
        finally:
            if not self._closed:
                self._notify_disconnected()

    async def _drain(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    # ---------------------------------------------------------------- connect
    def _connect(
        self,
        webrtc_url: str,
        token: str,
        deadline: Deadline,
    ) -> None:
        self._url_shown = _redact(webrtc_url)
        started = time.monotonic()

        def step(name: str) -> None:
            log.debug("spectator %d: %s after %.1f ms", self._id, name,
                      (time.monotonic() - started) * 1000)

        deadline.check("connect_to_stream")
        ice = fetch_ice_servers(self._http, webrtc_url, deadline)
        step(f"ICE config ({len(ice)} servers)")
        self._loop.start(timeout=5.0)
        offer = self._loop.submit(
            self._make_offer(ice), deadline.clamp(ICE_GATHERING_TIMEOUT + 1.0),
            what="creating the WHEP offer",
        )
        step("offer gathered")
        answer, self._resource = post_offer(self._http, webrtc_url, token, offer, deadline)
        step("answer received")
        try:
            self._loop.submit(self._apply_answer(answer), deadline.clamp(5.0),
                              what="applying the WHEP answer")
            wait = deadline.clamp(CONNECT_CAP)
            try:
                self._loop.submit(self._wait_connected(), wait,
                                  what="waiting for the spectator connection")
            except OdysseyTimeoutError:
                raise OdysseyTimeoutError(
                    f"spectator connection to {self._url_shown} not established "
                    f"within {wait:g} s"
                ) from None
            step("peer connected")
            self._loop.submit(self._request_keyframe(), 2.0, what="requesting a key frame")
        except BaseException:
            # We hold a viewer slot on the server: give it back before failing.
            resource, self._resource = self._resource, None
            if resource is not None:
                delete_resource(self._http, resource, min(DELETE_TIMEOUT, 2.0))
            raise


_PRIVATE = object()


def connect_to_stream(
    webrtc_url: str,
    spectator_token: str,
    on_video_frame: VideoFrameCallback | None = None,
    on_disconnected: DisconnectedCallback | None = None,
    debug: bool = False,
    *,
    timeout: float | None = 15.0,
    frame_format: str = "rgb24",
    ring_size: int = 4,
) -> SpectatorConnection:
    """Join a broadcast stream as a spectator (WHEP); returns once video can flow.

    Blocking, caller's thread. ``timeout`` bounds the whole call (ICE config,
    offer, POST, waiting for the connection); ``None`` leaves only the
    per-step limits (config 5 s, gathering 5 s, POST 10 s, connection 60 s).

    Args:
        webrtc_url: ``BroadcastInfo.webrtc_url`` (the WHEP base URL).
        spectator_token: ``BroadcastInfo.spectator_token``; sent only as the
            escaped ``token`` query parameter, never logged.
        on_video_frame: called with each frame, on a dispatcher thread; frames
            that arrive while it runs are skipped (latest wins), never queued.
            Must not keep ``frame.data`` after returning (use ``frame.copy()``).
        on_disconnected: called once, on a dispatcher thread, when the
            connection ends: the broadcast ended, the network failed, or
            :meth:`SpectatorConnection.close` was called.
        debug: log the WHEP exchange and peer states (logger
            ``odyssey_sync.spectator``, level DEBUG; a stderr handler is added
            when logging is not configured).
        timeout: seconds for the whole call, or None (see above).
        frame_format: ``"rgb24"`` (default), ``"bgr24"`` or ``"rgba"``.
        ring_size: frame slots (≥ 2); frames held by you or a callback keep
            their slot, so hold at most ``ring_size - 2`` at once.

    Returns:
        A connected :class:`SpectatorConnection`.

    Raises:
        TypeError, ValueError: bad arguments (before any network call).
        OdysseyAuthError: the token was refused (401); also a ``ValueError``.
        OdysseyConnectionError: unknown stream (404, ``status=404``), another
            HTTP error, or the peer connection failed; also a ``ConnectionError``.
        OdysseyTimeoutError: ``timeout`` expired; also a ``TimeoutError``.
    """
    _validate(webrtc_url, spectator_token, on_video_frame, on_disconnected, timeout,
              frame_format, ring_size)
    if debug:
        _enable_debug_logging()
    from ._dispatch import Dispatcher
    from ._frames import FrameRing

    deadline = Deadline(timeout)
    conn = SpectatorConnection(_PRIVATE)
    conn._on_video_frame = on_video_frame
    conn._on_disconnected = on_disconnected
    conn._ring = FrameRing(ring_size, cast("PixelFormat", frame_format))  # validated above
    conn._dispatch = Dispatcher(name=f"odyssey-spectator-{conn._id}")
    try:
        conn._dispatch.start()
        if on_video_frame is not None:
            conn._dispatch.start_video(conn._ring, on_video_frame)
        conn._connect(webrtc_url, spectator_token, deadline)
    except BaseException:
        with conn._lock:
            conn._closed = True
            conn._disconnect_notified = True  # never connected: nothing to report
        conn._teardown()
        raise
    _LIVE.add(conn)
    log.debug("spectator %d: connected to %s", conn._id, conn._url_shown)
    return conn


def _enable_debug_logging() -> None:
    log.setLevel(logging.DEBUG)
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s: %(message)s"))
        log.addHandler(handler)


def _close_forgotten_spectators() -> None:
    for conn in list(_LIVE):
        with contextlib.suppress(Exception):
            conn.close(timeout=1.0)


# threading._register_atexit runs before the interpreter joins non-daemon
# threads; aiortc's decoder threads are non-daemon and stop only when their
# peer connection closes, so a plain atexit hook would run too late and a
# forgotten spectator would hang interpreter exit.
try:
    threading._register_atexit(_close_forgotten_spectators)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover
    import atexit

    atexit.register(_close_forgotten_spectators)
