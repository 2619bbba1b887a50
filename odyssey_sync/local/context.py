"""What the HTTP half and the real-time half of the local server share.

The HTTP half (:mod:`.http`, ``store.py``, ``server.py``) builds one
:class:`ServerContext` and hands it to :func:`odyssey_sync.local.realtime.signaling.setup_realtime`,
which registers the signaling, streamer and WHEP routes on the same
aiohttp application. The real-time half talks back only through the
methods declared here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

from .faults import Faults
from .limits import (
    DEFAULT_CONNECTION_LIMIT,
    DEFAULT_STALE_SESSION_TIMEOUT,
    DEFAULT_STREAM_LIMIT,
)

__all__ = ["ServerConfig", "ServerContext", "StreamSink"]


@dataclass
class ServerConfig:
    """Options of one local server (constructor kwargs of ``LocalOdyssey``).

    Its ``repr`` never shows the API key (``api_key='***'``).
    """

    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    api_key: str | None = None  # None = generate one (printed by ``serve``)
    data_dir: Path | None = None  # None = user cache dir / odyssey-sync / local
    fps: float = 30.0
    #: landscape frame size (width, height); portrait streams use (height, width)
    size: tuple[int, int] = (1280, 704)
    #: "vp8", "h264", or "any" (offer VP8 then H.264, the peer picks)
    codec: str = "vp8"
    #: streamer slots; when all are allocated /sessions/request answers 503
    capacity: int = 1
    #: seconds a stream may last: then ``interactive_stream_error`` with reason
    #: ``session_timeout`` ("Stream ended: credit lease expired") and the server
    #: closes the connection, as the service does (PROTOCOL §17)
    stream_limit: float = DEFAULT_STREAM_LIMIT
    #: seconds a signaling connection may last before the server closes it
    connection_limit: float = DEFAULT_CONNECTION_LIMIT
    #: seconds an allocation whose client vanished without ``client_disconnecting``
    #: keeps its capacity slot
    stale_session_timeout: float = DEFAULT_STALE_SESSION_TIMEOUT
    #: allocations one API key may hold at once (429 CONCURRENT_LIMIT_REACHED beyond)
    max_concurrent_per_key: int = 4
    #: streamed seconds one key may use in total (429 MONTHLY_LIMIT_REACHED beyond);
    #: None = unlimited
    quota_seconds: float | None = None
    #: keys allowed to use bypass_vlm_expansion
    bypass_privileged: bool = True
    auth_token_ttl: int = 3600
    session_token_ttl: int = 600
    signed_url_ttl: int = 3600
    #: render recordings (MP4) when streams end; tests may turn it off for speed
    recordings: bool = True

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key" and value is not None:
                parts.append("api_key='***'")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"ServerConfig({', '.join(parts)})"


class StreamSink(Protocol):
    """Calls the real-time half makes into the HTTP half's state (thread: server loop)."""

    def session_owner(self, session_id: str) -> str | None:
        """The API-key id owning a live allocation, or None when unknown/freed."""

    def verify_session_token(self, token: str, session_id: str) -> bool:
        """True when ``token`` is a valid, unexpired signaling JWT for ``session_id``."""

    def stream_started(
        self,
        *,
        stream_id: str,
        session_id: str,
        width: int,
        height: int,
        fps: float,
        prompt: str,
        applied_prompt: str,
        portrait: bool,
        image: bytes | None,
        broadcast: bool,
        stamp_origin: float | None = None,
    ) -> None:
        """A stream began at frame 0 (``image``: the decoded input image file bytes).

        ``stamp_origin``: the ``time.monotonic()`` value frame 0 is stamped with
        (the streamer's estimate: the sink hears of the stream before frame 0 is
        rendered), so a recording can be stamped ``stamp_origin + i / fps`` in
        line with the live stream; None when unknown.
        """

    def stream_interacted(self, stream_id: str, frame: int, prompt: str) -> None:
        """An ``update`` took effect from frame number ``frame`` of that stream."""

    def stream_ended(self, stream_id: str, frame_count: int) -> None:
        """The stream ended after ``frame_count`` frames; its recording may be rendered."""

    def session_closed(self, session_id: str, *, vanished: bool = False) -> None:
        """The signaling connection ended: free the allocation.

        ``vanished``: the client went away without ``client_disconnecting``
        (and the server did not close it): the allocation keeps its capacity
        slot for ``stale_session_timeout`` seconds instead.
        """


@dataclass
class ServerContext:
    """What every part of a running server shares: its configuration, the sink that
    connects the real-time half to the HTTP half, the fault switches and the bound
    URLs (set once listening)."""

    config: ServerConfig
    sink: StreamSink
    faults: Faults = field(default_factory=Faults)
    #: http://host:port of the bound server (set once listening)
    base_url: str = ""
    #: secret for HS256 tokens and URL signatures (never logged)
    secret: bytes = field(default=b"", repr=False)

    @property
    def ws_base_url(self) -> str:
        return "ws" + self.base_url[len("http"):]

    @property
    def signaling_url(self) -> str:
        """Advertised as ``signalling_url``; /config and /client/{id} live under it."""
        return self.ws_base_url + "/sig"

    def frame_size(self, portrait: bool) -> tuple[int, int]:
        """The stream's ``(width, height)``: the configured size, swapped for portrait."""
        w, h = self.config.size
        return (h, w) if portrait else (w, h)
