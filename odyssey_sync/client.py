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

Every method has the same shape: validate the arguments (``TypeError`` /
``ValueError`` before anything is sent) → one :class:`~odyssey_sync._deadline.Deadline`
for the whole call → the session (:mod:`odyssey_sync._session`) → wait.

Threads (see the README's module map):

* your thread: every public method runs here and blocks until done or its
  timeout; REST (auth, allocation, ICE config) uses ``requests`` right here;
* ``odyssey-loop-N``: asyncio + aiortc (ICE, DTLS, SCTP, RTP, decoding, the
  data channels) — no user code ever runs on it;
* ``odyssey-signaling-N-reader`` / ``-writer``: the signaling WebSocket;
* ``odyssey-N-events``: runs your event callbacks one at a time, in order;
* ``odyssey-N-video``: runs ``on_video_frame`` with the latest frame; a slow
  callback skips frames (counted in :attr:`Odyssey.stats`), it never queues
  them and never slows the network;
* ``odyssey-N-resume`` (``resume=True`` only): hands the session over across
  the service's limits and recovers lost connections.

Every thread is a daemon and is joined (with timeouts) by :meth:`Odyssey.disconnect`;
a client you forget to disconnect is disconnected at interpreter exit, with
bounded waits.

Errors are the tree of :mod:`odyssey_sync.errors`.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import _lifecycle
from ._deadline import DEFAULT, Deadline, Timeout, check_timeout, resolve_timeout
from ._offline import OfflineMethods
from ._protocol import MAX_PROMPT_CHARS, check_bool, check_prompt
from ._session import Handlers, Session, StreamRequest
from ._telemetry import error_event, error_text
from .config import ClientConfig
from .errors import (
    OdysseyAuthError,
    OdysseyConnectionError,
    OdysseyError,
    OdysseyStreamError,
    OdysseyTimeoutError,
)
from .types import BroadcastInfo, ClientCredentials, ClientStats, ConnectionStatus

if TYPE_CHECKING:
    from types import TracebackType

    from ._frames import VideoFrame
    from ._rest import ApiClient

__all__ = ["DEFAULT", "MAX_PROMPT_CHARS", "ClientStats", "Odyssey"]

log = logging.getLogger("odyssey_sync.client")

_ids = iter(range(1, 1 << 62))
_ids_lock = threading.Lock()


def _next_id() -> int:
    with _ids_lock:
        return next(_ids)


class Odyssey(OfflineMethods):
    """Client of Odyssey's interactive video API — synchronous and thread-safe.

    Args:
        api_key: the account's API key (``"ody_..."``). May be empty/None for a
            client that only uses :meth:`connect_with_credentials`.
        **kwargs: options of :class:`odyssey_sync.config.ClientConfig`
            (``api_url``, ``connect_timeout``, ``stream_timeout``,
            ``frame_format``, ``ring_size``, ``low_latency``, ``resume``,
            ``stream_limit``, …).

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
        self._id = _next_id()
        self._lock = threading.RLock()
        self._session: Session | None = None
        self._sessions = 0
        self._connecting = False
        _lifecycle.register(self)

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
        return self.current_status is ConnectionStatus.CONNECTED

    @property
    def current_status(self) -> ConnectionStatus:
        """The current :class:`~odyssey_sync.types.ConnectionStatus` (non-blocking)."""
        session = self._session
        return session.status if session is not None else ConnectionStatus.DISCONNECTED

    @property
    def current_session_id(self) -> str | None:
        """The allocation (session) id while connecting/connected, else ``None``."""
        session = self._session
        return session.session_id if session is not None else None

    @property
    def last_applied_prompt(self) -> str | None:
        """The prompt the streamer last reported applying (after expansion), or ``None``."""
        session = self._session
        return session.last_applied_prompt if session is not None else None

    @property
    def current_stream_id(self) -> str | None:
        """The id of the running stream, or ``None`` when no stream is active."""
        session = self._session
        return session.stream_id if session is not None and not session.closing else None

    @property
    def stream_ids(self) -> list[str]:
        """Every stream of the current (or last) session, in order (non-blocking).

        Without ``resume`` this is one id per ``start_stream``; with it, each
        planned handover and each recovery adds the id of the next stream
        (each stream has its own recording).
        """
        session = self._session
        if session is None:
            return []
        with session.lock:
            return list(session.stream_ids)

    def __repr__(self) -> str:
        key = self._api_key
        shown = "'ody_…'" if key.startswith("ody_") else ("'…'" if key else "None")
        return (
            f"<Odyssey api_url={self._config.api_url!r} status={self.current_status.value} "
            f"session_id={self.current_session_id!r} api_key={shown}>"
        )

    def __enter__(self) -> Odyssey:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After an exception in the body, queued callbacks are cancelled rather
        # than delivered (anyio's rule): the program is already unwinding.
        self._close(Deadline(10.0), cancel=exc_type is not None, raise_on_timeout=False)

    def close(self, timeout: float | None = 10.0) -> None:
        """Disconnect (if connected) and release the HTTP session. Blocking, bounded.

        ``timeout`` as in :meth:`disconnect`. The client cannot connect again
        afterwards; offline methods raise :class:`OdysseyConnectionError`.
        Idempotent.

        Raises:
            TypeError / ValueError: a bad ``timeout`` (before anything happens).
            OdysseyTimeoutError: a thread we started was still running after ``timeout``.
        """
        wait = check_timeout(timeout)
        self._close(Deadline(wait), cancel=False, raise_on_timeout=wait is not None)

    def _close(self, deadline: Deadline, *, cancel: bool, raise_on_timeout: bool) -> None:
        try:
            self._shutdown(deadline, cancel=cancel, raise_on_timeout=raise_on_timeout)
        finally:
            self._api.close()
            _lifecycle.unregister(self)

    def close_at_exit(self, timeout: float) -> None:
        """Interpreter exit (see :mod:`odyssey_sync._lifecycle`): bounded, never raises."""
        try:
            self._shutdown(Deadline(timeout), cancel=True, raise_on_timeout=False)
        except Exception:
            log.debug("disconnect at exit failed", exc_info=True)

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
        With ``resume=True``, ``on_status_change`` reports ``RECONNECTING``
        then ``CONNECTED`` around a recovery, and ``on_stream_started`` fires
        for every new stream id of the session.

        Already connected → returns at once. Connecting (in another thread) →
        :class:`OdysseyConnectionError`. After a failure, connect again.

        Raises:
            OdysseyAuthError: no/invalid API key.
            OdysseyUsageError: an account limit (HTTP 429), e.g. ConcurrentLimitReachedError.
            OdysseyQueueTimeoutError: no streamer freed up within ``queue_timeout``.
            OdysseyConnectionError: allocation, signaling or WebRTC failed.
            OdysseyTimeoutError: ``timeout`` expired (allocation or readiness).
        """
        handlers = Handlers(
            on_connected, on_disconnected, on_video_frame, on_stream_started, on_stream_ended,
            on_interact_acknowledged, on_stream_error, on_error, on_status_change,
            on_broadcast_ready,
        )
        budget = resolve_timeout(timeout, self._config.connect_timeout)
        if not self._api_key:
            raise OdysseyAuthError(
                "an API key is required to connect (or use connect_with_credentials())"
            )
        self._connect(handlers, Deadline(budget), credentials=None)

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
        Credentials are locked to one session, so ``resume`` cannot open a
        second connection with them: a resumable client needs an API key.

        Raises:
            TypeError / ValueError: malformed credentials, unknown callback
                names, or ``resume=True`` (which needs an API key).
            OdysseyConnectionError: signaling or WebRTC failed.
            OdysseyTimeoutError: ``timeout`` expired.
        """
        if isinstance(credentials, dict):
            credentials = ClientCredentials.from_dict(credentials)
        if not isinstance(credentials, ClientCredentials):
            raise TypeError("credentials must be a ClientCredentials or a dict")
        unknown = set(callbacks) - Handlers.names()
        if unknown:
            raise TypeError(f"unknown callback(s): {', '.join(sorted(unknown))}")
        if self._config.resume:
            raise ValueError(
                "resume=True needs an API key: client credentials are locked to one session"
            )
        handlers = Handlers(**callbacks)
        budget = resolve_timeout(timeout, self._config.connect_timeout)
        self._connect(handlers, Deadline(budget), credentials=credentials)

    def _connect(
        self, handlers: Handlers, deadline: Deadline, *, credentials: ClientCredentials | None
    ) -> None:
        from ._frames import FrameRing

        with self._lock:
            old = self._session
            if old is not None and not old.closing:
                if old.status is ConnectionStatus.CONNECTED:
                    return
                raise OdysseyConnectionError(f"Already {old.status.value}")
            if self._connecting:
                raise OdysseyConnectionError("Already connecting")
            self._connecting = True
        try:
            if old is not None and not _on_own_thread(old):
                _join(old, deadline)
            with self._lock:
                self._sessions += 1
                number = self._sessions
            name = f"odyssey-{self._id}" if number == 1 else f"odyssey-{self._id}.{number}"
            ring = FrameRing(self._config.ring_size, self._config.frame_format,
                             self._config.geometry)
            session = Session(name=name, config=self._config, api=self._api,
                              handlers=handlers, ring=ring)
            if self._config.resume:
                from ._resume import Resumer

                session.resumer = Resumer(session)
            with self._lock:
                self._session = session
        finally:
            with self._lock:
                self._connecting = False
        started = time.monotonic()
        self._api.telemetry({"event": "session_connecting"})
        try:
            session.open(deadline, credentials)
        except BaseException as exc:
            err = _as_connect_error(exc)
            self._connect_failed(session, err)
            if err is exc:
                raise
            raise err from exc
        self._api.telemetry({
            "event": "session_connected",
            "session_id": session.session_id,
            "connect_duration_ms": int((time.monotonic() - started) * 1000),
        })

    def _connect_failed(self, session: Session, err: BaseException) -> None:
        with session.lock:
            aborted = session.closing
            session.closing = True
            if aborted:
                session.set_status(ConnectionStatus.DISCONNECTED, "disconnect() called")
            else:
                session.set_status(ConnectionStatus.FAILED, error_text(err))
                if isinstance(err, Exception):
                    session.post(session.handlers.on_error, err, True, name="on_error")
        if not aborted and isinstance(err, OdysseyError):
            self._api.telemetry(error_event(err, session.session_id, ConnectionStatus.FAILED))
        session.close(Deadline(10.0), OdysseyConnectionError("connect() failed"), cancel=False)

    # -------------------------------------------------------------- teardown
    def disconnect(self, *, timeout: float | None = 10.0) -> None:
        """Close the connection and free everything it used.

        Blocking, any thread. One deadline covers every step: ``timeout=None``
        waits for each of them (each still has its own cap, so a dead peer
        cannot hold it forever); a number of seconds bounds the whole call
        and raises :class:`OdysseyTimeoutError` when a thread we started was
        still running at the end. Sends ``client_disconnecting`` and closes
        the WebSocket with code 1000, closes the peer connection, fails
        pending ``start_stream``/``interact``/``end_stream`` calls with
        :class:`OdysseyConnectionError`, delivers the queued callbacks
        (``on_status_change(DISCONNECTED)``, ``on_disconnected()``), then stops
        and joins every thread. A running recovery (``resume=True``) ends at
        once. Idempotent; never raises for state reasons.

        From inside a callback it does not wait for itself: the teardown then
        finishes on a helper thread shortly after the callback returns.
        While ``connect()`` runs in another thread, it makes that call fail
        with :class:`OdysseyConnectionError` (which then cleans up).

        Raises:
            TypeError / ValueError: a bad ``timeout`` (before anything happens).
            OdysseyTimeoutError: see above.
        """
        wait = check_timeout(timeout)
        self._shutdown(Deadline(wait), cancel=False, raise_on_timeout=wait is not None)

    def _shutdown(self, deadline: Deadline, *, cancel: bool, raise_on_timeout: bool) -> None:
        with self._lock:
            session = self._session
        if session is None:
            return
        with session.lock:
            if not session.connected and not session.closing:
                session.abort_open()  # connect() fails, reports and cleans up
                return
            first = not session.closing
            session.closing = True
            if first:
                session.set_status(ConnectionStatus.DISCONNECTED, "disconnect() called")
        if first:
            conn = session.conn
            self._api.telemetry({
                "event": "session_disconnected",
                "session_id": conn.session_id if conn is not None else None,
                "session_duration_seconds": round(
                    time.monotonic() - conn.connected_at, 3) if conn is not None else 0.0,
            })
        if _on_own_thread(session):
            if first:
                session.close_in_background(OdysseyConnectionError("disconnected"))
            return
        if first:
            joined = session.close(deadline, OdysseyConnectionError("disconnected"), cancel=cancel)
        else:
            joined = _join(session, deadline)
        if not joined and raise_on_timeout:
            raise OdysseyTimeoutError(
                f"disconnect did not finish within {deadline.timeout:g} s "
                "(a thread of the client was still running)"
            )

    # ---------------------------------------------------------- stream calls
    def _live(self) -> Session:
        session = self._session
        if session is None or session.closing:
            status = session.status.value if session is not None else "disconnected"
            raise OdysseyStreamError(f"requires a connected client (status: {status})")
        return session

    def _stream_deadline(self, timeout: Timeout) -> Deadline:
        return Deadline(resolve_timeout(timeout, self._config.stream_timeout))

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
        at once; each gets its own reply. From the moment it returns,
        :meth:`get_latest_frame` and :meth:`frames` yield frames of this
        stream only (with ``resume=True``: of this stream and its continuations).

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
        check_prompt(prompt, allow_empty=True)
        check_bool("portrait", portrait)
        check_bool("broadcast", broadcast)
        if bypass_prompt_expansion is not None:
            check_bool("bypass_prompt_expansion", bypass_prompt_expansion)
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
        deadline = self._stream_deadline(timeout)
        session = self._live_for("start_stream")
        data_url: str | None = None
        if image is not None:
            caps = session.conn.capabilities if session.conn is not None else None
            if caps is not None and not caps.image_to_video:
                raise OdysseyStreamError(
                    "this streamer does not support image-to-video",
                    session_id=session.session_id,
                )
            from ._images import encode_image

            data_url = encode_image(image, portrait=portrait)
        request = StreamRequest(prompt, portrait, data_url, broadcast, bypass_prompt_expansion)
        return session.start_stream(request, deadline)

    def interact(self, prompt: str, *, timeout: Timeout = DEFAULT) -> str:
        """Send an interaction prompt; return the prompt the streamer applied.

        Blocking, caller's thread; ``timeout`` as in :meth:`start_stream`.
        With ``resume=True`` a call made while the session recovers waits for
        the recovery within its own timeout, then proceeds.

        Raises:
            TypeError / ValueError: ``prompt`` not a str, empty, or too long.
            OdysseyStreamError: not connected / no active stream, or the
                streamer rejected it (``reason`` set).
            OdysseyConnectionError: the connection closed before the reply.
            OdysseyTimeoutError: no acknowledgement within ``timeout``.
        """
        check_prompt(prompt, allow_empty=False)
        deadline = self._stream_deadline(timeout)
        return self._live_for("interact").interact(prompt, deadline)

    def end_stream(self, *, timeout: Timeout = DEFAULT) -> None:
        """End the current stream; return once the streamer confirmed it.

        Blocking, caller's thread; ``timeout`` as in :meth:`start_stream`.

        Raises:
            OdysseyStreamError: not connected (names the status).
            OdysseyConnectionError: the connection closed before the reply.
            OdysseyTimeoutError: no ``stream_ended`` within ``timeout``.
        """
        deadline = self._stream_deadline(timeout)
        self._live_for("end_stream").end_stream(deadline)

    def _live_for(self, what: str) -> Session:
        try:
            return self._live()
        except OdysseyStreamError:
            session = self._session
            status = session.status.value if session is not None else "disconnected"
            if session is not None and session.lost is not None:
                raise OdysseyStreamError(
                    f"{what}: the connection was lost ({session.lost}; status: {status})"
                ) from None
            raise OdysseyStreamError(
                f"{what} requires a connected client (status: {status})") from None

    # ------------------------------------------------------------- frame pull
    def _frame_session(self, what: str) -> Session:
        session = self._session
        if session is None or session.closing or session.ring.closed:
            raise OdysseyConnectionError(
                f"{what}: not connected (status: {self.current_status.value})")
        return session

    def get_latest_frame(
        self, timeout: float | None = None, *, max_age: float | None = None,
        full_size: bool = False,
    ) -> VideoFrame:
        """The newest decoded frame, as a zero-copy lease.

        Blocking only until a suitable frame exists. ``timeout=None``: return
        the newest frame, or wait (without limit) for the first one; a
        number: wait at most that long (:class:`OdysseyTimeoutError`); ``0``:
        never wait. ``max_age``: refuse a frame older than that many seconds
        and wait for a fresher one instead (within ``timeout``). After
        :meth:`start_stream` returned, only frames of that stream qualify
        (``frame.stream_id``). ``full_size=True`` (with ``frame_size`` or
        ``crop`` set): the frame at its decoded size, converted on demand from
        the kept decoded picture — an owned frame, not a lease (for a preview
        or ``render()`` beside small observations).

        The frame's ``data`` is a read-only view of a ring slot, valid until
        you call ``frame.release()`` (or leave ``with frame:``). Release
        promptly: while every slot is held the ring drops new frames. Use
        ``frame.copy()`` to keep pixels longer.

        Raises:
            TypeError / ValueError: bad ``timeout`` / ``max_age``.
            OdysseyConnectionError: not connected, or disconnected while waiting.
            OdysseyTimeoutError: no suitable frame within ``timeout``.
        """
        wait = check_timeout(timeout)
        age = check_timeout(max_age, "max_age")
        check_bool("full_size", full_size)
        session = self._frame_session("get_latest_frame")
        frame = session.latest_frame(Deadline(wait), age)
        if not full_size:
            return frame
        with frame:
            return session.ring.full_size(frame)

    def frames(self, timeout: float | None = None) -> Iterator[VideoFrame]:
        """Iterate over frames as they arrive (newest first, none twice).

        Each ``next()`` blocks until a frame newer than the previous one is
        available: ``timeout=None`` without limit, a number of seconds per
        frame (:class:`OdysseyTimeoutError`). The previous frame's lease is
        released when the iterator advances (and when it is closed); copy
        what you keep. Frames that arrived while you were busy are skipped.
        The iteration ends (``StopIteration``) when the client disconnects;
        with ``resume=True`` it runs on across stream handovers and recoveries.
        """
        wait = check_timeout(timeout)
        return self._frame_session("frames").iter_frames(wait)

    @property
    def stats(self) -> ClientStats:
        """Frame-path and resume counters of the current or last session (non-blocking)."""
        session = self._session
        return session.stats() if session is not None else ClientStats()


# ------------------------------------------------------------------ helpers
def _on_own_thread(session: Session) -> bool:
    """Called from one of the session's own threads (a callback, a loop, the resumer)?"""
    if session.dispatcher.is_worker_thread():
        return True
    name = threading.current_thread().name
    return name.startswith((f"odyssey-loop-{session.name.removeprefix('odyssey-')}",
                            f"{session.name}-resume"))


def _join(session: Session, deadline: Deadline) -> bool:
    """Wait for a session's background teardown; True once it has finished."""
    left = deadline.clamp(10.0)
    return session.wait_closed(10.0 if left is None else left)


def _as_connect_error(exc: BaseException) -> BaseException:
    """Errors out of connect(): typed ones pass, anything else → connection error."""
    if isinstance(exc, (OdysseyError, TypeError, ValueError)) or not isinstance(exc, Exception):
        return exc
    return OdysseyConnectionError(f"connect failed: {type(exc).__name__}: {exc}")
