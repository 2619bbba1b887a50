"""End to end: the Odyssey client against the embedded server over real sockets."""

from __future__ import annotations

import io
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from odyssey_sync._deadline import Deadline
from odyssey_sync._rest import ApiClient
from odyssey_sync.client import Odyssey
from odyssey_sync.errors import OdysseyConnectionError, OdysseyStreamError, OdysseyTimeoutError
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.local.render.stamp import decode_stamp
from odyssey_sync.types import ClientCredentials, ConnectionStatus
from tests.support import assert_in_order

pytestmark = pytest.mark.e2e

SIZE = (320, 176)


@pytest.fixture
def client(server: LocalOdyssey) -> Iterator[Odyssey]:
    c = Odyssey(server.api_key, api_url=server.url, connect_timeout=20)
    yield c
    c.close()


class Recorder:
    """Collects every callback, in order, with the thread it ran on."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()
        self.disconnected = threading.Event()

    def _add(self, *event: Any) -> None:
        with self.lock:
            self.events.append(event)
            self.threads.add(threading.current_thread().name)

    def callbacks(self) -> dict[str, Any]:
        def on_disconnected() -> None:
            self._add("disconnected")
            self.disconnected.set()

        return {
            "on_connected": lambda: self._add("connected"),
            "on_disconnected": on_disconnected,
            "on_stream_started": lambda sid: self._add("started", sid),
            "on_stream_ended": lambda: self._add("ended"),
            "on_interact_acknowledged": lambda p: self._add("ack", p),
            "on_stream_error": lambda r, m: self._add("stream_error", r),
            "on_error": lambda e, fatal: self._add("error", type(e).__name__, fatal),
            "on_status_change": lambda s, m: self._add("status", s),
        }

    def kinds(self) -> list[Any]:
        with self.lock:
            return [e[0] if e[0] != "status" else e[1].value for e in self.events]


def test_full_lifecycle_with_callbacks_in_order(client: Odyssey) -> None:
    rec = Recorder()
    frames: list[int] = []
    client.connect(on_video_frame=lambda f: frames.append(f.seq), **rec.callbacks())
    assert client.is_connected and client.current_status is ConnectionStatus.CONNECTED
    assert client.current_session_id
    stream_id = client.start_stream("a lighthouse at dusk", portrait=False)
    assert stream_id and client.current_stream_id == stream_id
    assert client.last_applied_prompt
    with client.get_latest_frame(timeout=10) as frame:
        assert (frame.width, frame.height) == SIZE
        assert frame.data.shape == (SIZE[1], SIZE[0], 3) and frame.data.dtype == np.uint8
        assert not frame.data.flags.writeable
    ack = client.interact("a storm rolls in")
    assert "storm" in ack and client.last_applied_prompt == ack
    client.end_stream()
    assert client.current_stream_id is None
    client.disconnect()
    assert rec.disconnected.is_set()
    assert client.current_status is ConnectionStatus.DISCONNECTED
    assert client.current_session_id is None
    assert rec.kinds() == [
        "authenticating", "connecting", "connected", "connected", "started", "ack", "ended",
        "disconnected", "disconnected",
    ]
    assert frames, "on_video_frame never ran"
    assert len(rec.threads) == 1 and next(iter(rec.threads)).endswith("-events")
    client.disconnect()  # idempotent
    assert rec.kinds().count("disconnected") == 2  # status + on_disconnected, once


def test_frames_arrive_in_order_with_stamps(client: Odyssey) -> None:
    client.connect()
    client.start_stream("stamped", portrait=False)
    numbers: list[int] = []
    latencies: list[float] = []
    for frame in client.frames(timeout=10):
        stamp = decode_stamp(frame.data, now=frame.received_at)
        assert stamp is not None, "frame stamp unreadable"
        numbers.append(stamp.frame)
        latencies.append(stamp.latency_ms(frame.received_at))
        if len(numbers) == 10:
            break
    assert_in_order(numbers, at_least=8)
    assert all(lat >= 0 for lat in latencies)
    stats = client.stats
    assert stats.received >= 10
    client.end_stream()


def test_several_streams_on_one_connection(client: Odyssey) -> None:
    client.connect()
    ids = []
    for i in range(3):
        ids.append(client.start_stream(f"scene {i}", portrait=bool(i % 2)))
        client.interact(f"change {i}")
        client.end_stream()
    assert len(set(ids)) == 3
    # portrait stream frames are rotated sizes
    client.start_stream("tall", portrait=True)
    deadline = time.monotonic() + 10
    while True:
        with client.get_latest_frame(timeout=10) as f:
            if (f.width, f.height) == (SIZE[1], SIZE[0]):
                break
        assert time.monotonic() < deadline, "never saw a portrait frame"
        time.sleep(0.05)
    client.end_stream()


@pytest.mark.parametrize("kind", ["path", "bytes", "pil", "ndarray", "image_path"])
def test_image_to_video_inputs(client: Odyssey, tmp_path: Path, kind: str) -> None:
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = tmp_path / "start.png"
    path.write_bytes(buf.getvalue())
    client.connect()
    if kind == "image_path":
        with pytest.warns(DeprecationWarning):
            sid = client.start_stream("from an image", image_path=str(path))
    else:
        image: Any = {
            "path": str(path), "bytes": buf.getvalue(), "pil": img,
            "ndarray": np.asarray(img),
        }[kind]
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            sid = client.start_stream("from an image", image=image)
    assert sid
    client.end_stream()


def test_bad_input_rejected_before_network(client: Odyssey) -> None:
    with pytest.raises(OdysseyStreamError, match="status: disconnected"):
        client.start_stream("x")
    with pytest.raises(OdysseyStreamError, match="disconnected"):
        client.interact("x")
    with pytest.raises(OdysseyStreamError):
        client.end_stream()
    with pytest.raises(TypeError):
        client.start_stream(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.start_stream("x", portrait="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.interact("   ")
    with pytest.raises(ValueError):
        client.start_stream("x" * 10_001)
    with pytest.raises(ValueError):
        client.start_stream("x", timeout=-1)
    with pytest.raises(OdysseyConnectionError):
        client.get_latest_frame(timeout=0)
    client.connect()
    with pytest.raises(OdysseyStreamError, match="active stream"):
        client.interact("nothing running")
    with pytest.raises(ValueError):
        client.start_stream("x", image=b"not an image")
    with pytest.raises(TypeError):
        client.start_stream("x", image=object())


def test_connect_twice_returns_and_reconnect_after_disconnect(client: Odyssey) -> None:
    client.connect()
    first = client.current_session_id
    client.connect()  # already connected: returns at once
    assert client.current_session_id == first
    client.disconnect()
    client.connect()
    assert client.is_connected and client.current_session_id != first
    client.start_stream("again")
    client.end_stream()


def test_context_manager_and_repr_hide_key(server: LocalOdyssey) -> None:
    with Odyssey(server.api_key, api_url=server.url) as c:
        c.connect()
        text = repr(c)
        assert server.api_key not in text and "connected" in text
    assert c.current_status is ConnectionStatus.DISCONNECTED


def test_get_latest_frame_timeouts(client: Odyssey, server: LocalOdyssey) -> None:
    server.faults.set(stop_video=True)
    client.connect()
    client.start_stream("no video", portrait=False)
    with pytest.raises(OdysseyTimeoutError):
        client.get_latest_frame(timeout=0)
    with pytest.raises(OdysseyTimeoutError):
        client.get_latest_frame(timeout=0.3)
    with pytest.raises(OdysseyTimeoutError):
        next(iter(client.frames(timeout=0.3)))
    server.faults.set(stop_video=False)
    with client.get_latest_frame(timeout=10) as f:
        assert f.width == SIZE[0]
    client.end_stream()


def test_frames_iterator_stops_on_disconnect(client: Odyssey) -> None:
    client.connect()
    client.start_stream("iterate")
    got: list[int] = []
    done = threading.Event()

    def consume() -> None:
        for f in client.frames(timeout=10):
            got.append(f.seq)
        done.set()

    t = threading.Thread(target=consume, name="test-consumer")
    t.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    client.disconnect()
    assert done.wait(5)
    t.join(5)
    assert got


def test_disconnect_from_inside_a_callback(client: Odyssey) -> None:
    rec = Recorder()
    cbs = rec.callbacks()

    original = cbs["on_stream_started"]
    returned = threading.Event()

    def on_started(sid: str) -> None:
        original(sid)
        client.disconnect()  # must not deadlock on its own worker
        returned.set()

    cbs["on_stream_started"] = on_started
    client.connect(**cbs)
    client.start_stream("bye")
    assert returned.wait(5)
    assert rec.disconnected.wait(10)
    assert client.current_status is ConnectionStatus.DISCONNECTED
    with pytest.raises(OdysseyStreamError, match="disconnected"):
        client.interact("too late")
    assert rec.kinds()[-2:] == ["disconnected", "disconnected"]
    client.disconnect()  # joins the helper thread


def mint_credentials(server: LocalOdyssey) -> ClientCredentials:
    """What a trusted backend does (create_client_credentials), via the REST layer."""
    with ApiClient(server.url, server.api_key) as api:
        alloc = api.allocate(queue_timeout=10, deadline=Deadline(30))
    return ClientCredentials(
        alloc.signaling_url, alloc.session_token, alloc.token_expires_in, alloc.capabilities
    )


def test_connect_with_credentials(server: LocalOdyssey) -> None:
    creds = mint_credentials(server)
    with Odyssey(api_url=server.url) as untrusted:
        untrusted.connect_with_credentials(creds.to_dict())
        assert untrusted.current_session_id == creds.session_id
        assert untrusted.start_stream("with creds")
        untrusted.end_stream()


def test_broadcast_ready_callback(client: Odyssey) -> None:
    got: list[Any] = []
    ready = threading.Event()

    def on_ready(info: Any) -> None:
        got.append(info)
        ready.set()

    client.connect(on_broadcast_ready=on_ready)
    client.start_stream("for spectators", broadcast=True)
    assert ready.wait(15)
    info = got[0]
    assert info.webrtc_url.startswith("http") and info.spectator_token
    assert info.spectator_token not in repr(info)
    client.end_stream()


@pytest.mark.parametrize("low_latency", [True, False])
def test_low_latency_switch(server: LocalOdyssey, low_latency: bool) -> None:
    with Odyssey(server.api_key, api_url=server.url, low_latency=low_latency) as c:
        c.connect()
        conn = c._session.conn
        assert conn is not None and conn.peer is not None
        assert conn.peer.low_latency_active is low_latency
        c.start_stream("latency", portrait=False)
        with c.get_latest_frame(timeout=10) as f:
            assert f.width == SIZE[0]
        c.end_stream()


def test_single_callback_worker_serialises_frames_with_events(server: LocalOdyssey) -> None:
    threads: set[str] = set()
    got = threading.Event()

    def on_frame(frame: Any) -> None:
        threads.add(threading.current_thread().name)
        got.set()

    with Odyssey(server.api_key, api_url=server.url, callback_workers=1,
                 frame_format="bgr24") as c:
        c.connect(on_video_frame=on_frame,
                  on_connected=lambda: threads.add(threading.current_thread().name))
        c.start_stream("one worker")
        assert got.wait(10)
        c.end_stream()
    assert len(threads) == 1 and next(iter(threads)).endswith("-events")


def test_credentials_status_starts_at_connecting(server: LocalOdyssey) -> None:
    statuses: list[ConnectionStatus] = []
    creds = mint_credentials(server)
    with Odyssey(api_url=server.url) as c:
        c.connect_with_credentials(creds, on_status_change=lambda s, m: statuses.append(s))
        with pytest.raises(TypeError):
            c.connect_with_credentials(creds, on_nothing=print)
    assert statuses[:2] == [ConnectionStatus.CONNECTING, ConnectionStatus.CONNECTED]


@pytest.mark.parametrize("via_socket", [False, True], ids=["small-datachannel", "big-socket"])
def test_start_routing_by_size(client: Odyssey, via_socket: bool) -> None:
    """§6.3: a start bigger than the data channel's limit goes over the WebSocket."""
    # The local server announces 256 KiB (more than a 10 000-character prompt
    # can need), so the limit is lowered here as a server with 16 KiB would set it.
    # JSON escapes each emoji as a 12-byte surrogate pair: 2 000 of them > 16 KiB.
    prompt = "🙂" * 2_000 if via_socket else "short"
    client.connect()
    conn = client._session.conn
    assert conn is not None and conn.signaling is not None and conn.peer is not None
    assert conn.peer.max_message_size == 262144  # read from the offer's SDP
    conn.peer.max_message_size = 16 * 1024
    sent: list[str] = []
    original = conn.signaling.send

    def spy(message: dict[str, Any], timeout: float | None) -> None:
        sent.append(message["type"])
        original(message, timeout)

    conn.signaling.send = spy  # type: ignore[method-assign]
    assert client.start_stream(prompt)
    assert (sent == ["interactive_stream_start"]) is via_socket
    client.end_stream()


@pytest.mark.parametrize(("prefer", "expected"), [("h264", "H264"), ("vp8", "VP8"),
                                                  (None, "H264 VP8")])
def test_the_preferred_codec_is_answered_when_offered(
    tmp_path: Path, prefer: str | None, expected: str
) -> None:
    """An offer with both codecs: the answer keeps only the preferred one (None: both)."""
    with LocalOdyssey(size=SIZE, fps=15, codec="any", recordings=False,
                      data_dir=tmp_path) as srv, \
            Odyssey(srv.api_key, api_url=srv.url, prefer_codec=prefer) as client:
        client.connect()
        client.start_stream("codecs", portrait=False)
        with client.get_latest_frame(timeout=10) as frame:
            assert frame.width == SIZE[0]
        conn = client._session.conn
        assert conn is not None and conn.peer is not None
        answer = conn.peer.pc.localDescription.sdp
        answered = sorted(c for c in ("H264", "VP8") if f" {c}/90000" in answer)
        assert " ".join(answered) == expected
