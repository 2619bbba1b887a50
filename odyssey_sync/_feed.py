"""The door between connections' track readers and the session's frame ring.

During a make-before-break handover two connections decode video at once,
each on its own loop thread; the consumers must see one stream, switching
from the old to the new at the new stream's first frame. :class:`FrameFeed`
does that, and tags every frame with the stream it belongs to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._rtc import FrameSink

if TYPE_CHECKING:
    from ._connection import Connection
    from ._frames import FrameRing

__all__ = ["SETTLE_CAP", "FrameFeed"]


class FrameFeed:
    """The door between connections' track readers and the session's ring.

    Only the *active* connection's frames are written, each tagged with its
    stream (see :func:`_stream_of`); while a stream of the user's runs
    (``streaming()``), frames of no stream are discarded. A connection set with :meth:`expect`
    becomes active at its first frame of a started stream
    (``on_switch`` is then called, on that connection's loop thread, with the
    gap since the previous connection's last frame); frames of any other
    connection are discarded. Writes are serialised by a lock, so two loop
    threads never write the ring at once.
    """

    def __init__(
        self,
        ring: FrameRing,
        on_switch: Callable[[Connection, float], None],
        streaming: Callable[[], bool],
    ) -> None:
        self._ring = ring
        self._on_switch = on_switch
        self._streaming = streaming
        self._lock = threading.Lock()
        self._active: Connection | None = None
        self._pending: Connection | None = None
        self._announce: Connection | None = None
        self._last_write = 0.0

    @property
    def ring(self) -> FrameRing:
        return self._ring

    def activate(self, conn: Connection, *, announce: bool = False) -> None:
        """Admit ``conn``'s frames from now on (and nobody else's).

        ``announce``: call ``on_switch`` at its first frame of a started
        stream, as for an expected connection (a recovery's new connection).
        """
        with self._lock:
            self._active, self._pending = conn, None
            self._announce = conn if announce else None

    def expect(self, conn: Connection | None) -> None:
        """Switch to ``conn`` at its first frame of a started stream (``None``: cancel)."""
        with self._lock:
            self._pending = conn

    def sink(self, conn: Connection) -> FrameSink:
        """The ``FrameSink`` handed to ``conn``'s peer."""
        return _ConnectionSink(self, conn)

    def write(self, conn: Connection, frame: Any) -> int | None:
        switched = False
        stream_id = _stream_of(conn)
        if stream_id is None and self._streaming():
            # Not the user's stream (before it started, or after it ended on the
            # service's side): keep the ring's newest frame the stream's own.
            return None
        with self._lock:
            if conn is not self._active:
                if conn is not self._pending or stream_id is None:
                    return None
                self._active, self._pending, switched = conn, None, True
            elif conn is self._announce and stream_id is not None:
                self._announce, switched = None, True
            now = time.monotonic()
            gap = now - self._last_write if self._last_write else 0.0
            seq = self._ring.write(frame, stream_id=stream_id)
            self._last_write = now
        if switched:
            self._on_switch(conn, gap)
        return seq


#: frames decoded this soon after ``stream_started`` may still be pictures the
#: streamer sent before the stream (in flight): at most this long, in seconds
SETTLE_CAP = 0.25


def _stream_of(conn: Connection) -> str | None:
    """The stream a frame arriving now belongs to, or ``None`` while it may not.

    The protocol marks no frame as the first of a stream, and frames sent
    before ``stream_started`` can still be decoding when it arrives (at most
    the one frame being sent at that moment). A frame counts as the stream's
    once one frame interval (at most :data:`SETTLE_CAP`) has passed since
    ``stream_started``.
    """
    stream_id = conn.stream_id
    if stream_id is None:
        return None
    fps = conn.fps
    settle = min(SETTLE_CAP, 1.0 / fps) if fps > 0 else 0.1
    return stream_id if time.monotonic() - conn.stream_started_at >= settle else None


class _ConnectionSink:
    __slots__ = ("_conn", "_feed")

    def __init__(self, feed: FrameFeed, conn: Connection) -> None:
        self._feed, self._conn = feed, conn

    def write(self, frame: Any) -> int | None:
        return self._feed.write(self._conn, frame)
