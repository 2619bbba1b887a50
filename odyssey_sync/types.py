"""Public data types (PROTOCOL §12), parsed leniently from the wire.

Every ``from_dict`` tolerates unknown fields (ignored) and missing optional
fields (``None``/defaults), so a newer server never breaks an older client.
``VideoFrame`` lives in :mod:`odyssey_sync._frames` (it is tied to the ring).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

_Item = TypeVar("_Item")
_Page = TypeVar("_Page")

__all__ = [
    "BroadcastInfo",
    "ClientCredentials",
    "ClientStats",
    "ConnectionStatus",
    "Recording",
    "ResumeStats",
    "SimulationJobDetail",
    "SimulationJobInfo",
    "SimulationJobStatus",
    "SimulationJobsList",
    "SimulationStream",
    "StreamRecordingInfo",
    "StreamRecordingsList",
    "StreamerCapabilities",
]


class ConnectionStatus(str, Enum):
    """Connection state of a client (PROTOCOL §10)."""

    AUTHENTICATING = "authenticating"
    CONNECTING = "connecting"
    RECONNECTING = "reconnecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class SimulationJobStatus(str, Enum):
    """Status of a simulation job. Unknown future values become pseudo-members
    (``SimulationJobStatus("paused").value == "paused"``) instead of raising."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def _missing_(cls, value: object) -> SimulationJobStatus | None:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        return member

    @property
    def is_active(self) -> bool:
        """Pending, dispatched or processing."""
        return self.value in ("pending", "dispatched", "processing")

    @property
    def is_final(self) -> bool:
        """Completed, failed or cancelled."""
        return self.value in ("completed", "failed", "cancelled")

    def __str__(self) -> str:
        return self.value


def _opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


def _opt_int(d: dict[str, Any], key: str) -> int | None:
    v = d.get(key)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _opt_float(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _req_str(d: dict[str, Any], key: str, default: str | None = None) -> str:
    v = d.get(key, default)
    if not isinstance(v, str):
        raise ValueError(f"response field {key!r} missing or not a string")
    return v


def _objects(
    d: dict[str, Any], key: str, parse: Callable[[dict[str, Any]], _Item]
) -> list[_Item]:
    """Parse each JSON object of the list under *key* (anything else there counts as empty)."""
    items = d.get(key)
    if not isinstance(items, list):
        return []
    return [parse(item) for item in items if isinstance(item, dict)]


def _page(
    page_type: Callable[[list[_Item], int, int, int], _Page],
    d: dict[str, Any],
    key: str,
    parse: Callable[[dict[str, Any]], _Item],
) -> _Page:
    """Parse one page of a listing: its items under *key*, then total, limit and offset
    (a missing total or limit is the number of items, a missing offset 0)."""
    items = _objects(d, key, parse)
    return page_type(
        items,
        _opt_int(d, "total") or len(items),
        _opt_int(d, "limit") or len(items),
        _opt_int(d, "offset") or 0,
    )


@dataclass(frozen=True)
class BroadcastInfo:
    """Where spectators can watch a broadcast stream (``on_broadcast_ready``)."""

    webrtc_url: str
    spectator_token: str = field(repr=False)
    hls_url: str | None = None

    def __repr__(self) -> str:
        return (
            f"BroadcastInfo(webrtc_url={self.webrtc_url!r}, hls_url={self.hls_url!r}, "
            f"spectator_token='{self.spectator_token[:4]}…')"
        )


@dataclass(frozen=True)
class StreamerCapabilities:
    """What the allocated streamer can do."""

    image_to_video: bool = False

    @classmethod
    def from_dict(cls, d: Any) -> StreamerCapabilities:
        """Parse the service's JSON object (unknown keys are ignored)."""
        if not isinstance(d, dict):
            return cls()
        v = d.get("image_to_video")
        return cls(image_to_video=v if isinstance(v, bool) else False)

    def to_dict(self) -> dict[str, bool]:
        """The capabilities as a JSON-ready dict (what :meth:`from_dict` reads)."""
        return {"image_to_video": self.image_to_video}


def session_id_from_jwt(token: str) -> str:
    """Read the ``session_id`` claim of a signaling JWT without verifying it."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        raise ValueError("session token is not a JWT (expected three dot-separated parts)")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("session token payload is not base64url JSON") from exc
    sid = claims.get("session_id") if isinstance(claims, dict) else None
    if not isinstance(sid, str) or not sid:
        raise ValueError("session token has no session_id claim")
    return sid


@dataclass(frozen=True)
class ClientCredentials:
    """Credentials a trusted backend mints for an untrusted client (PROTOCOL §3.6).

    ``session_id`` is always derived from the token's JWT claim.
    """

    signaling_url: str
    session_token: str = field(repr=False)
    expires_in: int
    capabilities: StreamerCapabilities | None = None

    def __post_init__(self) -> None:
        session_id_from_jwt(self.session_token)  # validate early

    @property
    def session_id(self) -> str:
        return session_id_from_jwt(self.session_token)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict to hand to the device (read back by :meth:`from_dict`).

        It holds the session token: send it only to the client it was minted for.
        """
        out: dict[str, Any] = {
            "session_id": self.session_id,
            "signaling_url": self.signaling_url,
            "session_token": self.session_token,
            "expires_in": self.expires_in,
        }
        if self.capabilities is not None:
            out["capabilities"] = self.capabilities.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClientCredentials:
        """Accept snake_case or camelCase keys; ``session_id`` is ignored."""
        if not isinstance(d, dict):
            raise TypeError("credentials must be a dict")

        def pick(*keys: str) -> Any:
            for k in keys:
                if k in d:
                    return d[k]
            raise ValueError(f"credentials missing {keys[0]!r}")

        url = pick("signaling_url", "signalingUrl")
        token = pick("session_token", "sessionToken")
        expires = pick("expires_in", "expiresIn")
        if not isinstance(url, str) or not url:
            raise ValueError("credentials 'signaling_url' must be a non-empty string")
        if not isinstance(token, str) or not token:
            raise ValueError("credentials 'session_token' must be a non-empty string")
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise ValueError("credentials 'expires_in' must be an integer")
        caps = d.get("capabilities")
        return cls(url, token, expires, StreamerCapabilities.from_dict(caps) if caps else None)

    def __repr__(self) -> str:
        return (
            f"ClientCredentials(session_id={self.session_id!r}, "
            f"signaling_url={self.signaling_url!r},"
            f" session_token='{self.session_token[:8]}…', expires_in={self.expires_in})"
        )


@dataclass(frozen=True)
class Recording:
    """A stream's recording with presigned URLs (PROTOCOL §3.7)."""

    stream_id: str
    video_url: str | None = None
    events_url: str | None = None
    thumbnail_url: str | None = None
    preview_url: str | None = None
    frame_count: int | None = None
    duration_seconds: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recording:
        """Parse the service's JSON object (unknown keys are ignored)."""
        return cls(
            stream_id=_req_str(d, "stream_id"),
            video_url=_opt_str(d, "video_url"),
            events_url=_opt_str(d, "events_url"),
            thumbnail_url=_opt_str(d, "thumbnail_url"),
            preview_url=_opt_str(d, "preview_url"),
            frame_count=_opt_int(d, "frame_count"),
            duration_seconds=_opt_float(d, "duration_seconds"),
        )


@dataclass(frozen=True)
class StreamRecordingInfo:
    """One entry of :class:`StreamRecordingsList` (PROTOCOL §3.8)."""

    stream_id: str
    width: int
    height: int
    started_at: str
    ended_at: str | None = None
    duration_seconds: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamRecordingInfo:
        """Parse the service's JSON object (unknown keys are ignored)."""
        return cls(
            stream_id=_req_str(d, "stream_id"),
            width=_opt_int(d, "width") or 0,
            height=_opt_int(d, "height") or 0,
            started_at=_opt_str(d, "started_at") or "",
            ended_at=_opt_str(d, "ended_at"),
            duration_seconds=_opt_float(d, "duration_seconds"),
        )


@dataclass(frozen=True)
class StreamRecordingsList:
    """A page of the caller's stream recordings, newest first."""

    recordings: list[StreamRecordingInfo]
    total: int
    limit: int
    offset: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StreamRecordingsList:
        """Parse the service's JSON object (unknown keys are ignored)."""
        return _page(cls, d, "recordings", StreamRecordingInfo.from_dict)


@dataclass(frozen=True)
class SimulationStream:
    """One output stream of a simulation job."""

    stream_id: str
    video_url: str | None = None
    events_url: str | None = None
    thumbnail_url: str | None = None
    preview_url: str | None = None
    frame_count: int | None = None
    duration_seconds: float | None = None
    script_index: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimulationStream:
        """Parse the service's JSON object (unknown keys are ignored)."""
        return cls(
            stream_id=_req_str(d, "stream_id"),
            video_url=_opt_str(d, "video_url"),
            events_url=_opt_str(d, "events_url"),
            thumbnail_url=_opt_str(d, "thumbnail_url"),
            preview_url=_opt_str(d, "preview_url"),
            frame_count=_opt_int(d, "frame_count"),
            duration_seconds=_opt_float(d, "duration_seconds"),
            script_index=_opt_int(d, "script_index") or 0,
        )


@dataclass(frozen=True)
class SimulationJobInfo:
    """Summary of a simulation job (list entries, cancel result)."""

    job_id: str
    status: SimulationJobStatus
    priority: str = "normal"
    created_at: str = ""
    completed_at: str | None = None
    error_message: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimulationJobInfo:
        """Parse the service's JSON object (unknown keys are ignored)."""
        return cls(
            job_id=_req_str(d, "job_id"),
            status=SimulationJobStatus(_req_str(d, "status")),
            priority=_opt_str(d, "priority") or "normal",
            created_at=_opt_str(d, "created_at") or "",
            completed_at=_opt_str(d, "completed_at"),
            error_message=_opt_str(d, "error_message"),
        )


@dataclass(frozen=True)
class SimulationJobDetail:
    """Full state of a simulation job, with its output streams once they exist."""

    job_id: str
    status: SimulationJobStatus
    priority: str = "normal"
    created_at: str = ""
    dispatched_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    error_message: str | None = None
    assigned_region: str | None = None
    retry_count: int = 0
    estimated_wait_minutes: float | None = None
    streams: list[SimulationStream] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimulationJobDetail:
        """Parse the service's JSON object (unknown keys are ignored)."""
        return cls(
            job_id=_req_str(d, "job_id"),
            status=SimulationJobStatus(_req_str(d, "status")),
            priority=_opt_str(d, "priority") or "normal",
            created_at=_opt_str(d, "created_at") or "",
            dispatched_at=_opt_str(d, "dispatched_at"),
            started_at=_opt_str(d, "started_at"),
            completed_at=_opt_str(d, "completed_at"),
            error_message=_opt_str(d, "error_message"),
            assigned_region=_opt_str(d, "assigned_region"),
            retry_count=_opt_int(d, "retry_count") or 0,
            estimated_wait_minutes=_opt_float(d, "estimated_wait_minutes"),
            streams=_objects(d, "streams", SimulationStream.from_dict),
        )


@dataclass(frozen=True)
class SimulationJobsList:
    """A page of simulation jobs."""

    jobs: list[SimulationJobInfo]
    total: int
    limit: int
    offset: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimulationJobsList:
        """Parse the service's JSON object (unknown keys are ignored)."""
        return _page(cls, d, "jobs", SimulationJobInfo.from_dict)


# ------------------------------------------------------------------- stats
@dataclass(frozen=True)
class ResumeStats:
    """How a resumable session crossed stream and connection endings.

    Attributes:
        planned: make-before-break handovers (stream or connection limit ahead).
        unplanned: recoveries after a lost connection, a failed peer or a stall.
        fallbacks: planned handovers that had to end the old stream first
            (no second session could be had: concurrent-stream limit, capacity).
        failed: recoveries that gave up (the session then failed).
        last_gap_ms: gap the consumer saw at the last resume (last frame of the
            old stream → first frame of the new one), milliseconds.
        max_gap_ms: the largest such gap so far.
        last_reason: why the last resume happened (e.g. ``"stream limit"``).
    """

    planned: int = 0
    unplanned: int = 0
    fallbacks: int = 0
    failed: int = 0
    last_gap_ms: float = 0.0
    max_gap_ms: float = 0.0
    last_reason: str | None = None


@dataclass(frozen=True)
class ClientStats:
    """Frame-path counters (a snapshot) of a client's session or a spectator.

    Attributes:
        received: decoded frames that reached the ring.
        delivered: frames handed to ``on_video_frame``.
        dropped: frames the ring discarded because every slot was held by a
            consumer (the network side never waits).
        skipped: frames ``on_video_frame`` never saw because a newer one was
            ready when the callback returned (latest-wins).
        fps: receive rate over the last ~120 frames.
        convert_us_p50/p99: YUV → RGB conversion time, microseconds.
        delivery_us_p50/p99: frame decoded → ``on_video_frame`` starts, microseconds.
        callback_errors: callback invocations that raised.
        events_dropped: events discarded because the event queue was full.
        resumes: what ``resume=True`` did (all zero without it; spectators: zero).
    """

    received: int = 0
    delivered: int = 0
    dropped: int = 0
    skipped: int = 0
    fps: float = 0.0
    convert_us_p50: float = 0.0
    convert_us_p99: float = 0.0
    delivery_us_p50: float = 0.0
    delivery_us_p99: float = 0.0
    callback_errors: int = 0
    events_dropped: int = 0
    resumes: ResumeStats = field(default_factory=ResumeStats)

    @classmethod
    def collect(
        cls, ring: Any, dispatcher: Any, *, fps: float, resumes: ResumeStats | None = None
    ) -> ClientStats:
        """A snapshot from a ``FrameRing`` and a ``Dispatcher`` (either may be ``None``)."""
        received = dropped = 0
        c50 = c99 = 0.0
        if ring is not None:
            r = ring.stats
            received, dropped = r.written + r.dropped, r.dropped
            c50, c99 = r.convert_us_p50, r.convert_us_p99
        d = dispatcher.stats() if dispatcher is not None else None
        return cls(
            received=received,
            delivered=d.delivered if d else 0,
            dropped=dropped,
            skipped=d.skipped if d else 0,
            fps=fps,
            convert_us_p50=c50,
            convert_us_p99=c99,
            delivery_us_p50=d.delivery_us_p50 if d else 0.0,
            delivery_us_p99=d.delivery_us_p99 if d else 0.0,
            callback_errors=d.callback_errors if d else 0,
            events_dropped=d.events_dropped if d else 0,
            resumes=resumes if resumes is not None else ResumeStats(),
        )
