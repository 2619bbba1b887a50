"""The signaling WebSocket (PROTOCOL §4), on websocket-client threads.

One :class:`SignalingChannel` is one WebSocket to ``{sig}/client/{session_id}``.
It owns two named daemon threads:

* ``<name>-reader`` blocks in ``recv``; it answers protocol pings (the
  library does that inside ``recv_data_frame``), parses each text/binary
  frame as JSON and hands every object with a string ``type`` to
  ``on_message``; it notices *every* close, normal (1000/1001) or abnormal
  (a dropped TCP connection included), and reports it once through
  ``on_close`` — the official client misses normal closes (§15.10);
* ``<name>-writer`` sends queued messages in order and an application
  ``{"type": "keepalive"}`` every 10 s (§4.3). A failed send is reported as
  an abnormal close instead of silently stopping the heartbeat (§15.31).

Callbacks are not called on these threads: they are handed to ``post`` (the
loop thread's ``call_soon``), so protocol handling stays on one thread.

Tokens travel only in the URL query; neither the URL nor library exception
texts (which may contain it) are ever logged or put into error messages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import quote

import websocket

from .errors import OdysseyConnectionError, OdysseyTimeoutError, SignalingHandshakeError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SignalingChannel",
    "SignalingHandshakeError",
    "client_socket_url",
    "config_url",
    "normalize_signaling_url",
]

log = logging.getLogger("odyssey_sync.signaling")

#: inbound message limit (PROTOCOL §2.2): bigger messages close the socket with 1009
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
KEEPALIVE_INTERVAL = 10.0
#: 1005 = the close frame carried no code: nothing says it was abnormal
NORMAL_CLOSE_CODES = (1000, 1001, 1005)

PostFn = Callable[..., bool]
MessageHandler = Callable[[dict[str, Any]], None]
#: on_close(code, reason, abnormal): code None when the TCP connection just died
CloseHandler = Callable[[int | None, str, bool], None]


def normalize_signaling_url(url: str) -> str:
    """PROTOCOL §4.2: strip trailing ``/``; https→wss, http→ws; no scheme → ``ws://``."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("signaling URL must be a non-empty string")
    url = url.strip().rstrip("/")
    lowered = url.lower()
    if lowered.startswith(("ws://", "wss://")):
        return url
    if lowered.startswith("https://"):
        return "wss://" + url[len("https://"):]
    if lowered.startswith("http://"):
        return "ws://" + url[len("http://"):]
    return "ws://" + url


def client_socket_url(signaling_url: str, session_id: str, token: str) -> str:
    """``<normalised>/client/<session_id>?token=<token>``, both parts URL-escaped.

    The official clients leave the id unescaped (§15.23); escaping it keeps a
    strange id from changing the path.
    """
    if not session_id:
        raise ValueError("session_id must be non-empty")
    return (
        f"{normalize_signaling_url(signaling_url)}/client/{quote(session_id, safe='')}"
        f"?token={quote(token, safe='')}"
    )


def config_url(signaling_url: str) -> str:
    """``GET`` URL of the ICE configuration (§4.1): ws→http, wss→https, plus ``/config``."""
    url = signaling_url
    if url.startswith("wss://"):
        url = "https://" + url[len("wss://"):]
    elif url.startswith("ws://"):
        url = "http://" + url[len("ws://"):]
    return url + "/config"


class SignalingChannel:
    """One signaling WebSocket with a reader and a writer thread.

    Args:
        url: the full socket URL (see :func:`client_socket_url`); kept private.
        on_message: called (through ``post``) with each inbound JSON object
            that has a string ``type``.
        on_close: called (through ``post``) exactly once when the socket
            closes for any reason other than :meth:`close`, as
            ``on_close(code, reason, abnormal)``.
        post: schedules a callable on the consumer's thread, e.g.
            :meth:`odyssey_sync._loop.LoopThread.call_soon`.
        name: thread name prefix.
        keepalive_interval: seconds between application keepalives.

    Thread safety: :meth:`send`, :meth:`send_nowait` and :meth:`close` may be
    called from any thread.
    """

    def __init__(
        self,
        url: str,
        *,
        on_message: MessageHandler,
        on_close: CloseHandler,
        post: PostFn,
        name: str = "odyssey-signaling",
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self._url = url
        self._on_message = on_message
        self._on_close = on_close
        self._post = post
        self.name = name
        self._keepalive_interval = keepalive_interval
        self._max_message_bytes = max_message_bytes
        self._ws: websocket.WebSocket | None = None
        self._outbox: queue.Queue[tuple[str, Future[None]] | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._closing = threading.Event()
        self._report_lock = threading.Lock()
        self._reported = False
        self.close_code: int | None = None
        self.close_reason = ""

    def __repr__(self) -> str:  # the URL carries the token: never show it
        state = "closed" if self.closed else ("open" if self._ws is not None else "new")
        return f"<SignalingChannel {self.name!r} {state}>"

    @property
    def closed(self) -> bool:
        """True once the socket closed (either side) or :meth:`close` was called."""
        return self._closing.is_set() or self._reported

    # -------------------------------------------------------------- opening
    def open(self, timeout: float) -> None:
        """Perform the WebSocket handshake and start the reader and writer.

        Blocking, caller's thread, at most ``timeout`` seconds (a number > 0).
        Raises :class:`SignalingHandshakeError` (``status`` set when the server
        answered the upgrade with an HTTP error) or :class:`OdysseyTimeoutError`.
        """
        if self._ws is not None:
            raise RuntimeError("SignalingChannel.open() called twice")
        try:
            ws = websocket.create_connection(
                self._url,
                timeout=timeout,
                enable_multithread=True,  # sends from the writer, pongs from the reader
                suppress_origin=True,
            )
        except websocket.WebSocketBadStatusException as exc:
            # The library's message embeds the URL (and so the token): build our own.
            raise SignalingHandshakeError(
                f"signaling handshake refused: HTTP {exc.status_code}", status=exc.status_code
            ) from None
        except (websocket.WebSocketTimeoutException, TimeoutError) as exc:
            raise OdysseyTimeoutError(
                f"signaling handshake timed out after {timeout:g} s"
            ) from exc
        except (OSError, websocket.WebSocketException) as exc:
            raise SignalingHandshakeError(
                f"signaling handshake failed: {type(exc).__name__}"
            ) from None
        # The reader blocks until data or close; shutdown() unblocks it on close().
        ws.settimeout(None)
        self._ws = ws
        self._reader = threading.Thread(
            target=self._read_loop, args=(ws,), name=f"{self.name}-reader", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write_loop, args=(ws,), name=f"{self.name}-writer", daemon=True
        )
        self._reader.start()
        self._writer.start()

    # -------------------------------------------------------------- sending
    def send_nowait(self, message: dict[str, Any]) -> Future[None]:
        """Queue ``message`` (JSON-encoded now) for the writer; never blocks.

        Returns a future resolved once the frame is written (or failed with
        :class:`OdysseyConnectionError`). Safe on the loop thread.
        """
        fut: Future[None] = Future()
        text = json.dumps(message)
        if self.closed or self._ws is None:
            fut.set_exception(OdysseyConnectionError("signaling socket is not open"))
            return fut
        self._outbox.put((text, fut))
        return fut

    def send(self, message: dict[str, Any], timeout: float | None) -> None:
        """Send ``message`` and block until it is written.

        Blocking, any thread except the loop's. ``timeout=None`` waits
        without limit, a number bounds the wait (:class:`OdysseyTimeoutError`).
        Raises :class:`OdysseyConnectionError` when the socket is closed.
        """
        fut = self.send_nowait(message)
        try:
            fut.result(timeout)
        except TimeoutError as exc:
            raise OdysseyTimeoutError(
                f"sending {message.get('type', 'message')!r} on signaling timed out"
            ) from exc

    def _write_loop(self, ws: websocket.WebSocket) -> None:
        next_keepalive = time.monotonic() + self._keepalive_interval
        while True:
            wait = max(0.0, next_keepalive - time.monotonic())
            fut: Future[None] | None = None
            try:
                item = self._outbox.get(timeout=wait)
            except queue.Empty:
                text = '{"type": "keepalive"}'
                next_keepalive = time.monotonic() + self._keepalive_interval
            else:
                if item is None:  # close() (or the reader ending) asks the writer to finish
                    return
                text, fut = item
            try:
                ws.send(text)
            except Exception as exc:
                err = OdysseyConnectionError(f"signaling send failed: {type(exc).__name__}")
                if fut is not None:
                    fut.set_exception(err)
                self._fail_outbox()
                if not self._closing.is_set():
                    self._report(None, "send failed", True)
                return
            if fut is not None:
                fut.set_result(None)

    def _fail_outbox(self) -> None:
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return
            if item is not None and not item[1].done():
                item[1].set_exception(OdysseyConnectionError("signaling socket closed"))

    # ------------------------------------------------------------ receiving
    def _read_loop(self, ws: websocket.WebSocket) -> None:
        try:
            while True:
                try:
                    opcode, frame = ws.recv_data_frame(True)
                except Exception as exc:
                    if not self._closing.is_set():
                        log.debug("%s: connection lost (%s)", self.name, type(exc).__name__)
                        self._report(None, "connection lost", True)
                    return
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code, reason = _parse_close(frame.data)
                    if not self._closing.is_set():
                        abnormal = code not in NORMAL_CLOSE_CODES
                        self._report(code, reason, abnormal)
                    return
                if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    continue  # ping (already answered) / pong
                data = frame.data
                if len(data) > self._max_message_bytes:
                    log.warning("%s: inbound message of %d bytes over the limit", self.name,
                                len(data))
                    with contextlib.suppress(Exception):
                        ws.send_close(1009, b"message too big")
                    self._report(1009, "message too big", True)
                    return
                self._dispatch(data)
        finally:
            # Let the writer finish too; its queue is failed by close()/_report.
            self._outbox.put(None)

    def _dispatch(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            log.debug("%s: ignoring a non-JSON message", self.name)
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            log.debug("%s: ignoring a message without a string 'type'", self.name)
            return
        self._post(self._on_message, message)

    def _report(self, code: int | None, reason: str, abnormal: bool) -> None:
        with self._report_lock:
            if self._reported:
                return
            self._reported = True
        self.close_code, self.close_reason = code, reason
        self._post(self._on_close, code, reason, abnormal)

    # -------------------------------------------------------------- closing
    def close(self, timeout: float = 2.0) -> None:
        """Say goodbye and close: ``client_disconnecting``, then close code 1000.

        Blocking up to about ``timeout`` seconds, any thread except the
        reader/writer. Idempotent. ``on_close`` is not called for a close
        started here. Both threads are joined; if the server does not answer
        the close handshake in time the TCP connection is cut.
        """
        if self._closing.is_set():
            return
        self._closing.set()
        ws = self._ws
        if ws is None:
            return
        deadline = time.monotonic() + timeout
        if not self._reported:
            # Through the writer, so it goes after anything already queued.
            bye = self.send_nowait_unchecked({"type": "client_disconnecting"})
            with contextlib.suppress(Exception):
                bye.result(max(0.0, deadline - time.monotonic()) / 2)
        self._outbox.put(None)
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            if ws.connected:
                ws.send_close(1000, b"Client disconnect")
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(max(0.1, deadline - time.monotonic()))
            if reader.is_alive():
                ws.abort()  # type: ignore[no-untyped-call]  # unblocks recv with an error; _closing keeps it quiet
                reader.join(1.0)
        with contextlib.suppress(Exception):
            ws.shutdown()  # type: ignore[no-untyped-call]
        self._fail_outbox()

    def send_nowait_unchecked(self, message: dict[str, Any]) -> Future[None]:
        """Queue a message even while closing (used for ``client_disconnecting``)."""
        fut: Future[None] = Future()
        self._outbox.put((json.dumps(message), fut))
        return fut


def _parse_close(data: bytes) -> tuple[int | None, str]:
    if len(data) < 2:
        return 1005, ""  # "no status received": a close without a code counts as normal
    code = struct.unpack("!H", data[:2])[0]
    reason = data[2:].decode("utf-8", "replace")
    return code, reason
