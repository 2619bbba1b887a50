"""Client configuration: one frozen, validated dataclass.

``Odyssey(api_key, **kwargs)`` builds a :class:`ClientConfig` from its keyword
arguments; every value is checked here, at construction, so a typo or a
negative timeout fails before any thread starts or any byte leaves the machine.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ._convert import FRAME_FORMATS, FrameFormat
from ._resize import FrameGeometry, ResizeFilter

__all__ = [
    "DEFAULT_API_URL",
    "FRAME_FORMATS",
    "MAX_LIST_LIMIT",
    "MAX_LIST_OFFSET",
    "MAX_PROMPT_CHARS",
    "MAX_SCRIPTS_PER_BATCH",
    "MAX_SCRIPT_MS",
    "ClientConfig",
]

#: The Odyssey API, used when neither ``api_url=`` nor ``$ODYSSEY_API_URL`` is set.
DEFAULT_API_URL = "https://api.odyssey.ml"

# Documented limits, checked client-side before any network call (the message
# of the ``ValueError`` names the limit). They match the embedded server's.
#: Longest prompt, in characters (``start_stream``, ``interact``, script prompts).
MAX_PROMPT_CHARS = 10_000
#: Longest simulation script: the ``timestamp_ms`` of its ``end`` entry (10 min).
MAX_SCRIPT_MS = 10 * 60 * 1000
#: Most scripts in one batch (``simulate(scripts=[...])``).
MAX_SCRIPTS_PER_BATCH = 16
#: Largest page of a list call (``limit=``); PROTOCOL §3.8–3.9.
MAX_LIST_LIMIT = 100
#: Largest ``offset=`` of a list call (the range of a signed 64-bit integer).
MAX_LIST_OFFSET = 2**63 - 1

#: Pixel layouts the frame ring can produce (``VideoFrame.data`` channel order).


def _default_api_url() -> str:
    # Read when the config is built (not at import), like the reference client,
    # so tests and scripts may set the variable after importing the package.
    return os.environ.get("ODYSSEY_API_URL") or DEFAULT_API_URL


@dataclass(frozen=True)
class ClientConfig:
    """Every tunable of :class:`odyssey_sync.Odyssey`, validated on construction.

    Timeouts are in seconds; ``None`` means "no limit" only where stated.

    Attributes:
        api_url: REST base URL (default ``$ODYSSEY_API_URL`` or ``https://api.odyssey.ml``).
        debug: log protocol details at DEBUG level on the ``odyssey_sync`` logger.
        connect_timeout: budget of the whole ``connect()``: allocation (queueing
            included), signaling retries and WebRTC readiness share it.
        request_timeout: per HTTP request (REST).
        stream_timeout: default of ``start_stream`` / ``interact`` / ``end_stream``.
        max_retries: retries of the signaling step (0 disables retries).
        initial_retry_delay: first retry delay.
        max_retry_delay: cap of the retry delay.
        retry_backoff_multiplier: delay = min(initial × multiplier^n, max).
        queue_timeout: how long to keep polling while every streamer is busy (503); 0 fails at once.
        ring_size: frame slots in the ring (≥ 2: one being written, one readable).
        frame_format: ``"rgb24"`` (default, like the reference), ``"bgr24"`` (OpenCV) or ``"rgba"``.
        callback_workers: dispatcher threads (1 = events and video share a
            worker, which serialises them; 2 (default) = one for ordered events,
            one for video frames).
        low_latency: release each video frame to the decoder as soon as it is
            complete (saves about one frame interval); ``False`` keeps aiortc's behaviour.
        enable_telemetry: send lifecycle/error events to ``{api_url}/telemetry`` (off by default).
        event_queue_size: bound of the ordered event queue (events beyond it
            are dropped and counted).
        resume: keep the session going across the service's stream and
            connection limits and across lost connections (see the README's
            "Long-running sessions"); ``False`` (default) behaves like the
            official clients: the stream ends and ``frames()`` stops.
        stream_limit: the service's per-stream limit in seconds (150); with
            ``resume`` the next stream is brought up a little before it.
            ``None``: no planned stream handover.
        connection_limit: the service's per-connection limit in seconds
            (3600); ``None``: no planned connection handover.
        handover_lead: how long before a limit the handover starts (default:
            half the limit, at most 10 s).
        stall_timeout: with ``resume``, a running stream that delivers no
            frame for this long is recovered as lost.
        resume_timeout: budget of one recovery (reconnecting with backoff).
        resume_image: ``"last"`` (default): the next stream starts from the
            last received frame (image-to-video) so the picture continues;
            ``"original"``: from the original prompt and image.
        frame_size: ``(width, height)`` of delivered frames: each decoded
            frame is converted and resized in one native pass, and the ring's
            slots have this size (``VideoFrame.source_width/height`` keep the
            decoded size). ``None`` (default): the stream's own size.
        resize: ``"area"`` (default; exact box filter) or ``"bilinear"``.
        crop: ``(x, y, width, height)`` in source pixels, taken before resizing
            (a centre square, a region of interest); ``None``: the whole frame.
        prefer_codec: ``"h264"`` (default) or ``"vp8"``: when the streamer
            offers several video codecs, answer with this one (H.264 decodes
            in about a quarter of VP8's time); ``None``: the streamer's first.
    """

    api_url: str = field(default_factory=_default_api_url)
    debug: bool = False
    connect_timeout: float = 60.0
    request_timeout: float = 10.0
    stream_timeout: float = 30.0
    max_retries: int = 5
    initial_retry_delay: float = 1.0
    max_retry_delay: float = 2.0
    retry_backoff_multiplier: float = 2.0
    queue_timeout: float = 30.0
    ring_size: int = 4
    frame_format: FrameFormat = "rgb24"
    callback_workers: int = 2
    low_latency: bool = True
    enable_telemetry: bool = False
    event_queue_size: int = 1024
    resume: bool = False
    stream_limit: float | None = 150.0
    connection_limit: float | None = 3600.0
    handover_lead: float | None = None
    stall_timeout: float = 5.0
    resume_timeout: float = 60.0
    resume_image: Literal["last", "original"] = "last"
    frame_size: tuple[int, int] | None = None
    resize: ResizeFilter = "area"
    crop: tuple[int, int, int, int] | None = None
    prefer_codec: Literal["h264", "vp8"] | None = "h264"

    def __post_init__(self) -> None:
        if not isinstance(self.api_url, str) or not self.api_url.strip():
            raise TypeError("api_url must be a non-empty string")
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must start with http:// or https://, got {self.api_url!r}")
        for name in ("debug", "low_latency", "enable_telemetry", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool")
        for name in ("connect_timeout", "request_timeout", "stream_timeout", "stall_timeout",
                     "resume_timeout"):
            _positive(name, getattr(self, name))
        for name in ("stream_limit", "connection_limit", "handover_lead"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        self.geometry  # noqa: B018 - validated by the frame path's own type (TypeError/ValueError)
        if self.prefer_codec not in ("h264", "vp8", None):
            raise ValueError(
                f"prefer_codec must be 'h264', 'vp8' or None, got {self.prefer_codec!r}")
        if self.resume_image not in ("last", "original"):
            raise ValueError(
                f"resume_image must be 'last' or 'original', got {self.resume_image!r}")
        for name in ("initial_retry_delay", "max_retry_delay", "queue_timeout"):
            _non_negative(name, getattr(self, name))
        _non_negative("retry_backoff_multiplier", self.retry_backoff_multiplier)
        if self.retry_backoff_multiplier < 1:
            raise ValueError("retry_backoff_multiplier must be >= 1")
        _int_at_least("max_retries", self.max_retries, 0)
        _int_at_least("ring_size", self.ring_size, 2)
        _int_at_least("callback_workers", self.callback_workers, 1)
        _int_at_least("event_queue_size", self.event_queue_size, 16)
        if self.frame_format not in FRAME_FORMATS:
            raise ValueError(
                f"frame_format must be one of {FRAME_FORMATS}, got {self.frame_format!r}"
            )
        if self.callback_workers > 2:
            raise ValueError("callback_workers must be 1 or 2 (events stay ordered on one worker)")

    @property
    def geometry(self) -> FrameGeometry:
        """``frame_size`` / ``crop`` / ``resize`` as the frame ring's geometry."""
        return FrameGeometry(self.frame_size, self.crop, self.resize)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> ClientConfig:
        """Build from ``Odyssey(**kwargs)``; unknown names raise ``TypeError`` listing them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown Odyssey option(s): {', '.join(unknown)}")
        return cls(**kwargs)

    def retry_delay(self, retries_so_far: int) -> float:
        """Delay before retry number ``retries_so_far + 1`` (PROTOCOL §2.1)."""
        return float(
            min(self.initial_retry_delay * self.retry_backoff_multiplier**retries_so_far,
                self.max_retry_delay)
        )


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return float(value)


def _positive(name: str, value: Any) -> None:
    if _number(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _non_negative(name: str, value: Any) -> None:
    if _number(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
