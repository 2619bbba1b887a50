"""An Odyssey-compatible server for offline use and tests (``odyssey_sync.local``).

``with LocalOdyssey() as server:`` runs it in-process on a background thread;
``odyssey-sync serve`` / ``python -m odyssey_sync.local`` run it standalone.
Point any client at ``server.url`` with ``server.api_key``. Documentation:
``docs/local-server.md`` (options, service limits, faults, data directory, prune).

Package layout: :mod:`.server` (``LocalOdyssey``) over :mod:`.http` (REST API
and simulation jobs), :mod:`.realtime` (signaling, WebRTC streamer, WHEP) and
:mod:`.render` (world, stamp, MP4 media); :mod:`.context`, :mod:`.faults`,
:mod:`.limits`, :mod:`.store`, :mod:`.auth`, :mod:`.datadir` are shared by all
three; :mod:`.cli` is the ``serve`` / ``local prune`` command line. The server
never imports the SDK.
"""

from __future__ import annotations

from .context import ServerConfig, ServerContext, StreamSink
from .datadir import DATA_DIR_ENV, PruneResult, default_data_dir, prune
from .faults import Faults, FaultValueError
from .limits import MAX_PROMPT_CHARS
from .server import LocalOdyssey

__all__ = ["DATA_DIR_ENV", "MAX_PROMPT_CHARS", "FaultValueError", "Faults", "LocalOdyssey",
           "PruneResult", "ServerConfig", "ServerContext", "StreamSink", "default_data_dir",
           "prune"]
