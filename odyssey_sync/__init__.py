"""odyssey_sync — a synchronous, thread-based SDK for Odyssey's interactive video API."""

from __future__ import annotations

__version__ = "0.1.0"
