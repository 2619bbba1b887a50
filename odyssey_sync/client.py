"""The synchronous client: :class:`Odyssey`.

The blocking twin of the reference ``Odyssey`` class: the same methods,
parameters, returns and exceptions, minus ``async``/``await``::

    from odyssey_sync import Odyssey

    with Odyssey(api_key="ody_...") as client:
        client.connect(on_stream_started=lambda sid: print("stream", sid))
        client.start_stream("A cat on a windowsill", portrait=False)
        for i, frame in enumerate(client.frames(timeout=5.0)):
            process(frame.data)            # H×W×3 uint8, read-only, zero-copy
            if i == 90:
                client.interact("The cat stretches")
            if i == 180:
                break
        client.end_stream()

Threads (see DESIGN.md):

* your thread: every public method runs here and blocks until done or its
  timeout; REST (auth, allocation, ICE config) uses ``requests`` right here;
* ``odyssey-loop-N``: asyncio + aiortc (ICE, DTLS, SCTP, RTP, decoding, the
  data channels) — no user code ever runs on it;
* ``odyssey-signaling-N-reader`` / ``-writer``: the signaling WebSocket;
* ``odyssey-N-events``: runs your event callbacks one at a time, in order;
* ``odyssey-N-video``: runs ``on_video_frame`` with the latest frame; a slow
  callback skips frames (counted in :attr:`Odyssey.stats`), it never queues
  them and never slows the network.

Every thread is a daemon and is joined (with timeouts) by :meth:`Odyssey.disconnect`;
a client you forget to disconnect is disconnected at interpreter exit, with
bounded waits.

Errors are the tree of :mod:`odyssey_sync.errors`: ``OdysseyAuthError`` (bad
key), ``OdysseyConnectionError`` (allocation, signaling, WebRTC, connection
lost), ``OdysseyStreamError`` (wrong state, stream errors), the usage errors
(limits), ``OdysseyTimeoutError`` (a call ran out of time). Bad arguments raise
``TypeError`` / ``ValueError`` before anything is sent.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import functools
import itertools
import json
import logging
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._deadline import Deadline
from ._dispatch import Dispatcher
from ._loop import LoopThread
from ._signaling import SignalingChannel, SignalingHandshakeError, client_socket_url
from .config import ClientConfig
from .errors import (
    OdysseyAuthError,
    OdysseyConnectionError,
    OdysseyError,
    OdysseyStreamError,
    OdysseyTimeoutError,
    OdysseyUsageError,
    stream_error_from_reason,
)
from .types import BroadcastInfo, ClientCredentials, ConnectionStatus, StreamerCapabilities

if TYPE_CHECKING:
    from ._frames import FrameRing, VideoFrame
    from ._rest import ApiClient
    from ._rtc import RtcPeer

try:  # recordings, simulations, credentials (the REST layer's mixin)
    from ._offline import OfflineMethods
except ImportError as _exc:  # pragma: no cover - only when the package is broken
    # Do not take the whole package down, but never fail silently either: a
    # circular import here once hid every offline method of Odyssey.
    warnings.warn(
        f"odyssey_sync: recordings/simulations/credentials methods unavailable: {_exc}",
        RuntimeWarning,
        stacklevel=1,
    )

    class OfflineMethods:  # type: ignore[no-redef]
        """Stand-in used only when ``odyssey_sync._offline`` cannot be imported."""


__all__ = ["DEFAULT", "MAX_PROMPT_CHARS", "ClientStats", "Odyssey"]

log = logging.getLogger("odyssey_sync.client")

#: longest prompt accepted locally (characters); longer ones raise ValueError
MAX_PROMPT_CHARS = 10_000
#: how long teardown waits for each step (peer close, socket close, joins)
_STEP_TIMEOUT = 5.0
#: slice of long waits, so a disconnect from another thread is noticed promptly
_POLL = 0.25


class _Default(enum.Enum):
    TOKEN = "the configured default"

    def __repr__(self) -> str:
        return "DEFAULT"


#: "use the timeout from the client's configuration" (the default of ``timeout=``)
DEFAULT = _Default.TOKEN

Timeout = float | None | _Default

# Live clients, disconnected at interpreter exit if the user forgot to.
_LIVE: weakref.WeakSet[Odyssey] = weakref.WeakSet()
_ids = itertools.count(1)


@dataclass(frozen=True)
class ClientStats:
    """Frame-path counters of the current (or last) connection.

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


@dataclass
class _Handlers:
    on_connected: Callable[[], None] | None = None
    on_disconnected: Callable[[], None] | None = None
    on_video_frame: Callable[[Any], None] | None = None
    on_stream_started: Callable[[str], None] | None = None
    on_stream_ended: Callable[[], None] | None = None
    on_interact_acknowledged: Callable[[str], None] | None = None
    on_stream_error: Callable[[str, str], None] | None = None
    on_error: Callable[[Exception, bool], None] | None = None
    on_status_change: Callable[[ConnectionStatus, str | None], None] | None = None
    on_broadcast_ready: Callable[[BroadcastInfo], None] | None = None

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")


class PendingReplies:
    """Reply slots per request kind, matched first-in first-out.

    The protocol has no request ids (PROTOCOL §6): the streamer answers each
    kind of request in order, so the oldest outstanding request of a kind
    owns the next reply of that kind. Every call arms its own slot *before*
    its message is sent (a fast reply can never be lost, §15.3) and a second
    caller never overwrites the first (§15.2).

    A caller that timed out leaves its slot in place, so that the late reply
    is consumed by it and not handed to the next caller.

    Thread safety: all methods may be called from any thread.
    """

    KINDS = ("start", "interact", "end")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[concurrent.futures.Future[Any]]] = {
            kind: deque() for kind in self.KINDS
        }
        self._closed: BaseException | None = None

    def arm(self, kind: str) -> concurrent.futures.Future[Any]:
        """A new slot at the back of ``kind``'s queue (already failed when closed)."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed is not None:
                fut.set_exception(self._closed)
                return fut
            self._queues[kind].append(fut)
        return fut

    def resolve(self, kind: str, value: Any) -> bool:
        """Give ``value`` to the oldest slot of ``kind``; False when none is waiting."""
        with self._lock:
            queue = self._queues[kind]
            if not queue:
                return False
            fut = queue.popleft()
        if not fut.done():
            fut.set_result(value)
        return True

    def fail(self, kind: str, exc: BaseException) -> bool:
        """Fail the oldest slot of ``kind`` with ``exc``; False when none is waiting."""
        with self._lock:
            queue = self._queues[kind]
            if not queue:
                return False
            fut = queue.popleft()
        if not fut.done():
            fut.set_exception(exc)
        return True

    def discard(self, kind: str, fut: concurrent.futures.Future[Any], exc: BaseException) -> None:
        """Remove a slot whose request never went out, failing it with ``exc``."""
        with self._lock, contextlib.suppress(ValueError):
            self._queues[kind].remove(fut)
        if not fut.done():
            fut.set_exception(exc)

    def waiting(self, kind: str) -> int:
        """How many slots of ``kind`` are outstanding."""
        with self._lock:
            return len(self._queues[kind])

    def close(self, exc: BaseException) -> None:
        """Fail every outstanding slot (and future ones) with ``exc`` — never drop them."""
        with self._lock:
            self._closed = exc
            futures = [f for q in self._queues.values() for f in q]
            for q in self._queues.values():
                q.clear()
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)


# Allowed transitions of the status machine (PROTOCOL §10). ``disconnect()``
# may go from anywhere to DISCONNECTED; everything else is listed here.
_TRANSITIONS: dict[ConnectionStatus, frozenset[ConnectionStatus]] = {
    ConnectionStatus.DISCONNECTED: frozenset(
        {ConnectionStatus.AUTHENTICATING, ConnectionStatus.CONNECTING}
    ),
    ConnectionStatus.FAILED: frozenset(
        {ConnectionStatus.AUTHENTICATING, ConnectionStatus.CONNECTING}
    ),
    ConnectionStatus.AUTHENTICATING: frozenset(
        {ConnectionStatus.CONNECTING, ConnectionStatus.FAILED}
    ),
    ConnectionStatus.CONNECTING: frozenset(
        {ConnectionStatus.CONNECTING, ConnectionStatus.CONNECTED, ConnectionStatus.FAILED}
    ),
    ConnectionStatus.CONNECTED: frozenset({ConnectionStatus.FAILED}),
    ConnectionStatus.RECONNECTING: frozenset(
        {ConnectionStatus.CONNECTED, ConnectionStatus.FAILED}
    ),
}


def transition_allowed(old: ConnectionStatus, new: ConnectionStatus) -> bool:
    """Whether the status machine may go from ``old`` to ``new`` (any → DISCONNECTED is)."""
    return new is ConnectionStatus.DISCONNECTED or new in _TRANSITIONS.get(old, frozenset())


class _Connection:
    """Everything one ``connect()`` creates; torn down as a unit.

    A fresh object per connection (and a fresh token per signaling attempt)
    means a late event from an old socket or peer can never act on a newer
    connection (§15.16).
    """

    def __init__(self, number: int, handlers: _Handlers, dispatcher: Dispatcher) -> None:
        self.number = number
        self.handlers = handlers
        self.dispatcher = dispatcher
        self.loop: LoopThread | None = None
        self.ring: FrameRing | None = None
        self.signaling: SignalingChannel | None = None
        self.attempt: object | None = None
        self.peer: RtcPeer | None = None
        self.negotiation: Any = None  # asyncio.Lock, created on the loop
        self.ice_servers: list[dict[str, Any]] = []
        self.pending = PendingReplies()
        self.ready = threading.Event()
        self.ready_error: BaseException | None = None
        self.aborted = False
        self.session_id: str | None = None
        self.capabilities: StreamerCapabilities | None = None
        self.stream_id: str | None = None
        self.connected = False  # readiness reached (on_connected fired)
        self.closing = False
        self.connected_at = 0.0
        self.tasks: set[Any] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task on the loop (loop thread), keeping a reference."""
        assert self.loop is not None
        task = self.loop.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class Odyssey(OfflineMethods):
    """Client of Odyssey's interactive video API — synchronous and thread-safe.

    Args:
        api_key: the account's API key (``"ody_..."``). May be empty/None for a
            client that only uses :meth:`connect_with_credentials`.
        **kwargs: options of :class:`odyssey_sync.config.ClientConfig`
            (``api_url``, ``connect_timeout``, ``stream_timeout``,
            ``frame_format``, ``ring_size``, ``low_latency``, …).

    Raises:
        TypeError: ``api_key`` is not a str/None, or an unknown/mistyped option.
        ValueError: an option out of range.

    Construction does no I/O and starts no thread. Use it as a context manager
    (``with Odyssey(...) as client:``) to disconnect on exit. All methods may
    be called from any thread, including from inside callbacks.
    """

    def __init__(self, api_key: str | None = None, **kwargs: Any) -> None:
        if api_key is not None and not isinstance(api_key, str):
            raise TypeError(f"api_key must be a str, got {type(api_key).__name__}")
        self._api_key = api_key or ""
        self._config = ClientConfig.from_kwargs(kwargs)
        if self._config.debug:
            logging.getLogger("odyssey_sync").setLevel(logging.DEBUG)
        self._api: ApiClient = self._make_api()
        self._id = next(_ids)
        self._lock = threading.RLock()
        self._status = ConnectionStatus.DISCONNECTED
        self._conn: _Connection | None = None
        self._last_conn: _Connection | None = None
        self._session_id: str | None = None
        self._last_applied_prompt: str | None = None
        self._teardowns: list[threading.Thread] = []
        self._conn_numbers = itertools.count(1)
        _LIVE.add(self)

    def _make_api(self) -> ApiClient:
        from ._rest import ApiClient

        return ApiClient(
            self._config.api_url,
            self._api_key or None,
            timeout=self._config.request_timeout,
            telemetry=self._config.enable_telemetry,
        )

    def _default_queue_timeout(self) -> float:
        """Queue timeout for :meth:`create_client_credentials` (the configured one)."""
        return self._config.queue_timeout

    # ---------------------------------------------------------------- basics
    @property
    def config(self) -> ClientConfig:
        """The validated configuration (read-only)."""
        return self._config

    @property
    def is_connected(self) -> bool:
        """Whether the client is connected and ready (non-blocking)."""
        return self._status is ConnectionStatus.CONNECTED

    @property
    def current_status(self) -> ConnectionStatus:
        """The current :class:`~odyssey_sync.types.ConnectionStatus` (non-blocking)."""
        return self._status

    @property
    def current_session_id(self) -> str | None:
        """The allocation (session) id while connecting/connected, else ``None``."""
        return self._session_id

    @property
    def last_applied_prompt(self) -> str | None:
        """The prompt the streamer last reported applying (after expansion), or ``None``."""
        return self._last_applied_prompt

    @property
    def current_stream_id(self) -> str | None:
        """The id of the running stream, or ``None`` when no stream is active."""
        conn = self._conn
        return conn.stream_id if conn is not None else None

    def __repr__(self) -> str:
        key = self._api_key
        shown = "'ody_…'" if key.startswith("ody_") else ("'…'" if key else "None")
        return (
            f"<Odyssey api_url={self._config.api_url!r} status={self._status.value} "
            f"session_id={self._session_id!r} api_key={shown}>"
        )

    def __enter__(self) -> Odyssey:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect (if connected) and release the HTTP session. Blocking, bounded.

        The client cannot connect again afterwards; offline methods raise
        :class:`OdysseyConnectionError`. Idempotent.
        """
        self.disconnect()
        self._api.close()
        _LIVE.discard(self)

    # ------------------------------------------------------------ status
    def _set_status(
        self, conn: _Connection | None, status: ConnectionStatus, message: str | None = None
    ) -> None:
        """Change status (caller holds no lock or ``self._lock``) and announce it."""
        with self._lock:
            old = self._status
            if not transition_allowed(old, status):
                log.debug("ignoring status change %s → %s", old.value, status.value)
                return
            self._status = status
            if conn is not None:
                conn.dispatcher.post(
                    conn.handlers.on_status_change, status, message, name="on_status_change"
                )
        log.debug("status %s → %s%s", old.value, status.value, f" ({message})" if message else "")

    # ------------------------------------------------------------ connect
    def connect(
        self,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
        on_video_frame: Callable[[VideoFrame], None] | None = None,
        on_stream_started: Callable[[str], None] | None = None,
        on_stream_ended: Callable[[], None] | None = None,
        on_interact_acknowledged: Callable[[str], None] | None = None,
        on_stream_error: Callable[[str, str], None] | None = None,
        on_error: Callable[[Exception, bool], None] | None = None,
        on_status_change: Callable[[ConnectionStatus, str | None], None] | None = None,
        on_broadcast_ready: Callable[[BroadcastInfo], None] | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> None:
        """Allocate a streamer and connect to it; return once video can flow.

        Blocking, caller's thread (REST runs here; WebRTC on the loop thread).
        ``timeout`` bounds the whole call — queueing for a free streamer,
        signaling retries and WebRTC readiness share it; ``DEFAULT`` uses
        ``connect_timeout`` (60 s), ``None`` waits without limit. The queue
        itself gives up after ``queue_timeout``.

        Callbacks run on the client's dispatcher threads (events in order on
        one, frames latest-wins on another), never on the network thread. A
        callback that raises is reported through ``on_error(err, False)``.

        Already connected → returns at once. Connecting (in another thread) →
        :class:`OdysseyConnectionError`. After a failure, connect again.

        Raises:
            OdysseyAuthError: no/invalid API key.
            OdysseyUsageError: an account limit (HTTP 429), e.g. ConcurrentLimitReachedError.
            OdysseyQueueTimeoutError: no streamer freed up within ``queue_timeout``.
            OdysseyConnectionError: allocation, signaling or WebRTC failed,
                or readiness did not happen within the timeout.
            OdysseyTimeoutError: the allocation step ran out of ``timeout``.
        """
        handlers = _Handlers(
            on_connected, on_disconnected, on_video_frame, on_stream_started, on_stream_ended,
            on_interact_acknowledged, on_stream_error, on_error, on_status_change,
            on_broadcast_ready,
        )
        budget = self._connect_budget(timeout)
        if not self._api_key:
            raise OdysseyAuthError(
                "an API key is required to connect (or use connect_with_credentials())"
            )
        self._run_connect(handlers, budget, credentials=None)

    def connect_with_credentials(
        self,
        credentials: ClientCredentials | dict[str, Any],
        *,
        timeout: Timeout = DEFAULT,
        **callbacks: Any,
    ) -> None:
        """Connect with credentials minted by a trusted backend (PROTOCOL §3.6).

        Like :meth:`connect` (same callbacks, same blocking and timeout rules)
        but skips authentication and allocation: no API key is needed and no
        call goes to ``/auth/token`` or ``/sessions/*``. ``credentials`` is a
        :class:`~odyssey_sync.types.ClientCredentials` or its dict form.

        Raises:
            TypeError / ValueError: malformed credentials or unknown callback names.
            OdysseyConnectionError: signaling or WebRTC failed.
        """
        if isinstance(credentials, dict):
            credentials = ClientCredentials.from_dict(credentials)
        if not isinstance(credentials, ClientCredentials):
            raise TypeError("credentials must be a ClientCredentials or a dict")
        unknown = set(callbacks) - {f for f in _Handlers.__dataclass_fields__}
        if unknown:
            raise TypeError(f"unknown callback(s): {', '.join(sorted(unknown))}")
        handlers = _Handlers(**callbacks)
        budget = self._connect_budget(timeout)
        self._run_connect(handlers, budget, credentials=credentials)

    def _connect_budget(self, timeout: Timeout) -> float | None:
        if timeout is DEFAULT:
            return self._config.connect_timeout
        return _check_timeout(timeout)

    def _run_connect(
        self,
        handlers: _Handlers,
        budget: float | None,
        *,
        credentials: ClientCredentials | None,
    ) -> None:
        self._join_teardowns()
        with self._lock:
            status = self._status
            if status is ConnectionStatus.CONNECTED:
                return
            if status in (
                ConnectionStatus.AUTHENTICATING,
                ConnectionStatus.CONNECTING,
                ConnectionStatus.RECONNECTING,
            ):
                raise OdysseyConnectionError(f"Already {status.value}")
            number = next(self._conn_numbers)
            name = f"odyssey-{self._id}" if number == 1 else f"odyssey-{self._id}.{number}"
            holder: list[_Connection] = []
            dispatcher = Dispatcher(
                name,
                on_callback_error=lambda exc, label: self._callback_failed(holder[0], exc, label),
                max_events=self._config.event_queue_size,
                share_worker=self._config.callback_workers == 1,
            )
            conn = _Connection(number, handlers, dispatcher)
            holder.append(conn)
            self._conn = self._last_conn = conn
            self._last_applied_prompt = None
            dispatcher.start()
            first = (
                ConnectionStatus.CONNECTING if credentials else ConnectionStatus.AUTHENTICATING
            )
            self._set_status(conn, first, None)
        deadline = Deadline(budget)
        started = time.monotonic()
        self._api.telemetry({"event": "session_connecting"})
        try:
            if credentials is None:
                allocation = self._api.allocate(
                    queue_timeout=self._config.queue_timeout, deadline=deadline
                )
                sig_url, token = allocation.signaling_url, allocation.session_token
                conn.session_id, conn.capabilities = allocation.session_id, allocation.capabilities
            else:
                sig_url, token = credentials.signaling_url, credentials.session_token
                conn.session_id = credentials.session_id
                conn.capabilities = credentials.capabilities
            self._check_aborted(conn)
            with self._lock:
                self._session_id = conn.session_id
            if credentials is None:
                self._set_status(conn, ConnectionStatus.CONNECTING, None)
            self._open_transport(conn, sig_url, token, deadline)
            self._wait_ready(conn, deadline)
        except BaseException as exc:
            err = _as_connect_error(exc)
            self._connect_failed(conn, err, exc)
            if err is exc:
                raise
            raise err from exc
        self._api.telemetry(
            {
                "event": "session_connected",
                "session_id": conn.session_id,
                "connect_duration_ms": int((time.monotonic() - started) * 1000),
            }
        )

    def _check_aborted(self, conn: _Connection) -> None:
        if conn.aborted:
            raise OdysseyConnectionError("connect() aborted by disconnect()")

    def _open_transport(
        self, conn: _Connection, sig_url: str, token: str, deadline: Deadline
    ) -> None:
        """Start the loop and the ring, then open signaling with retries (§10)."""
        from ._frames import FrameRing

        conn.ring = FrameRing(self._config.ring_size, self._config.frame_format)
        loop = LoopThread(f"odyssey-loop-{self._id}.{conn.number}")
        conn.loop = loop
        loop.start(timeout=_STEP_TIMEOUT)
        if conn.handlers.on_video_frame is not None:
            conn.dispatcher.start_video(conn.ring, conn.handlers.on_video_frame)
        assert conn.session_id is not None
        url = client_socket_url(sig_url, conn.session_id, token)
        retries = 0
        while True:
            self._check_aborted(conn)
            deadline.check("connect")
            conn.ice_servers = self._api.fetch_ice_servers(
                sig_url, timeout=_clamp(deadline, 5.0)
            )
            attempt = object()
            channel = SignalingChannel(
                url,
                on_message=functools.partial(self._on_signal_message, conn, attempt),
                on_close=functools.partial(self._on_signal_close, conn, attempt),
                post=loop.call_soon,
                name=f"odyssey-signaling-{self._id}.{conn.number}",
            )
            with self._lock:
                conn.attempt, conn.signaling = attempt, channel
            try:
                channel.open(timeout=_clamp(deadline, 10.0))
                return
            except (SignalingHandshakeError, OdysseyTimeoutError) as exc:
                status = exc.status if isinstance(exc, OdysseyError) else None
                if status in (401, 403, 404) or retries >= self._config.max_retries:
                    raise OdysseyConnectionError(
                        f"{exc.message} (after {retries} retries)", status=status,
                        session_id=conn.session_id,
                    ) from exc
                delay = self._config.retry_delay(retries)
                retries += 1
                left = deadline.remaining()
                if left is not None and left <= delay:
                    raise OdysseyConnectionError(
                        f"{exc.message}; no time left to retry", session_id=conn.session_id
                    ) from exc
                log.info("signaling handshake failed (%s); retry %d in %.1f s",
                         exc.message, retries, delay)
                self._set_status(conn, ConnectionStatus.CONNECTING, f"retry {retries}")
                if conn.ready.wait(delay):  # woken early only by an abort
                    self._check_aborted(conn)

    def _wait_ready(self, conn: _Connection, deadline: Deadline) -> None:
        while not conn.ready.wait(_clamp(deadline, _POLL)):
            if deadline.expired:
                peer = conn.peer
                missing = ["offer"] if peer is None else peer.missing
                raise OdysseyConnectionError(
                    f"connection not ready after {deadline.timeout:g} s "
                    f"(waiting for {', '.join(missing) or 'readiness'})",
                    session_id=conn.session_id,
                )
        with self._lock:
            self._check_aborted(conn)
            if conn.ready_error is not None:
                raise conn.ready_error
            conn.connected = True
            conn.connected_at = time.monotonic()
            self._set_status(conn, ConnectionStatus.CONNECTED, None)
            conn.dispatcher.post(conn.handlers.on_connected, name="on_connected")

    def _connect_failed(
        self, conn: _Connection, err: BaseException, original: BaseException
    ) -> None:
        with self._lock:
            aborted = conn.aborted
            if self._conn is conn:
                self._conn = None
            if aborted:
                self._set_status(conn, ConnectionStatus.DISCONNECTED, "disconnect() called")
            else:
                self._set_status(conn, ConnectionStatus.FAILED, _text(err))
                if isinstance(err, Exception):
                    conn.dispatcher.post(conn.handlers.on_error, err, True, name="on_error")
            self._session_id = None
        if not aborted and isinstance(err, OdysseyError):
            self._api.telemetry(_error_event(err, conn.session_id, ConnectionStatus.FAILED))
        if isinstance(original, KeyboardInterrupt):
            log.debug("connect() interrupted")
        self._teardown(conn, ConnectionError("connect() failed"))

    # ------------------------------------------------------- loop-side events
    # Everything below until "teardown" runs on the loop thread.
    def _on_signal_message(self, conn: _Connection, attempt: object, msg: dict[str, Any]) -> None:
        if conn.attempt is not attempt or conn.closing:
            return  # a stale socket (§15.16)
        kind = msg["type"]
        loop = conn.loop
        if loop is None:
            return
        if kind == "offer":
            sdp = msg.get("sdp")
            if isinstance(sdp, str) and sdp:
                conn.spawn(self._handle_offer(conn, attempt, sdp))
            else:
                log.debug("ignoring an offer without SDP")
        elif kind == "ice_candidate":
            conn.spawn(self._handle_candidate(conn, msg))
        elif kind == "error":
            reason = msg.get("reason")
            reason = reason if isinstance(reason, str) and reason else "unknown"
            self._fatal(
                conn,
                OdysseyConnectionError(
                    f"signaling error: {reason}", session_id=conn.session_id
                ),
            )
        else:
            log.debug("ignoring signaling message of type %r", kind)

    async def _handle_offer(self, conn: _Connection, attempt: object, sdp: str) -> None:
        import asyncio

        from ._rtc import RtcPeer

        if conn.negotiation is None:
            conn.negotiation = asyncio.Lock()
        async with conn.negotiation:
            if conn.closing or conn.attempt is not attempt:
                return
            old, conn.peer = conn.peer, None
            if old is not None:
                # One offer per socket; a new one replaces the old peer (§4.5, §15.28).
                await old.close()
            assert conn.ring is not None and conn.signaling is not None
            peer = RtcPeer(
                ice_servers=conn.ice_servers,
                ring=conn.ring,
                events=_PeerEvents(self, conn),
                low_latency=self._config.low_latency,
            )
            conn.peer = peer
            try:
                answer = await peer.accept_offer(sdp)
            except Exception as exc:
                log.debug("could not answer the offer", exc_info=True)
                self._fatal(
                    conn,
                    OdysseyConnectionError(
                        f"could not answer the streamer's offer: {type(exc).__name__}",
                        session_id=conn.session_id,
                    ),
                )
                return
            conn.signaling.send_nowait({"type": "answer", "sdp": answer})

    async def _handle_candidate(self, conn: _Connection, msg: dict[str, Any]) -> None:
        if conn.negotiation is None:
            return  # before the offer: dropped, as the protocol says (§4.5)
        async with conn.negotiation:
            peer = conn.peer
            if peer is None or conn.closing:
                return
            try:
                await peer.add_remote_candidate(msg)
            except Exception:
                log.debug("could not add a remote candidate", exc_info=True)

    def _on_signal_close(
        self, conn: _Connection, attempt: object, code: int | None, reason: str, abnormal: bool
    ) -> None:
        if conn.attempt is not attempt or conn.closing:
            return
        detail = f"code {code}" if code is not None else "connection lost"
        if reason:
            detail += f": {reason}"
        if abnormal or not conn.connected:
            # During connecting any close is fatal at once (§15.14): nothing will retry it.
            self._fatal(
                conn,
                OdysseyConnectionError(
                    f"signaling connection closed ({detail})", session_id=conn.session_id
                ),
            )
        else:
            self._closed_by_server(conn, f"server closed the connection ({detail})")

    def _on_peer_message(self, conn: _Connection, msg: dict[str, Any]) -> None:
        if conn.closing:
            return
        kind = msg["type"]
        handlers, post = conn.handlers, conn.dispatcher.post
        if kind == "stream_started":
            stream_id = msg.get("stream_id")
            stream_id = stream_id if isinstance(stream_id, str) else ""
            applied = msg.get("applied_prompt")
            self._last_applied_prompt = applied if isinstance(applied, str) and applied else None
            conn.stream_id = stream_id
            conn.pending.resolve("start", stream_id)
            post(handlers.on_stream_started, stream_id, name="on_stream_started")
        elif kind == "update_acknowledged":
            prompt = msg.get("prompt")
            prompt = prompt if isinstance(prompt, str) else ""
            self._last_applied_prompt = prompt or None
            conn.pending.resolve("interact", prompt)
            post(handlers.on_interact_acknowledged, prompt, name="on_interact_acknowledged")
        elif kind == "stream_ended":
            conn.stream_id = None
            conn.pending.resolve("end", None)
            post(handlers.on_stream_ended, name="on_stream_ended")
        elif kind == "broadcast_ready":
            url, token = msg.get("webrtc_url"), msg.get("spectator_token")
            hls = msg.get("broadcast_url")
            if isinstance(url, str) and url and isinstance(token, str) and token:
                info = BroadcastInfo(url, token, hls if isinstance(hls, str) and hls else None)
                post(handlers.on_broadcast_ready, info, name="on_broadcast_ready")
            else:
                post(handlers.on_stream_error, "broadcast_error",
                     "broadcast_ready without webrtc_url/spectator_token", name="on_stream_error")
        elif kind == "interactive_stream_error":
            reason = msg.get("reason")
            reason = reason if isinstance(reason, str) and reason else "unknown"
            text = msg.get("message")
            text = text if isinstance(text, str) else ""
            exc = stream_error_from_reason(
                reason, text, stream_id=conn.stream_id, session_id=conn.session_id
            )
            # No request ids: the error answers the oldest start if one is
            # waiting (a start that failed), else the oldest interact.
            if not conn.pending.fail("start", exc):
                conn.pending.fail("interact", exc)
            post(handlers.on_stream_error, reason, text, name="on_stream_error")
        else:
            log.debug("ignoring streamer message of type %r", kind)

    def _fatal(self, conn: _Connection, exc: OdysseyError) -> None:
        """A fatal failure (any thread): fail connect(), or go FAILED and tear down."""
        with self._lock:
            if conn.closing or self._conn is not conn:
                return
            if not conn.connected:
                # connect() is waiting: it reports, tears down and raises.
                if conn.ready_error is None:
                    conn.ready_error = exc
                conn.ready.set()
                return
            self._conn = None
            conn.closing = True
            self._session_id = None
            self._set_status(conn, ConnectionStatus.FAILED, _text(exc))
            conn.dispatcher.post(conn.handlers.on_error, exc, True, name="on_error")
        self._teardown_async(conn, exc, telemetry=_error_event(exc, conn.session_id, None))

    def _closed_by_server(self, conn: _Connection, message: str) -> None:
        with self._lock:
            if conn.closing or self._conn is not conn:
                return
            self._conn = None
            conn.closing = True
            self._session_id = None
            self._set_status(conn, ConnectionStatus.DISCONNECTED, message)
        self._teardown_async(conn, OdysseyConnectionError(message), telemetry=None)

    def _callback_failed(self, conn: _Connection, exc: BaseException, name: str) -> None:
        """Dispatcher hook (event worker): a user callback raised → on_error(err, False)."""
        if name == "on_error" or not isinstance(exc, Exception):
            return  # an on_error that raises is only logged (no loops)
        handler = conn.handlers.on_error
        if handler is not None:
            try:
                handler(exc, False)
            except Exception:
                log.exception("on_error raised while reporting a %s failure", name)

    # -------------------------------------------------------------- teardown
    def disconnect(self, *, timeout: float = 10.0) -> None:
        """Close the connection and free everything it used.

        Blocking, bounded by roughly ``timeout`` seconds (each step has its
        own cap); any thread. Sends ``client_disconnecting`` and closes the
        WebSocket with code 1000, closes the peer connection, fails pending
        ``start_stream``/``interact``/``end_stream`` calls with
        :class:`OdysseyConnectionError`, delivers the queued callbacks
        (``on_status_change(DISCONNECTED)``, ``on_disconnected()``), then stops
        and joins every thread. Idempotent; never raises for state reasons.

        From inside a callback it does not wait for itself: the teardown then
        finishes on a helper thread shortly after the callback returns.
        While ``connect()`` runs in another thread, it makes that call fail
        with :class:`OdysseyConnectionError` (which then cleans up).
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                pass
            elif not conn.connected:
                conn.aborted = True
                conn.ready.set()
                conn = None
            else:
                self._conn = None
                conn.closing = True
                self._session_id = None
                self._set_status(conn, ConnectionStatus.DISCONNECTED, "disconnect() called")
        if conn is None:
            self._join_teardowns(timeout)
            return
        self._api.telemetry(
            {
                "event": "session_disconnected",
                "session_id": conn.session_id,
                "session_duration_seconds": round(time.monotonic() - conn.connected_at, 3),
            }
        )
        if conn.dispatcher.is_worker_thread() or (conn.loop and conn.loop.in_loop_thread()):
            self._teardown_async(conn, OdysseyConnectionError("disconnected"), telemetry=None)
            return
        self._teardown(conn, OdysseyConnectionError("disconnected"))
        self._join_teardowns(timeout)

    def _teardown_async(
        self, conn: _Connection, exc: BaseException, *, telemetry: dict[str, Any] | None
    ) -> None:
        def run() -> None:
            if telemetry is not None:
                self._api.telemetry(telemetry)
            self._teardown(conn, exc)

        # daemon: teardown is bounded, but must never be what keeps the process alive.
        thread = threading.Thread(
            target=run, name=f"odyssey-teardown-{self._id}.{conn.number}", daemon=True
        )
        with self._lock:
            self._teardowns = [t for t in self._teardowns if t.is_alive()]
            self._teardowns.append(thread)
        thread.start()

    def _join_teardowns(self, timeout: float = 10.0) -> None:
        current = threading.current_thread()
        if current.name.startswith(f"odyssey-{self._id}") and current.name.endswith(
            ("-events", "-video")
        ):
            # A callback (e.g. on_disconnected reconnecting): the teardown may be
            # waiting for this very worker, so waiting for it would stall both.
            return
        with self._lock:
            threads = [t for t in self._teardowns if t is not current]
        end = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        with self._lock:
            self._teardowns = [t for t in self._teardowns if t.is_alive()]

    def _teardown(self, conn: _Connection, exc: BaseException) -> None:
        """Free one connection's resources (any thread but its loop). Bounded."""
        conn.closing = True
        reason = exc if isinstance(exc, OdysseyError) else OdysseyConnectionError(str(exc))
        conn.pending.close(
            OdysseyConnectionError(
                f"connection closed before a reply ({_text(reason)})",
                session_id=conn.session_id,
            )
        )
        loop = conn.loop
        if loop is not None and loop.running and conn.peer is not None:
            peer = conn.peer
            try:
                # On the loop, so aiortc's decoder threads get their stop sentinel.
                loop.submit(peer.close(), _STEP_TIMEOUT, what="closing the peer connection")
            except Exception:
                log.debug("peer close failed", exc_info=True)
        if conn.signaling is not None:
            conn.signaling.close(timeout=2.0)
        if loop is not None:
            loop.stop(_STEP_TIMEOUT)
        if conn.ring is not None:
            conn.ring.close()
        if conn.connected:
            conn.dispatcher.post(conn.handlers.on_disconnected, name="on_disconnected")
        conn.dispatcher.stop(_STEP_TIMEOUT, drain=True)

    def _close_at_exit(self) -> None:
        """Interpreter exit: disconnect with short, bounded waits; never raise."""
        try:
            self.disconnect(timeout=3.0)
        except Exception:
            log.debug("disconnect at exit failed", exc_info=True)

    # ---------------------------------------------------------- stream calls
    def _require_connected(self, what: str) -> _Connection:
        with self._lock:
            conn = self._conn
            if conn is None or not conn.connected or self._status is not ConnectionStatus.CONNECTED:
                raise OdysseyStreamError(
                    f"{what} requires a connected client (status: {self._status.value})"
                )
            return conn

    def _stream_timeout(self, timeout: Timeout) -> float | None:
        if timeout is DEFAULT:
            return self._config.stream_timeout
        return _check_timeout(timeout)

    def start_stream(
        self,
        prompt: str = "",
        portrait: bool = True,
        image: Any = None,
        image_path: str | None = None,
        bypass_prompt_expansion: bool | None = None,
        broadcast: bool = False,
        *,
        timeout: Timeout = DEFAULT,
    ) -> str:
        """Start an interactive stream and return its stream id once it runs.

        Blocking, caller's thread. ``timeout``: ``DEFAULT`` = ``stream_timeout``
        (30 s), ``None`` = no limit, a number of seconds; on expiry
        :class:`OdysseyTimeoutError`. Several threads may call stream methods
        at once; each gets its own reply.

        Args:
            prompt: initial prompt (≤ ``MAX_PROMPT_CHARS`` characters; may be
                empty, e.g. with an image).
            portrait: 704×1280 when True, 1280×704 when False.
            image: image-to-video start picture: file path, ``data:`` URL,
                encoded ``bytes``, ``PIL.Image.Image`` or RGB ``uint8`` H×W×3 array.
            image_path: deprecated alias of ``image`` (DeprecationWarning).
            bypass_prompt_expansion: skip prompt expansion (needs the privilege);
                sent only when given.
            broadcast: let spectators watch (``on_broadcast_ready`` gets the details).

        Raises:
            TypeError / ValueError: bad arguments or image (before anything is sent).
            OdysseyStreamError: not connected (names the status), the streamer
                lacks image-to-video, or the start failed (``reason`` set).
            OdysseyUsageError: quota / concurrency / duration limits (§6.4).
            OdysseyConnectionError: the connection closed before the reply.
            OdysseyTimeoutError: no reply within ``timeout``.
        """
        _check_prompt(prompt, allow_empty=True)
        _check_bool("portrait", portrait)
        _check_bool("broadcast", broadcast)
        if bypass_prompt_expansion is not None:
            _check_bool("bypass_prompt_expansion", bypass_prompt_expansion)
        if image_path is not None:
            warnings.warn(
                "image_path is deprecated; pass image=... instead",
                DeprecationWarning,
                stacklevel=2,
            )
            if image is not None:
                raise ValueError("pass either image or image_path, not both")
            if not isinstance(image_path, str):
                raise TypeError("image_path must be a str")
            image = image_path
        wait = self._stream_timeout(timeout)
        conn = self._require_connected("start_stream")
        data_url: str | None = None
        if image is not None:
            if conn.capabilities is not None and not conn.capabilities.image_to_video:
                raise OdysseyStreamError(
                    "this streamer does not support image-to-video", session_id=conn.session_id
                )
            from ._images import encode_image

            data_url = encode_image(image, portrait=portrait)
        message: dict[str, Any] = {
            "type": "interactive_stream_start",
            "prompt": prompt,
            "portrait": portrait,
            "input_image_base64": data_url,
            "broadcast": broadcast,
        }
        if bypass_prompt_expansion is not None:
            message["bypass_vlm_expansion"] = bypass_prompt_expansion
        text = json.dumps(message)  # ASCII-escaped, as the size rule of §6.3 assumes
        deadline = Deadline(wait)
        fut = conn.pending.arm("start")  # armed BEFORE sending (§15.3)
        peer = conn.peer
        over_channel = (
            data_url is None
            and peer is not None
            and peer.channel_open
            and len(text.encode()) <= peer.max_message_size
        )
        if over_channel:
            self._send_on_channel(conn, "start", fut, text)
        else:
            signaling = conn.signaling
            try:
                if signaling is None:
                    raise OdysseyConnectionError("signaling socket is not open")
                signaling.send(message, deadline.remaining())
            except OdysseyError as exc:
                conn.pending.discard("start", fut, exc)
        stream_id: str = self._await_reply(fut, deadline, "start_stream", conn)
        return stream_id

    def interact(self, prompt: str, *, timeout: Timeout = DEFAULT) -> str:
        """Send an interaction prompt; return the prompt the streamer applied.

        Blocking, caller's thread; ``timeout`` as in :meth:`start_stream`.

        Raises:
            TypeError / ValueError: ``prompt`` not a str, empty, or too long.
            OdysseyStreamError: not connected / no active stream, or the
                streamer rejected it (``reason`` set).
            OdysseyConnectionError: the connection closed before the reply.
            OdysseyTimeoutError: no acknowledgement within ``timeout``.
        """
        _check_prompt(prompt, allow_empty=False)
        wait = self._stream_timeout(timeout)
        conn = self._require_connected("interact")
        if conn.stream_id is None and conn.pending.waiting("start") == 0:
            raise OdysseyStreamError(
                "interact requires an active stream (call start_stream first)",
                session_id=conn.session_id,
            )
        deadline = Deadline(wait)
        fut = conn.pending.arm("interact")
        text = json.dumps({"type": "update", "prompt": prompt})
        self._send_on_channel(conn, "interact", fut, text)
        ack: str = self._await_reply(fut, deadline, "interact", conn)
        return ack

    def end_stream(self, *, timeout: Timeout = DEFAULT) -> None:
        """End the current stream; return once the streamer confirmed it.

        Blocking, caller's thread; ``timeout`` as in :meth:`start_stream`.

        Raises:
            OdysseyStreamError: not connected (names the status).
            OdysseyConnectionError: the connection closed before the reply.
            OdysseyTimeoutError: no ``stream_ended`` within ``timeout``.
        """
        wait = self._stream_timeout(timeout)
        conn = self._require_connected("end_stream")
        deadline = Deadline(wait)
        fut = conn.pending.arm("end")
        self._send_on_channel(conn, "end", fut, json.dumps({"type": "interactive_stream_end"}))
        self._await_reply(fut, deadline, "end_stream", conn)

    def _send_on_channel(
        self, conn: _Connection, kind: str, fut: concurrent.futures.Future[Any], text: str
    ) -> None:
        """Hand ``text`` to the loop for ``clientToStreamer``; a failure fails ``fut``."""

        def send() -> None:
            peer = conn.peer
            try:
                if peer is None or conn.closing:
                    raise OdysseyConnectionError("data channel is not open")
                peer.send(text)
            except Exception as exc:
                err = exc if isinstance(exc, OdysseyError) else OdysseyConnectionError(
                    f"data channel send failed: {type(exc).__name__}"
                )
                conn.pending.discard(kind, fut, err)

        loop = conn.loop
        if loop is None or not loop.call_soon(send):
            conn.pending.discard(kind, fut, OdysseyConnectionError("not connected"))

    def _await_reply(
        self,
        fut: concurrent.futures.Future[Any],
        deadline: Deadline,
        what: str,
        conn: _Connection,
    ) -> Any:
        try:
            return fut.result(deadline.remaining())
        except concurrent.futures.TimeoutError:
            # The slot stays armed: a late reply is consumed by it, not by the next caller.
            raise OdysseyTimeoutError(
                f"{what}: no reply within {deadline.timeout:g} s", session_id=conn.session_id,
                stream_id=conn.stream_id,
            ) from None

    # ------------------------------------------------------------- frame pull
    def _ring(self, what: str) -> tuple[_Connection, FrameRing]:
        conn = self._conn
        if conn is None or conn.ring is None or conn.closing:
            raise OdysseyConnectionError(f"{what}: not connected (status: {self._status.value})")
        return conn, conn.ring

    def get_latest_frame(self, timeout: float | None = None) -> VideoFrame:
        """The newest decoded frame, as a zero-copy lease.

        Blocking only until a first frame exists. ``timeout=None``: return the
        newest frame, or wait (without limit) for the first one; a number:
        wait at most that long (:class:`OdysseyTimeoutError`); ``0``: never
        wait (raise at once when there is no frame yet).

        The frame's ``data`` is a read-only view of a ring slot, valid until
        you call ``frame.release()`` (or leave ``with frame:``). Release
        promptly: while every slot is held the ring drops new frames. Use
        ``frame.copy()`` to keep pixels longer.

        Raises:
            OdysseyConnectionError: not connected, or disconnected while waiting.
            OdysseyTimeoutError: no frame within ``timeout``.
        """
        wait = _check_timeout(timeout)
        conn, ring = self._ring("get_latest_frame")
        frame = ring.latest()
        if frame is not None:
            return frame
        return self._wait_frame(conn, ring, -1, Deadline(wait), "get_latest_frame")

    def frames(self, timeout: float | None = None) -> Iterator[VideoFrame]:
        """Iterate over frames as they arrive (newest first, none twice).

        Each ``next()`` blocks until a frame newer than the previous one is
        available: ``timeout=None`` without limit, a number of seconds per
        frame (:class:`OdysseyTimeoutError`). The previous frame's lease is
        released when the iterator advances (and when it is closed); copy
        what you keep. Frames that arrived while you were busy are skipped.
        The iteration ends (``StopIteration``) when the client disconnects.
        """
        wait = _check_timeout(timeout)
        conn, ring = self._ring("frames")
        return self._iter_frames(conn, ring, wait)

    def _iter_frames(
        self, conn: _Connection, ring: FrameRing, wait: float | None
    ) -> Iterator[VideoFrame]:
        last = -1
        current: VideoFrame | None = None
        try:
            while True:
                if current is not None:
                    current.release()
                    current = None
                try:
                    frame = self._wait_frame(conn, ring, last, Deadline(wait), "frames")
                except OdysseyConnectionError:
                    return
                current = frame
                last = frame.seq
                yield frame
        finally:
            if current is not None:
                current.release()

    def _wait_frame(
        self, conn: _Connection, ring: FrameRing, after: int, deadline: Deadline, what: str
    ) -> VideoFrame:
        while True:
            frame = ring.wait_newer(after, timeout=_clamp(deadline, _POLL))
            if frame is not None:
                return frame
            if conn.closing or ring.closed:
                raise OdysseyConnectionError(f"{what}: disconnected while waiting for a frame")
            if deadline.expired:
                raise OdysseyTimeoutError(
                    f"{what}: no video frame within {deadline.timeout:g} s",
                    session_id=conn.session_id,
                )

    @property
    def stats(self) -> ClientStats:
        """Frame-path counters of the current or last connection (non-blocking)."""
        conn = self._conn or self._last_conn
        if conn is None:
            return ClientStats()
        delivery = conn.dispatcher.stats()
        received = dropped = 0
        fps = c50 = c99 = 0.0
        if conn.ring is not None:
            ring_stats = conn.ring.stats
            received = ring_stats.written + ring_stats.dropped
            dropped = ring_stats.dropped
            c50, c99 = ring_stats.convert_us_p50, ring_stats.convert_us_p99
        if conn.peer is not None:
            fps = conn.peer.fps
        return ClientStats(
            received=received,
            delivered=delivery.delivered,
            dropped=dropped,
            skipped=delivery.skipped,
            fps=fps,
            convert_us_p50=c50,
            convert_us_p99=c99,
            delivery_us_p50=delivery.delivery_us_p50,
            delivery_us_p99=delivery.delivery_us_p99,
            callback_errors=delivery.callback_errors,
            events_dropped=delivery.events_dropped,
        )


@dataclass
class _PeerEvents:
    """Adapter from :class:`RtcPeer` events (loop thread) to the client."""

    client: Odyssey
    conn: _Connection

    def peer_ready(self) -> None:
        self.conn.ready.set()

    def peer_message(self, message: dict[str, Any]) -> None:
        self.client._on_peer_message(self.conn, message)

    def peer_bad_message(self, error: Exception) -> None:
        self.conn.dispatcher.post(self.conn.handlers.on_error, error, False, name="on_error")

    def peer_failed(self, reason: str) -> None:
        self.client._fatal(
            self.conn, OdysseyConnectionError(reason, session_id=self.conn.session_id)
        )

    def frame_written(self, seq: int) -> None:
        self.conn.dispatcher.notify_frame()


# ------------------------------------------------------------------ helpers
def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__}"
        )
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    return float(timeout)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_prompt(prompt: Any, *, allow_empty: bool) -> None:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not allow_empty and not prompt.strip():
        raise ValueError("prompt must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")


def _clamp(deadline: Deadline, seconds: float) -> float:
    left = deadline.clamp(seconds)
    return seconds if left is None else left


def _text(err: BaseException) -> str:
    if isinstance(err, OdysseyUsageError):
        return f"{err.code}: {err.message}"
    if isinstance(err, OdysseyError):
        return err.message or type(err).__name__
    return str(err) or type(err).__name__


def _as_connect_error(exc: BaseException) -> BaseException:
    """Errors out of connect(): typed ones pass, anything else → connection error."""
    if isinstance(exc, (OdysseyError, TypeError, ValueError)) or not isinstance(exc, Exception):
        return exc
    return OdysseyConnectionError(f"connect failed: {type(exc).__name__}: {exc}")


def _error_event(
    err: OdysseyError, session_id: str | None, status: ConnectionStatus | None
) -> dict[str, Any]:
    if isinstance(err, OdysseyAuthError):
        kind = "auth"
    elif isinstance(err, OdysseyUsageError):
        kind = "usage"
    elif isinstance(err, OdysseyStreamError):
        kind = "stream"
    elif isinstance(err, OdysseyConnectionError):
        kind = "connection"
    else:
        kind = "unknown"
    event: dict[str, Any] = {"error_type": kind, "error_message": _text(err)}
    if session_id:
        event["session_id"] = session_id
    if isinstance(err, OdysseyUsageError):
        event["error_code"] = err.code
    if status is not None:
        event["connection_status"] = status.value
    return event


def _disconnect_forgotten_clients() -> None:
    for client in list(_LIVE):
        client._close_at_exit()


# threading._register_atexit runs before the interpreter joins non-daemon
# threads — aiortc's decoder threads are non-daemon and stop only when the
# peer connection closes, so a plain atexit hook would come too late and exit
# would hang. Fall back to atexit where the private hook does not exist.
try:
    threading._register_atexit(_disconnect_forgotten_clients)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover
    import atexit

    atexit.register(_disconnect_forgotten_clients)
