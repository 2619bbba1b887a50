"""odyssey_sync — a synchronous, thread-based SDK for Odyssey's interactive video API.

Every call blocks (with a timeout), callbacks arrive on worker threads, and
frames can also be pulled (:meth:`Odyssey.get_latest_frame`,
:meth:`Odyssey.frames`). The embedded Odyssey-compatible server lives in
:mod:`odyssey_sync.local`.
"""

from __future__ import annotations

from ._batch import BatchItem, BatchResult, simulate_batch
from ._frames import FrameGeometry, FrameRing, VideoFrame, convert_frame, native_available
from ._version import __version__
from .client import ClientStats, Odyssey
from .config import ClientConfig
from .errors import (
    AccountSuspendedError,
    ConcurrentLimitReachedError,
    MonthlyLimitReachedError,
    OdysseyAuthError,
    OdysseyConnectionError,
    OdysseyError,
    OdysseyNotFoundError,
    OdysseyPermissionError,
    OdysseyQueueTimeoutError,
    OdysseyRequestError,
    OdysseyStreamError,
    OdysseyTimeoutError,
    OdysseyUsageError,
    RateLimitError,
    StreamDurationExceededError,
)
from .spectator import SpectatorConnection, SpectatorStats, connect_to_stream
from .types import (
    BroadcastInfo,
    ClientCredentials,
    ConnectionStatus,
    Recording,
    ResumeStats,
    SimulationJobDetail,
    SimulationJobInfo,
    SimulationJobsList,
    SimulationJobStatus,
    SimulationStream,
    StreamerCapabilities,
    StreamRecordingInfo,
    StreamRecordingsList,
)

__all__ = [
    "AccountSuspendedError",
    "BatchItem",
    "BatchResult",
    "BroadcastInfo",
    "ClientConfig",
    "ClientCredentials",
    "ClientStats",
    "ConcurrentLimitReachedError",
    "ConnectionStatus",
    "FrameGeometry",
    "FrameRing",
    "MonthlyLimitReachedError",
    "Odyssey",
    "OdysseyAuthError",
    "OdysseyConnectionError",
    "OdysseyError",
    "OdysseyNotFoundError",
    "OdysseyPermissionError",
    "OdysseyQueueTimeoutError",
    "OdysseyRequestError",
    "OdysseyStreamError",
    "OdysseyTimeoutError",
    "OdysseyUsageError",
    "RateLimitError",
    "Recording",
    "ResumeStats",
    "SimulationJobDetail",
    "SimulationJobInfo",
    "SimulationJobStatus",
    "SimulationJobsList",
    "SimulationStream",
    "SpectatorConnection",
    "SpectatorStats",
    "StreamDurationExceededError",
    "StreamRecordingInfo",
    "StreamRecordingsList",
    "StreamerCapabilities",
    "VideoFrame",
    "__version__",
    "connect_to_stream",
    "convert_frame",
    "native_available",
    "simulate_batch",
]
