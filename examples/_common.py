"""What the examples share (not an example itself): opening a client.

The examples import it as ``from _common import open_client``, which works when
they run as scripts (``python examples/x.py`` puts examples/ on the import path).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from odyssey_sync import Odyssey


@contextlib.contextmanager
def open_client(*, small: bool = False, **options: Any) -> Iterator[Odyssey]:
    """The real service when ODYSSEY_API_KEY is set, else an embedded local server.

    The real service's URL is $ODYSSEY_API_URL or the default. The local server
    renders 320x176 @ 15 fps when *small*, else 1280x704 @ 30 fps. *options* go
    to :class:`Odyssey` (e.g. ``resume=True``, ``frame_format="bgr24"``). Both
    the client and the server are closed on exit.
    """
    api_key = os.environ.get("ODYSSEY_API_KEY")
    if api_key:
        with Odyssey(api_key, **options) as client:
            yield client
        return
    from odyssey_sync.local import LocalOdyssey

    size, fps = ((320, 176), 15) if small else ((1280, 704), 30)
    with LocalOdyssey(size=size, fps=fps) as server, Odyssey(
        server.api_key, api_url=server.url, **options
    ) as client:
        yield client


@contextlib.contextmanager
def service_settings(*, small: bool = False, capacity: int = 1) -> Iterator[dict[str, str]]:
    """Where to connect, as keyword arguments (``api_key``, maybe ``api_url``).

    For code that builds its own clients (Gymnasium environments, Ray fleets):
    the real service when ODYSSEY_API_KEY is set, else an embedded local server
    with room for ``capacity`` sessions at once (320x176 when *small*, else
    1280x704; 20 fps, the service's rate), stopped on exit.
    """
    api_key = os.environ.get("ODYSSEY_API_KEY")
    if api_key:
        yield {"api_key": api_key}
        return
    from odyssey_sync.local import LocalOdyssey

    size = (320, 176) if small else (1280, 704)
    with LocalOdyssey(size=size, fps=20, capacity=capacity, max_concurrent_per_key=capacity,
                      recordings=False) as server:
        yield {"api_key": server.api_key, "api_url": server.url}
