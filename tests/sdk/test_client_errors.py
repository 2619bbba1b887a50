"""Every error path of the client, end to end against the local server's fault switches."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from aiohttp import web

from odyssey_sync._loop import LoopThread
from odyssey_sync.client import Odyssey
from odyssey_sync.errors import (
    ConcurrentLimitReachedError,
    MonthlyLimitReachedError,
    OdysseyAuthError,
    OdysseyConnectionError,
    OdysseyQueueTimeoutError,
    OdysseyStreamError,
    OdysseyTimeoutError,
    OdysseyUsageError,
    StreamDurationExceededError,
)
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.types import ClientCredentials, ConnectionStatus

pytestmark = pytest.mark.e2e

FAST_RETRY = {"initial_retry_delay": 0.05, "max_retry_delay": 0.1}


@pytest.fixture
def client(server: LocalOdyssey) -> Iterator[Odyssey]:
    c = Odyssey(server.api_key, api_url=server.url, connect_timeout=20, **FAST_RETRY)
    yield c
    c.close()


class Seen:
    def __init__(self) -> None:
        self.errors: list[tuple[Exception, bool]] = []
        self.statuses: list[ConnectionStatus] = []
        self.stream_errors: list[tuple[str, str]] = []
        self.disconnected = threading.Event()
        self.disconnects = 0

    def callbacks(self) -> dict[str, Any]:
        def on_disconnected() -> None:
            self.disconnects += 1
            self.disconnected.set()

        return {
            "on_error": lambda e, fatal: self.errors.append((e, fatal)),
            "on_status_change": lambda s, m: self.statuses.append(s),
            "on_stream_error": lambda r, m: self.stream_errors.append((r, m)),
            "on_disconnected": on_disconnected,
        }


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# ------------------------------------------------------------------ connect
def test_bad_key_is_auth_error_and_failed(server: LocalOdyssey) -> None:
    seen = Seen()
    with Odyssey("ody_wrong_key_123456", api_url=server.url) as c:
        with pytest.raises(OdysseyAuthError) as info:
            c.connect(**seen.callbacks())
        assert "ody_wrong_key_123456" not in str(info.value)
        assert c.current_status is ConnectionStatus.FAILED
    assert seen.statuses == [ConnectionStatus.AUTHENTICATING, ConnectionStatus.FAILED]
    assert seen.errors and seen.errors[0][1] is True
    assert seen.disconnects == 0  # never connected: no on_disconnected


def test_missing_key_rejected_before_network(server: LocalOdyssey) -> None:
    with Odyssey(api_url=server.url) as c, pytest.raises(OdysseyAuthError):
        c.connect()


def test_denied_auth_403(client: Odyssey, server: LocalOdyssey) -> None:
    server.faults.set(deny_auth=1, deny_auth_detail="Account disabled")
    with pytest.raises(OdysseyAuthError, match="Account disabled"):
        client.connect()


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("MONTHLY_LIMIT_REACHED", MonthlyLimitReachedError),
        ("CONCURRENT_LIMIT_REACHED", ConcurrentLimitReachedError),
        ("SOMETHING_NEW", OdysseyUsageError),
    ],
)
def test_usage_errors_429(client: Odyssey, server: LocalOdyssey, code: str, cls: type) -> None:
    seen = Seen()
    server.faults.set(
        usage_error={"error": code, "message": "limit", "action": "Upgrade"},
        usage_error_count=1,
    )
    with pytest.raises(cls) as info:
        client.connect(**seen.callbacks())
    assert info.value.code == code
    assert client.current_status is ConnectionStatus.FAILED
    wait_for(lambda: bool(seen.errors))
    assert isinstance(seen.errors[0][0], cls) and seen.errors[0][1] is True
    client.connect()  # works again after a failure
    assert client.is_connected


def test_queue_then_success(client: Odyssey, server: LocalOdyssey) -> None:
    seen = Seen()
    server.faults.set(refuse_sessions=2)
    client.connect(**seen.callbacks())
    assert client.is_connected
    assert seen.statuses[:2] == [ConnectionStatus.AUTHENTICATING, ConnectionStatus.CONNECTING]


def test_queue_timeout(server: LocalOdyssey) -> None:
    server.faults.set(refuse_sessions=100)
    with Odyssey(server.api_key, api_url=server.url, queue_timeout=0.5) as c:
        with pytest.raises(OdysseyQueueTimeoutError):
            c.connect()
        assert c.current_status is ConnectionStatus.FAILED


def test_signaling_refused_then_retried(client: Odyssey, server: LocalOdyssey) -> None:
    seen = Seen()
    server.faults.set(refuse_signaling=2)
    client.connect(**seen.callbacks())
    assert client.is_connected
    assert seen.statuses.count(ConnectionStatus.CONNECTING) == 3  # first + 2 retries


def test_signaling_refused_beyond_retries(server: LocalOdyssey) -> None:
    server.faults.set(refuse_signaling=10)
    with Odyssey(server.api_key, api_url=server.url, max_retries=2, **FAST_RETRY) as c:
        with pytest.raises(OdysseyConnectionError, match="503"):
            c.connect()
        assert c.current_status is ConnectionStatus.FAILED


def test_signaling_error_message_fails_connect(client: Odyssey, server: LocalOdyssey) -> None:
    server.faults.set(signaling_error="streamer_not_available")
    with pytest.raises(OdysseyConnectionError, match="streamer_not_available"):
        client.connect()
    assert client.current_status is ConnectionStatus.FAILED
    server.faults.set(signaling_error=None)
    client.connect()
    assert client.is_connected


def test_connect_timeout_none_rejects_bad_types(client: Odyssey) -> None:
    with pytest.raises(TypeError):
        client.connect(on_connected="not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.connect(timeout="soon")  # type: ignore[arg-type]
    assert client.current_status is ConnectionStatus.DISCONNECTED


# ------------------------------------------------------------------ streams
@pytest.mark.parametrize(
    ("reason", "cls"),
    [
        ("quota_exceeded", MonthlyLimitReachedError),
        ("concurrent_limit_exceeded", ConcurrentLimitReachedError),
        ("session_timeout", StreamDurationExceededError),
        ("lease_denied", OdysseyStreamError),
        ("content_policy", OdysseyStreamError),
    ],
)
def test_stream_errors_by_reason(
    client: Odyssey, server: LocalOdyssey, reason: str, cls: type
) -> None:
    seen = Seen()
    client.connect(**seen.callbacks())
    server.faults.set(stream_error=reason, stream_error_message="nope")
    with pytest.raises(cls) as info:
        client.start_stream("refused")
    if isinstance(info.value, OdysseyStreamError):
        assert info.value.reason == reason
    wait_for(lambda: bool(seen.stream_errors))
    assert seen.stream_errors[0] == (reason, "nope")
    assert client.is_connected  # a stream error is not fatal
    assert client.start_stream("accepted now")
    client.end_stream()


def test_never_ack_times_out_and_late_replies_stay_matched(
    client: Odyssey, server: LocalOdyssey
) -> None:
    client.connect()
    client.start_stream("acks")
    server.faults.set(ack_delay=0.6)
    with pytest.raises(OdysseyTimeoutError):
        client.interact("slow one", timeout=0.1)
    # the late ack of "slow one" must not be handed to the next caller
    assert "second" in client.interact("second", timeout=5)
    server.faults.set(ack_delay=0.0, never_ack=True)
    with pytest.raises(OdysseyTimeoutError, match="end_stream"):
        client.end_stream(timeout=0.2)


def test_pending_calls_fail_on_disconnect(client: Odyssey, server: LocalOdyssey) -> None:
    client.connect()
    client.start_stream("pending")
    server.faults.set(never_ack=True)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.interact("waits forever", timeout=None)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=call, name="test-interact")
    t.start()
    time.sleep(0.2)  # let the call arm its slot (no event to await from outside)
    client.disconnect()
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], OdysseyConnectionError)


def test_signaling_dropped_mid_stream(client: Odyssey, server: LocalOdyssey) -> None:
    seen = Seen()
    server.faults.set(drop_signaling_after=1.0)
    client.connect(**seen.callbacks())
    client.start_stream("doomed")
    server.faults.set(never_ack=True)
    with pytest.raises(OdysseyConnectionError):
        client.interact("during the drop", timeout=10)
    assert seen.disconnected.wait(10)
    assert client.current_status is ConnectionStatus.FAILED
    fatal = [e for e, f in seen.errors if f]
    assert fatal and isinstance(fatal[0], OdysseyConnectionError)
    assert seen.disconnects == 1
    with pytest.raises(OdysseyStreamError, match="failed"):
        client.interact("after")
    server.faults.set(drop_signaling_after=None, never_ack=False)
    client.connect()  # recovers
    assert client.is_connected


def test_callback_error_reported_not_fatal(client: Odyssey) -> None:
    seen = Seen()
    cbs = seen.callbacks()

    def boom(sid: str) -> None:
        raise RuntimeError("user bug")

    frames_seen = threading.Event()

    def bad_frame(frame: Any) -> None:
        frames_seen.set()
        raise KeyError("frame bug")

    client.connect(on_stream_started=boom, on_video_frame=bad_frame, **cbs)
    client.start_stream("bugs")
    assert frames_seen.wait(10)
    # Idle frames may raise KeyError before on_stream_started runs: wait for both kinds.
    wait_for(lambda: {RuntimeError, KeyError} <= {type(e) for e, fatal in seen.errors if not fatal})
    assert client.is_connected
    assert client.interact("still fine")
    assert client.stats.callback_errors >= 2


# ------------------------------------------------- readiness timeout (§15.13)
def _silent_signaling() -> tuple[LoopThread, str, web.AppRunner]:
    """A signaling server that accepts the socket and never sends an offer."""
    lt = LoopThread("test-silent-sig")
    lt.start()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    async def config(request: web.Request) -> web.Response:
        return web.json_response({"iceServers": []})

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/sig/config", config)
        app.router.add_get("/sig/client/{sid}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return runner, port

    runner, port = lt.submit(start(), 10)
    return lt, f"ws://127.0.0.1:{port}/sig", runner


def test_readiness_timeout_tears_everything_down(server: LocalOdyssey) -> None:
    lt, url, runner = _silent_signaling()
    try:
        token = jwt.encode({"session_id": "s-silent"}, "k" * 32, algorithm="HS256")
        creds = ClientCredentials(url, token, 600)
        seen = Seen()
        with Odyssey(api_url=server.url) as c:
            # a readiness expiry is a timeout, like every other expiry
            with pytest.raises(OdysseyTimeoutError, match="offer"):
                c.connect_with_credentials(creds, timeout=1.0, **seen.callbacks())
            assert c.current_status is ConnectionStatus.FAILED
            assert seen.statuses[-1] is ConnectionStatus.FAILED
            names = [t.name for t in threading.enumerate()]
            assert not [n for n in names if n.startswith(("odyssey-loop", "odyssey-signaling"))]
            # connect again is possible (not stuck in "connecting")
            with pytest.raises(OdysseyTimeoutError):
                c.connect_with_credentials(creds, timeout=0.5)
    finally:
        lt.submit(runner.cleanup(), 10)
        lt.stop()


def test_connect_while_connecting_raises(server: LocalOdyssey) -> None:
    lt, url, runner = _silent_signaling()
    try:
        token = jwt.encode({"session_id": "s-silent"}, "k" * 32, algorithm="HS256")
        creds = ClientCredentials(url, token, 600)
        with Odyssey(api_url=server.url) as c:
            errors: list[BaseException] = []

            def slow_connect() -> None:
                try:
                    c.connect_with_credentials(creds, timeout=10)
                except BaseException as exc:
                    errors.append(exc)

            t = threading.Thread(target=slow_connect, name="test-connect")
            t.start()
            wait_for(lambda: c.current_status is ConnectionStatus.CONNECTING)
            with pytest.raises(OdysseyConnectionError, match="Already connecting"):
                c.connect_with_credentials(creds)
            c.disconnect()  # aborts the pending connect
            t.join(10)
            assert not t.is_alive()
            assert errors and isinstance(errors[0], OdysseyConnectionError)
            assert c.current_status is ConnectionStatus.DISCONNECTED
    finally:
        lt.submit(runner.cleanup(), 10)
        lt.stop()


def test_normal_server_close_is_noticed(client: Odyssey) -> None:
    """A close with code 1000 while connected → DISCONNECTED + on_disconnected (§15.10).

    The local server only closes abnormally (drop_signaling_after uses 1011),
    so the close is injected where the signaling reader would report it.
    """
    seen = Seen()
    client.connect(**seen.callbacks())
    conn = client._session.conn
    assert conn is not None and conn.loop is not None
    conn.loop.call_soon(conn._on_signal_close, conn._attempt, 1000, "bye", False)
    assert seen.disconnected.wait(10)
    assert client.current_status is ConnectionStatus.DISCONNECTED
    assert not [e for e, fatal in seen.errors if fatal]
    client.disconnect()


def test_reconnect_from_on_disconnected(client: Odyssey, server: LocalOdyssey) -> None:
    reconnected = threading.Event()
    errors: list[BaseException] = []

    def on_disconnected() -> None:
        server.faults.set(drop_signaling_after=None)
        try:
            client.connect()  # from the old connection's event worker
            reconnected.set()
        except BaseException as exc:
            errors.append(exc)

    server.faults.set(drop_signaling_after=0.5)
    client.connect(on_disconnected=on_disconnected)
    assert reconnected.wait(15), errors
    assert client.is_connected
    assert client.start_stream("second life")
    client.end_stream()


def test_peer_connection_failure_is_fatal(client: Odyssey) -> None:
    """§15.12: the peer connection closing on its own → FAILED, on_error, on_disconnected."""
    seen = Seen()
    client.connect(**seen.callbacks())
    client.start_stream("about to break")
    conn = client._session.conn
    assert conn is not None and conn.loop is not None and conn.peer is not None
    pc = conn.peer._pc  # simulate ICE/DTLS death: close the transport under the peer

    tasks: list[asyncio.Future[None]] = []

    def kill() -> None:
        tasks.append(asyncio.ensure_future(pc.close()))

    conn.loop.call_soon(kill)
    assert seen.disconnected.wait(10)
    assert client.current_status is ConnectionStatus.FAILED
    fatal = [e for e, f in seen.errors if f]
    assert len(fatal) == 1 and isinstance(fatal[0], OdysseyConnectionError)
    with pytest.raises(OdysseyStreamError, match="failed"):
        client.interact("gone")
