"""An Odyssey-compatible server for offline use and tests (``odyssey_sync.local``).

``with LocalOdyssey() as server:`` runs it in-process on a background thread;
``odyssey-sync serve`` / ``python -m odyssey_sync.local`` run it standalone.
Point any client at ``server.url`` with ``server.api_key``.
"""

from __future__ import annotations

from .context import ServerConfig, ServerContext, StreamSink
from .faults import Faults
from .server import LocalOdyssey, default_data_dir

__all__ = ["Faults", "LocalOdyssey", "ServerConfig", "ServerContext", "StreamSink",
           "default_data_dir"]
