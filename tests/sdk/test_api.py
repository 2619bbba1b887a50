"""ApiClient against the local server over real sockets, plus a tiny fake server
for what the local server cannot produce (malformed bodies, 5xx, stalls,
Retry-After, 429 on simulations)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from odyssey_sync._allocation import Allocation
from odyssey_sync._deadline import Deadline
from odyssey_sync._rest import ApiClient
from odyssey_sync.errors import (
    MonthlyLimitReachedError,
    OdysseyAuthError,
    OdysseyConnectionError,
    OdysseyNotFoundError,
    OdysseyPermissionError,
    OdysseyQueueTimeoutError,
    OdysseyRequestError,
    OdysseyTimeoutError,
    OdysseyUsageError,
    RateLimitError,
)
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.types import SimulationJobStatus, session_id_from_jwt

SECOND_KEY = "second-account-key-0123456789"
PAGER_KEY = "pager-account-key-0123456789"
SCRIPT = [
    {"timestamp_ms": 0, "start": {"prompt": "a lighthouse"}},
    {"timestamp_ms": 1000, "end": {}},
]
BODY = {"portrait": False, "output_video": True, "script": SCRIPT}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOdyssey]:
    # job_delay: jobs stay pending (cancellable, and nothing renders, so the
    # server starts no render threads in the middle of a test)
    with LocalOdyssey(
        size=(320, 176), fps=15, data_dir=tmp_path_factory.mktemp("api"), capacity=16,
        max_concurrent_per_key=16, allocation_timeout=5.0, job_delay=60.0,
        bypass_privileged=False, extra_api_keys=[SECOND_KEY, PAGER_KEY],
    ) as srv:
        yield srv


@pytest.fixture
def api(server: LocalOdyssey) -> Iterator[ApiClient]:
    server.faults.clear()
    with ApiClient(server.url, server.api_key, timeout=5.0) as client:
        yield client
    server.faults.clear()


def _paths(client: ApiClient) -> list[str]:
    """Record the path of every response the client receives (a requests hook)."""
    seen: list[str] = []
    client.http.add_response_hook(
        lambda r, *a, **k: seen.append(f"{r.request.method} {r.request.path_url.split('?')[0]}")
    )
    return seen


# --------------------------------------------------------------------------- construction


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="api_url"):
        ApiClient("ftp://x", "k")
    with pytest.raises(ValueError, match="api_url"):
        ApiClient("localhost:8000", "k")
    with pytest.raises(TypeError, match="api_url"):
        ApiClient(None, "k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="api_key"):
        ApiClient("http://x", 123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        ApiClient("http://x", "k", timeout=0)


def test_repr_and_errors_never_show_key(server: LocalOdyssey) -> None:
    with ApiClient(server.url, "sk-very-secret-key-12345") as client:
        assert "secret" not in repr(client)
        with pytest.raises(OdysseyAuthError) as info:
            client.access_token()
    assert "secret" not in str(info.value) and "secret" not in repr(info.value)
    assert info.value.status == 401


def test_trailing_slash_is_ignored(server: LocalOdyssey) -> None:
    with ApiClient(server.url + "/", server.api_key) as client:
        assert client.api_url == server.url
        assert client.access_token()


def test_missing_key_fails_before_any_request(server: LocalOdyssey) -> None:
    for key in (None, ""):
        with ApiClient(server.url, key) as client:
            seen = _paths(client)
            with pytest.raises(ValueError, match="API key"):
                client.access_token()
            with pytest.raises(ValueError, match="API key"):
                client.list_simulations(status=None, active=None, limit=None, offset=None)
            with pytest.raises(ValueError, match="API key"):
                client.allocate(queue_timeout=1, deadline=Deadline(1))
            assert seen == []


def test_close_is_idempotent_and_final(server: LocalOdyssey) -> None:
    client = ApiClient(server.url, server.api_key)
    client.close()
    client.close()
    assert client.closed
    with pytest.raises(OdysseyConnectionError, match="closed"):
        client.get_recording("abc")


# --------------------------------------------------------------------------- auth


def test_token_cached(api: ApiClient) -> None:
    seen = _paths(api)
    t1 = api.access_token()
    t2 = api.access_token()
    api.list_simulations(status=None, active=None, limit=1, offset=None)
    assert t1 == t2
    assert seen.count("POST /auth/token") == 1


def test_token_refreshed_before_expiry(tmp_path: Path) -> None:
    # a TTL inside the 60 s margin is never reused
    with LocalOdyssey(size=(320, 176), data_dir=tmp_path, auth_token_ttl=30) as srv, \
            ApiClient(srv.url, srv.api_key) as client:
        seen = _paths(client)
        client.access_token()
        client.access_token()
        assert seen.count("POST /auth/token") == 2


def test_expired_bearer_is_refreshed_and_retried_once(api: ApiClient) -> None:
    api.access_token()
    api._token = "expired.or.revoked"  # what an expired token looks like to the server
    seen = _paths(api)
    result = api.list_simulations(status=None, active=None, limit=1, offset=None)
    assert result.limit == 1
    assert seen == ["GET /simulation-jobs", "POST /auth/token", "GET /simulation-jobs"]
    assert api._token != "expired.or.revoked"


def test_bad_key_401(server: LocalOdyssey) -> None:
    with ApiClient(server.url, "wrong-key") as client:
        seen = _paths(client)
        with pytest.raises(OdysseyAuthError, match="401"):
            client.get_recording("x")
        assert seen == ["POST /auth/token"]  # no retry loop on a bad key


def test_auth_403_uses_detail(api: ApiClient, server: LocalOdyssey) -> None:
    server.faults.set(deny_auth=1, deny_auth_detail="Key suspended for review")
    with pytest.raises(OdysseyAuthError, match="Key suspended for review") as info:
        api.access_token()
    assert info.value.status == 403
    assert not isinstance(info.value, OdysseyPermissionError)
    assert api.access_token()  # the fault fired once


def test_concurrent_token_fetch_single_flight(api: ApiClient) -> None:
    seen = _paths(api)
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda: tokens.append(api.access_token()))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(tokens)) == 1 and len(tokens) == 6
    assert seen.count("POST /auth/token") == 1


# --------------------------------------------------------------------------- sessions


def test_regions(api: ApiClient) -> None:
    lat = api.region_latencies()
    assert lat is not None and set(lat) == {"local"}
    assert 0 <= lat["local"] < 9999


def test_allocate_and_session_token(api: ApiClient) -> None:
    seen = _paths(api)
    alloc = api.allocate(queue_timeout=5, deadline=Deadline(10))
    assert isinstance(alloc, Allocation)
    assert alloc.signaling_url.startswith("ws://")
    assert alloc.capabilities.image_to_video is True
    assert session_id_from_jwt(alloc.session_token) == alloc.session_id
    assert alloc.token_expires_in > 0
    assert alloc.session_token not in repr(alloc)
    assert seen.count("POST /sessions/token") == 1
    # a second token for the same allocation is allowed
    token, ttl = api.session_token(alloc.session_id)
    assert session_id_from_jwt(token) == alloc.session_id and ttl > 0
    # latencies are reused for the next allocation (no second /regions)
    api.allocate(queue_timeout=5, deadline=Deadline(10))
    assert seen.count("GET /regions") == 1


def test_session_token_unknown_404(api: ApiClient) -> None:
    with pytest.raises(OdysseyNotFoundError) as info:
        api.session_token("sess_unknown")
    assert info.value.session_id == "sess_unknown"


def test_queue_then_allocation(api: ApiClient, server: LocalOdyssey) -> None:
    server.faults.set(refuse_sessions=2)
    seen = _paths(api)
    alloc = api.allocate(queue_timeout=10, deadline=Deadline(20))
    assert alloc.session_id
    assert seen.count("POST /sessions/request") == 3


def test_queue_timeout_zero_fails_at_once(api: ApiClient, server: LocalOdyssey) -> None:
    server.faults.set(refuse_sessions=5)
    seen = _paths(api)
    with pytest.raises(OdysseyQueueTimeoutError, match="no streamers available"):
        api.allocate(queue_timeout=0, deadline=Deadline(10))
    assert seen.count("POST /sessions/request") == 1


def test_queue_timeout(api: ApiClient, server: LocalOdyssey) -> None:
    server.faults.set(refuse_sessions=100)
    with pytest.raises(OdysseyQueueTimeoutError, match=r"timed out waiting for a streamer") as info:
        api.allocate(queue_timeout=1.5, deadline=Deadline(20))
    assert info.value.status == 503
    assert isinstance(info.value, OdysseyConnectionError)


def test_deadline_shorter_than_queue(api: ApiClient, server: LocalOdyssey) -> None:
    server.faults.set(refuse_sessions=100)
    with pytest.raises(OdysseyTimeoutError):
        api.allocate(queue_timeout=30, deadline=Deadline(0.5))


def test_close_interrupts_queue(api: ApiClient, server: LocalOdyssey) -> None:
    server.faults.set(refuse_sessions=100)
    errors: list[BaseException] = []
    seen = _paths(api)
    polled = threading.Event()
    api.http.add_response_hook(
        lambda r, *a, **k: polled.set() if r.status_code == 503 else None)

    def run() -> None:
        try:
            api.allocate(queue_timeout=30, deadline=Deadline(30))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, name="test-allocate")
    t.start()
    assert polled.wait(10)
    api.close()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(errors[0], OdysseyConnectionError) and "closed" in str(errors[0])
    assert seen.count("POST /sessions/request") == 1


def test_usage_error_429_on_allocation(api: ApiClient, server: LocalOdyssey) -> None:
    server.faults.set(usage_error_count=1, usage_error={
        "error": "MONTHLY_LIMIT_REACHED", "message": "Monthly hours used up",
        "action": "Upgrade plan", "details": {"used_hours": 10, "limit_hours": 10}})
    with pytest.raises(MonthlyLimitReachedError) as info:
        api.allocate(queue_timeout=5, deadline=Deadline(10))
    assert info.value.code == "MONTHLY_LIMIT_REACHED"
    assert info.value.details["used_hours"] == 10
    assert info.value.status == 429


def test_ice_servers_from_local(api: ApiClient) -> None:
    alloc = api.allocate(queue_timeout=5, deadline=Deadline(10))
    servers = api.fetch_ice_servers(alloc.signaling_url, timeout=2)
    assert isinstance(servers, list)
    assert all("stun.l.google.com" not in str(s) for s in servers)


def test_ice_servers_unreachable_is_empty(api: ApiClient) -> None:
    assert api.fetch_ice_servers("ws://127.0.0.1:9/sig", timeout=0.5) == []
    assert api.fetch_ice_servers("not a url at all", timeout=0.5) == []


# --------------------------------------------------------------------------- recordings


def test_recording_404_and_escaping(api: ApiClient) -> None:
    seen = _paths(api)
    with pytest.raises(OdysseyNotFoundError) as info:
        api.get_recording("../../etc/passwd?x=1#y")
    assert info.value.stream_id == "../../etc/passwd?x=1#y"
    assert info.value.status == 404
    # the id stays one path segment
    assert seen[-1] == "GET /recordings/..%2F..%2Fetc%2Fpasswd%3Fx%3D1%23y"


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "a\x00b"])
def test_ids_validated_locally(api: ApiClient, bad: str) -> None:
    seen = _paths(api)
    for call in (api.get_recording, api.get_simulation, api.cancel_simulation):
        with pytest.raises(ValueError):
            call(bad)
    assert seen == []


@pytest.mark.parametrize("bad", [".", ".."])
def test_dot_ids_refused_before_any_request(api: ApiClient, bad: str) -> None:
    # issue 10 item 6: "/recordings/.." resolved to another endpoint, bearer token attached
    seen = _paths(api)
    for call in (api.get_recording, api.get_simulation, api.cancel_simulation,
                 api.session_token):
        with pytest.raises(ValueError, match=f"must not be {bad!r}"):
            call(bad)
    assert seen == []


def test_every_id_is_one_escaped_path_segment(api: ApiClient) -> None:
    api.access_token()
    seen = _paths(api)
    for bad in ("a/..", "%2e%2e", "x?y#z", "../"):
        with pytest.raises(OdysseyNotFoundError):
            api.get_simulation(bad)
    assert seen == ["GET /simulation-jobs/a%2F..", "GET /simulation-jobs/%252e%252e",
                    "GET /simulation-jobs/x%3Fy%23z", "GET /simulation-jobs/..%2F"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: a.list_stream_recordings(101, None), "limit must be between 1 and 100"),
        (lambda a: a.list_stream_recordings(None, 2**63), r"offset must be between 0 and"),
        (lambda a: a.list_simulations(status=None, active=None, limit=None, offset=2**63),
         r"offset must be between 0 and 9223372036854775807"),
    ],
)
def test_documented_list_limits_checked_before_any_request(
    api: ApiClient, call: Any, match: str
) -> None:
    # issue 10 item 8: limit=101 on /stream-recordings and offset >= 2**63 reached the server
    seen = _paths(api)
    with pytest.raises(ValueError, match=match):
        call(api)
    assert seen == []


def test_ids_must_be_str(api: ApiClient) -> None:
    with pytest.raises(TypeError):
        api.get_recording(123)  # type: ignore[arg-type]


def test_list_recordings_empty_page(server: LocalOdyssey) -> None:
    with ApiClient(server.url, PAGER_KEY) as client:
        page = client.list_stream_recordings(limit=5, offset=0)
    assert page.recordings == [] and page.total == 0 and page.limit == 5


@pytest.mark.parametrize(
    ("limit", "offset", "exc"),
    [(0, None, ValueError), (None, -1, ValueError), (True, None, TypeError),
     ("5", None, TypeError)],
)
def test_list_recordings_paging_checked(
    api: ApiClient, limit: Any, offset: Any, exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        api.list_stream_recordings(limit, offset)


def test_download_404_and_403_leave_no_file(
    api: ApiClient, server: LocalOdyssey, tmp_path: Path
) -> None:
    target = tmp_path / "out.mp4"
    with pytest.raises(OdysseyNotFoundError):
        api.download(f"{server.url}/media/x/nope", target, progress=False)
    with pytest.raises(OdysseyPermissionError):
        api.download(f"{server.url}/media/x/video?expires=1&sig=00", target, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_checks_arguments(api: ApiClient, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        api.download("file:///etc/passwd", tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="directory"):
        api.download("http://x/y", tmp_path / "missing" / "x", progress=False)


# --------------------------------------------------------------------------- simulations


def test_submit_get_list_cancel(api: ApiClient) -> None:
    job = api.submit_simulation(BODY)
    assert job.status is SimulationJobStatus.PENDING
    assert api.get_simulation(job.job_id).job_id == job.job_id
    listed = api.list_simulations(status="pending", active=True, limit=100, offset=0)
    assert job.job_id in [j.job_id for j in listed.jobs]
    info = api.cancel_simulation(job.job_id)
    assert info.status is SimulationJobStatus.CANCELLED
    # cancelling again: 400 with the server's reason
    with pytest.raises(OdysseyRequestError, match="cannot be cancelled") as err:
        api.cancel_simulation(job.job_id)
    assert err.value.status == 400
    assert not isinstance(err.value, (OdysseyNotFoundError, OdysseyPermissionError))
    cancelled = api.list_simulations(status=SimulationJobStatus.CANCELLED, active=False,
                                     limit=None, offset=None)
    assert job.job_id in [j.job_id for j in cancelled.jobs]


def test_simulation_404(api: ApiClient) -> None:
    with pytest.raises(OdysseyNotFoundError):
        api.get_simulation("job_nope")
    with pytest.raises(OdysseyNotFoundError):
        api.cancel_simulation("job_nope")


def test_foreign_job_403(api: ApiClient, server: LocalOdyssey) -> None:
    with ApiClient(server.url, SECOND_KEY) as other:
        job = other.submit_simulation(BODY)
    with pytest.raises(OdysseyPermissionError) as info:
        api.get_simulation(job.job_id)
    assert info.value.status == 403
    with pytest.raises(OdysseyPermissionError):
        api.cancel_simulation(job.job_id)


def test_bypass_without_privilege_403(api: ApiClient) -> None:
    with pytest.raises(OdysseyPermissionError, match="bypass"):
        api.submit_simulation({**BODY, "bypass_vlm_expansion": True})


def test_invalid_body_422_carries_detail(api: ApiClient) -> None:
    bad = {"portrait": False, "output_video": True,
           "script": [{"timestamp_ms": 0, "interact": {"prompt": "x"}}]}
    with pytest.raises(OdysseyRequestError) as info:
        api.submit_simulation(bad)
    assert info.value.status == 422
    assert "script" in str(info.value)


def test_unknown_status_filter(api: ApiClient) -> None:
    with pytest.raises(ValueError, match="unknown simulation status"):
        api.list_simulations(status="complete", active=None, limit=None, offset=None)
    # a pseudo-member passes our check; the server refuses it with 422
    with pytest.raises(OdysseyRequestError) as info:
        api.list_simulations(status=SimulationJobStatus("paused"), active=None, limit=None,
                             offset=None)
    assert info.value.status == 422


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [({"limit": 0}, ValueError), ({"limit": 101}, ValueError), ({"offset": -1}, ValueError),
     ({"limit": 2.5}, TypeError), ({"active": "yes"}, TypeError), ({"status": 3}, TypeError)],
)
def test_list_simulations_checked_locally(api: ApiClient, kwargs: dict[str, Any],
                                          exc: type[Exception]) -> None:
    seen = _paths(api)
    args: dict[str, Any] = {"status": None, "active": None, "limit": None, "offset": None}
    with pytest.raises(exc):
        api.list_simulations(**{**args, **kwargs})
    assert seen == []


def test_simulation_pagination(server: LocalOdyssey) -> None:
    with ApiClient(server.url, PAGER_KEY) as client:
        ids = [client.submit_simulation(BODY).job_id for _ in range(5)]
        pages = [client.list_simulations(status=None, active=None, limit=2, offset=o)
                 for o in (0, 2, 4)]
        for job_id in ids:
            client.cancel_simulation(job_id)
    assert [len(p.jobs) for p in pages] == [2, 2, 1]
    assert all(p.total == 5 for p in pages)
    assert pages[1].offset == 2 and pages[1].limit == 2
    listed = [j.job_id for p in pages for j in p.jobs]
    assert sorted(listed) == sorted(ids)
    assert listed == list(reversed(ids))  # newest first


# --------------------------------------------------------------------------- telemetry


def test_telemetry_off_by_default(api: ApiClient) -> None:
    seen = _paths(api)
    api.telemetry({"event": "session_connecting"})
    assert seen == []


def test_telemetry_never_sends_key(fake: FakeServer) -> None:
    fake.routes["POST /telemetry"] = Reply(200, {"ok": True})
    with ApiClient(fake.url, "sk-secret-abcdef123456", telemetry=True) as client:
        client.telemetry({"event": "session_failed", "api_key": "sk-secret-abcdef123456",
                          "error_message": "boom sk-secret-abcdef123456 " + "x" * 5000})
        assert fake.requests_seen.wait(5)
    body = fake.bodies[-1]
    text = json.dumps(body)
    assert "sk-secret" not in text
    event = body["events"][0]
    assert event["event"] == "session_failed" and event["sdk_platform"] == "python"
    assert len(event["error_message"]) <= 2000


# --------------------------------------------------------------------------- fake server


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"
    stall: bool = False  # wait (bounded) on the server's release event before answering
    length: int | None = None  # announce this Content-Length instead of the real one


class FakeServer:
    """A minimal HTTP server answering canned replies by "METHOD /path"."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply | Callable[[], Reply]] = {}
        self.bodies: list[Any] = []
        self.hits: list[str] = []
        self.requests_seen = threading.Event()
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                fake.bodies.append(json.loads(raw) if raw else None)
                key = f"{self.command} {self.path.split('?')[0]}"
                fake.hits.append(key)
                route = fake.routes.get(key)
                reply = route() if callable(route) else route
                if reply is None:
                    reply = Reply(404, {"detail": "Not Found"})
                if reply.stall:
                    fake.release.wait(10)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    length = len(payload) if reply.length is None else reply.length
                    self.send_header("Content-Length", str(length))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout tests)
                fake.requests_seen.set()

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-api",
                                       kwargs={"poll_interval": 0.05})

    def auth(self, ttl: int = 3600) -> None:
        self.routes["POST /auth/token"] = Reply(200, {"access_token": "tok", "expires_in": ttl})


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    srv = FakeServer()
    srv.auth()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(5)


def test_malformed_json_is_connection_error(fake: FakeServer) -> None:
    fake.routes["GET /recordings/s1"] = Reply(200, raw=b"{not json")
    with ApiClient(fake.url, "k") as client, \
            pytest.raises(OdysseyConnectionError, match="not JSON") as info:
        client.get_recording("s1")
    assert isinstance(info.value.__cause__, ValueError)


def test_html_error_page_is_connection_error(fake: FakeServer) -> None:
    fake.routes["GET /recordings/s1"] = Reply(502, raw=b"<html>Bad gateway</html>",
                                              content_type="text/html")
    with ApiClient(fake.url, "k") as client, pytest.raises(OdysseyConnectionError) as info:
        client.get_recording("s1")
    assert info.value.status == 502 and "<html>" not in str(info.value)


def test_json_with_wrong_content_type_is_accepted(fake: FakeServer) -> None:
    fake.routes["GET /recordings/s1"] = Reply(200, {"stream_id": "s1", "frame_count": 3},
                                              content_type="text/plain")
    with ApiClient(fake.url, "k") as client:
        assert client.get_recording("s1").frame_count == 3


def test_wrong_shapes_are_connection_errors(fake: FakeServer) -> None:
    fake.routes["GET /recordings/s1"] = Reply(200, ["not", "an", "object"])
    fake.routes["GET /simulation-jobs/j1"] = Reply(200, {"status": "pending"})  # no job_id
    fake.routes["POST /sessions/request"] = Reply(200, {"session_id": "s"})  # no signalling_url
    with ApiClient(fake.url, "k") as client:
        with pytest.raises(OdysseyConnectionError, match="JSON object"):
            client.get_recording("s1")
        with pytest.raises(OdysseyConnectionError, match="malformed simulation job"):
            client.get_simulation("j1")
        with pytest.raises(OdysseyConnectionError, match="signalling_url"):
            client.allocate(queue_timeout=0, deadline=Deadline(5))


def test_unknown_job_status_tolerated(fake: FakeServer) -> None:
    fake.routes["GET /simulation-jobs/j1"] = Reply(200, {"job_id": "j1", "status": "paused"})
    with ApiClient(fake.url, "k") as client:
        job = client.get_simulation("j1")
    assert job.status.value == "paused" and job.priority == "normal"


def test_auth_response_without_token(fake: FakeServer) -> None:
    fake.routes["POST /auth/token"] = Reply(200, {"expires_in": 3600})
    with ApiClient(fake.url, "k") as client, \
            pytest.raises(OdysseyConnectionError, match="invalid auth response"):
        client.access_token()


def test_auth_422_is_auth_error(fake: FakeServer) -> None:
    fake.routes["POST /auth/token"] = Reply(422, {"detail": [
        {"loc": ["body", "api_key"], "msg": "String too short", "type": "string_too_short"}]})
    with ApiClient(fake.url, "k") as client, \
            pytest.raises(OdysseyAuthError, match=r"body\.api_key: String too short"):
        client.access_token()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_connection_error(fake: FakeServer, status: int) -> None:
    fake.routes["GET /simulation-jobs/j1"] = Reply(status, {"detail": "upstream exploded"})
    with ApiClient(fake.url, "k") as client, pytest.raises(OdysseyConnectionError) as info:
        client.get_simulation("j1")
    assert info.value.status == status
    assert "upstream exploded" in str(info.value)


def test_other_4xx_is_request_error(fake: FakeServer) -> None:
    fake.routes["POST /simulation-jobs"] = Reply(413, {"detail": "Request body too large"})
    with ApiClient(fake.url, "k") as client, \
            pytest.raises(OdysseyRequestError, match="too large") as info:
        client.submit_simulation(BODY)
    assert info.value.status == 413


def test_429_on_simulation_is_usage_error(fake: FakeServer) -> None:
    fake.routes["POST /simulation-jobs"] = Reply(429, {"detail": {
        "error": "RATE_LIMITED", "message": "Slow down", "action": "Wait a bit",
        "details": {"retry_after_seconds": 7}}})
    with ApiClient(fake.url, "k") as client, pytest.raises(RateLimitError) as info:
        client.submit_simulation(BODY)
    assert info.value.details["retry_after_seconds"] == 7


def test_429_unrecognised_body(fake: FakeServer) -> None:
    fake.routes["GET /simulation-jobs"] = Reply(429, {"detail": "Too many requests"})
    with ApiClient(fake.url, "k") as client, \
            pytest.raises(OdysseyUsageError, match="Too many requests") as info:
        client.list_simulations(status=None, active=None, limit=None, offset=None)
    assert info.value.code == "UNKNOWN"


def test_server_echoing_the_key_is_redacted(fake: FakeServer) -> None:
    fake.routes["POST /auth/token"] = Reply(403, {"detail": "key sk-echo-12345678 is banned"})
    with ApiClient(fake.url, "sk-echo-12345678") as client, \
            pytest.raises(OdysseyAuthError) as info:
        client.access_token()
    assert "sk-echo" not in str(info.value) and "***" in str(info.value)


def test_slow_response_times_out(fake: FakeServer) -> None:
    fake.routes["GET /simulation-jobs/j1"] = Reply(200, {"job_id": "j1", "status": "pending"},
                                                   stall=True)
    with ApiClient(fake.url, "k", timeout=0.3) as client, \
            pytest.raises(OdysseyTimeoutError, match="timed out") as info:
        client.get_simulation("j1")
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value.__cause__, requests.Timeout)


def test_deadline_clamps_request_timeout(fake: FakeServer) -> None:
    fake.routes["GET /simulation-jobs/j1"] = Reply(200, {"job_id": "j1", "status": "pending"},
                                                   stall=True)
    with ApiClient(fake.url, "k", timeout=30) as client, pytest.raises(OdysseyTimeoutError):
        client.get_simulation("j1", deadline=Deadline(0.3))


def test_expired_deadline_sends_nothing(fake: FakeServer) -> None:
    with ApiClient(fake.url, "k") as client:
        client.access_token()
        hits = len(fake.hits)
        with pytest.raises(OdysseyTimeoutError):
            client.get_simulation("j1", deadline=Deadline(0))
    assert len(fake.hits) == hits


def test_unreachable_server_is_a_connection_error_naming_the_url() -> None:
    # issue 10 item 10: it used to read "authentication failed: Connection refused"
    with ApiClient("http://127.0.0.1:9", "k", timeout=2) as client, pytest.raises(
            OdysseyConnectionError, match=r"cannot reach http://127\.0\.0\.1:9") as info:
        client.access_token()
    assert not isinstance(info.value, OdysseyAuthError)
    assert "authentication failed" not in str(info.value)
    assert isinstance(info.value.__cause__, requests.ConnectionError)


def test_retry_after_is_honoured(fake: FakeServer) -> None:
    answers = iter([Reply(503, {"detail": "busy"}, headers={"Retry-After": "0.1"})] * 3)

    def sessions() -> Reply:
        return next(answers, Reply(200, {"session_id": "s1", "signalling_url": "ws://x/sig"}))

    fake.routes["POST /sessions/request"] = sessions
    fake.routes["POST /sessions/token"] = Reply(200, {"session_token": "a.b.c"})
    with ApiClient(fake.url, "k") as client:
        # 3 polls at 0.1 s fit in a deadline the default 1 s interval would overrun
        alloc = client.allocate(queue_timeout=10, deadline=Deadline(2.5))
    assert alloc.session_id == "s1" and alloc.token_expires_in == 600
    assert fake.hits.count("POST /sessions/request") == 4
    assert alloc.capabilities.image_to_video is False
    # /regions 404 → allocation without latencies
    assert fake.bodies[fake.hits.index("POST /sessions/request")] == {}


def test_bearer_refreshed_while_queued(fake: FakeServer) -> None:
    # tokens live 61 s: inside the 60 s margin after 1 s, so each poll re-auths
    fake.auth(ttl=61)
    answers = iter([Reply(503, {}, headers={"Retry-After": "1.1"})])
    fake.routes["POST /sessions/request"] = lambda: next(
        answers, Reply(200, {"session_id": "s1", "signalling_url": "ws://x/sig"}))
    fake.routes["POST /sessions/token"] = Reply(200, {"session_token": "a.b.c",
                                                      "expires_in": 30})
    with ApiClient(fake.url, "k") as client:
        client.allocate(queue_timeout=10, deadline=Deadline(10))
    assert fake.hits[:1] == ["POST /auth/token"]
    polls = [i for i, h in enumerate(fake.hits) if h == "POST /sessions/request"]
    assert fake.hits[polls[1] - 1] == "POST /auth/token"


def test_ice_servers_keep_turn_credentials(fake: FakeServer) -> None:
    fake.routes["GET /sig/config"] = Reply(200, {"iceServers": [
        {"urls": "turn:turn.example:3478", "username": "u", "credential": "p"},
        {"urls": ["stun:a", "stun:b"]},
        {"urls": 5}, "junk", {"nourls": True}]})
    with ApiClient(fake.url, "k") as client:
        ws = fake.url.replace("http://", "ws://") + "/sig"
        servers = client.fetch_ice_servers(ws, timeout=2)
    assert servers == [
        {"urls": ["turn:turn.example:3478"], "username": "u", "credential": "p"},
        {"urls": ["stun:a", "stun:b"]},
    ]


def test_ice_servers_failure_status_and_stall(fake: FakeServer) -> None:
    fake.routes["GET /sig/config"] = Reply(500, {"iceServers": [{"urls": "stun:x"}]})
    fake.routes["GET /slow/config"] = Reply(200, {"iceServers": [{"urls": "stun:x"}]}, stall=True)
    with ApiClient(fake.url, "k") as client:
        base = fake.url.replace("http://", "ws://")
        assert client.fetch_ice_servers(base + "/sig", timeout=2) == []
        assert client.fetch_ice_servers(base + "/slow", timeout=0.2) == []


def test_download_is_atomic(fake: FakeServer, tmp_path: Path) -> None:
    fake.routes["GET /v.mp4"] = Reply(200, raw=b"x" * 100_000, content_type="video/mp4")
    target = tmp_path / "v.mp4"
    target.write_bytes(b"old")
    with ApiClient(fake.url, "k") as client:
        assert client.download(f"{fake.url}/v.mp4", target, progress=False, chunk=4096) == target
    assert target.read_bytes() == b"x" * 100_000
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_download_truncated_keeps_old_file(fake: FakeServer, tmp_path: Path) -> None:
    fake.routes["GET /v.mp4"] = Reply(200, raw=b"x" * 10, length=1000, content_type="video/mp4")
    target = tmp_path / "v.mp4"
    target.write_bytes(b"old")
    with ApiClient(fake.url, "k") as client, pytest.raises(OdysseyConnectionError):
        client.download(f"{fake.url}/v.mp4", target, progress=False)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_download_stall_times_out(fake: FakeServer, tmp_path: Path) -> None:
    fake.routes["GET /v.mp4"] = Reply(200, raw=b"x", stall=True, content_type="video/mp4")
    with ApiClient(fake.url, "k", timeout=0.3) as client, pytest.raises(OdysseyTimeoutError):
        client.download(f"{fake.url}/v.mp4", tmp_path / "v.mp4", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_sends_no_bearer(fake: FakeServer, tmp_path: Path) -> None:
    seen_headers: list[str | None] = []

    def reply() -> Reply:
        return Reply(200, raw=b"data", content_type="video/mp4")

    fake.routes["GET /v.mp4"] = reply
    with ApiClient(fake.url, "k") as client:
        client.access_token()
        client.http.add_response_hook(
            lambda r, *a, **k: seen_headers.append(r.request.headers.get("Authorization")))
        client.download(f"{fake.url}/v.mp4", tmp_path / "v.mp4", progress=False)
    assert seen_headers == [None]
