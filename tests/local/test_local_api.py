"""HTTP API of the local server (PROTOCOL §3, §14, §16) over real sockets."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.local.helpers import OTHER_KEY, Api, local_server

pytestmark = [pytest.mark.timeout(60), pytest.mark.server_options(capacity=2)]




def raw(server: Any, request: bytes) -> bytes:
    """Send raw HTTP (for paths requests would normalise) and return the response."""
    host, port = server.url.rsplit(":", 1)
    with socket.create_connection((host.split("//")[1], int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


# -- /auth/token ------------------------------------------------------------


def test_auth_token_issues_bearer(server: Any) -> None:
    r = requests.post(server.url + "/auth/token", json={"api_key": server.api_key}, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert body["expires_in"] == server.config.auth_token_ttl
    assert server.api_key not in r.text


@pytest.mark.parametrize(("payload", "status"), [
    ({"api_key": "wrong"}, 401),
    ({}, 422),
    ({"api_key": 12}, 422),
    ({"api_key": ""}, 422),
    ([1, 2], 422),
])
def test_auth_token_errors(server: Any, payload: Any, status: int) -> None:
    r = requests.post(server.url + "/auth/token", json=payload, timeout=10)
    assert r.status_code == status
    assert r.headers["Content-Type"].startswith("application/json")
    assert "detail" in r.json()


def test_auth_token_malformed_json_is_422(server: Any) -> None:
    r = requests.post(server.url + "/auth/token", data=b"{not json",
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"


def test_auth_token_huge_body_is_413(server: Any) -> None:
    r = requests.post(server.url + "/auth/token", data=b"x" * (2 << 20), timeout=10)
    assert r.status_code == 413
    assert "detail" in r.json()


def test_deny_auth_fault_gives_403_with_detail_once(server: Any) -> None:
    server.faults.set(deny_auth=1, deny_auth_detail="Account disabled")
    r = requests.post(server.url + "/auth/token", json={"api_key": server.api_key}, timeout=10)
    assert r.status_code == 403
    assert r.json() == {"detail": "Account disabled"}
    r = requests.post(server.url + "/auth/token", json={"api_key": server.api_key}, timeout=10)
    assert r.status_code == 200


def test_double_slash_paths_are_tolerated(server: Any) -> None:
    body = b'{"api_key": "' + server.api_key.encode() + b'"}'
    reply = raw(server, b"POST //auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + body)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b"access_token" in reply


# -- bearer validation --------------------------------------------------------


@pytest.mark.parametrize("path", ["/regions", "/stream-recordings", "/simulation-jobs",
                                  "/recordings/abc"])
def test_bearer_required(server: Any, path: str) -> None:
    r = requests.get(server.url + path, timeout=10)
    assert r.status_code == 401
    assert r.json() == {"detail": "Not authenticated"}
    r = requests.get(server.url + path, headers={"Authorization": "Bearer nonsense"}, timeout=10)
    assert r.status_code == 401


def test_raw_api_key_is_not_a_bearer_token(server: Any) -> None:
    r = requests.get(server.url + "/regions",
                     headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10)
    assert r.status_code == 401


def test_expired_bearer_is_401(server: Any) -> None:
    key_id = server.backend.primary_key_id
    expired = server.backend.tokens.issue_access(key_id, -5)
    r = requests.post(server.url + "/sessions/request", json={},
                      headers={"Authorization": f"Bearer {expired}"}, timeout=10)
    assert r.status_code == 401


def test_session_token_is_not_a_bearer_token(api: Any) -> None:
    session_id = api.allocate()
    token = api.post("/sessions/token", json={"session_id": session_id}).json()["session_token"]
    r = requests.get(api.url + "/regions", headers={"Authorization": f"Bearer {token}"},
                     timeout=10)
    assert r.status_code == 401


# -- regions --------------------------------------------------------------------


def test_regions_and_ping(api: Any) -> None:
    r = api.get("/regions")
    assert r.status_code == 200
    regions = r.json()["regions"]
    assert regions and {"id", "ping_url"} <= set(regions[0])
    ping = requests.get(regions[0]["ping_url"], timeout=10)
    assert ping.status_code == 200
    assert ping.headers["Access-Control-Allow-Origin"] == "*"


# -- allocation ---------------------------------------------------------------------


def test_sessions_request_shape(api: Any, server: Any) -> None:
    r = api.post("/sessions/request", json={"region_latencies": {"local": 3}})
    assert r.status_code == 200
    body = r.json()
    assert body["signalling_url"] == server.context.signaling_url
    assert body["capabilities"] == {"image_to_video": True}
    assert body["session_id"] and body["streamer_id"] and body["model"] and body["region"]


def test_sessions_request_accepts_empty_body(api: Any) -> None:
    r = api.http.post(api.url + "/sessions/request", headers=api.headers(), timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize("payload", [{"region_latencies": [1]},
                                     {"region_latencies": {"local": "fast"}}, "text"])
def test_sessions_request_wrong_types(api: Any, payload: Any) -> None:
    r = api.post("/sessions/request", json=payload)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail and detail[0]["loc"][0] == "body", detail


def test_queue_fault_then_allocation(api: Any, server: Any) -> None:
    server.faults.set(refuse_sessions=2)
    codes = [api.post("/sessions/request", json={}).status_code for _ in range(3)]
    assert codes == [503, 503, 200]


def test_capacity_full_until_session_closed(api: Any, server: Any) -> None:
    first = api.allocate()
    api.allocate()
    r = api.post("/sessions/request", json={})
    assert r.status_code == 503
    assert "detail" in r.json()
    server.call(server.context.sink.session_closed, first)
    assert api.post("/sessions/request", json={}).status_code == 200


def test_unconnected_allocations_expire(api: Any, server: Any) -> None:
    api.allocate()
    api.allocate()
    assert api.post("/sessions/request", json={}).status_code == 503

    def age_all() -> None:  # pretend the allocation timeout has passed
        assert len(server.backend.allocations) == 2
        for alloc in server.backend.allocations.values():
            alloc.created -= server.backend.allocation_timeout + 1

    server.call(age_all)
    assert api.post("/sessions/request", json={}).status_code == 200


def test_connected_allocation_does_not_expire(api: Any, server: Any) -> None:
    session_id = api.allocate()
    token = api.post("/sessions/token", json={"session_id": session_id}).json()["session_token"]
    assert server.call(server.context.sink.verify_session_token, token, session_id)

    def age_all() -> None:
        for alloc in server.backend.allocations.values():
            alloc.created -= server.backend.allocation_timeout + 1

    server.call(age_all)
    server.call(server.backend.expire_allocations)
    assert server.call(server.context.sink.session_owner, session_id) is not None


def test_concurrent_limit_429(tmp_path: Path) -> None:
    with local_server(tmp_path, capacity=5, max_concurrent_per_key=2) as server, \
            Api(server) as api:
        api.allocate()
        api.allocate()
        r = api.post("/sessions/request", json={})
        assert r.status_code == 429
        detail = r.json()["detail"]
        assert detail["error"] == "CONCURRENT_LIMIT_REACHED"
        assert detail["message"] and detail["action"]
        assert detail["details"] == {"active_count": 2, "limit": 2}
        with Api(server, OTHER_KEY) as other:  # limits are per key
            other.allocate()


def test_quota_429(tmp_path: Path) -> None:
    with local_server(tmp_path, quota_seconds=0) as server, Api(server) as api:
        r = api.post("/sessions/request", json={})
        assert r.status_code == 429
        detail = r.json()["detail"]
        assert detail["error"] == "MONTHLY_LIMIT_REACHED"
        assert {"message", "action", "details"} <= set(detail)
        assert detail["details"]["reset_date"].endswith("-01")


def test_usage_error_fault(api: Any, server: Any) -> None:
    usage = {"error": "ACCOUNT_SUSPENDED", "message": "Suspended", "action": "Contact us",
             "details": {"reason": "test"}}
    server.faults.set(usage_error=usage, usage_error_count=1)
    r = api.post("/sessions/request", json={})
    assert r.status_code == 429
    assert r.json() == {"detail": usage}
    assert api.post("/sessions/request", json={}).status_code == 200


# -- signaling tokens -------------------------------------------------------------


def test_session_token_is_hs256_jwt_with_claim(api: Any, server: Any) -> None:
    session_id = api.allocate()
    r = api.post("/sessions/token", json={"session_id": session_id})
    assert r.status_code == 200
    body = r.json()
    assert body["expires_in"] == server.config.session_token_ttl
    claims = jwt.decode(body["session_token"], server.context.secret, algorithms=["HS256"])
    assert claims["session_id"] == session_id
    assert claims["exp"] > time.time()
    # several tokens per allocation, all valid
    second = api.post("/sessions/token", json={"session_id": session_id}).json()["session_token"]
    sink = server.context.sink
    assert server.call(sink.verify_session_token, body["session_token"], session_id)
    assert server.call(sink.verify_session_token, second, session_id)
    assert not server.call(sink.verify_session_token, second, "sess_other")
    assert not server.call(sink.verify_session_token, "x.y.z", session_id)


def test_session_token_expiry(tmp_path: Path) -> None:
    with local_server(tmp_path) as server, Api(server) as api:
        session_id = api.allocate()
        key_id = server.backend.primary_key_id
        expired = server.backend.tokens.issue_session(session_id, key_id, -5)
        assert not server.call(server.context.sink.verify_session_token, expired, session_id)


def test_session_token_unknown_and_foreign(api: Any, server: Any) -> None:
    r = api.post("/sessions/token", json={"session_id": "sess_nope"})
    assert r.status_code == 404
    assert r.json() == {"detail": "Session not found"}
    session_id = api.allocate()
    with Api(server, OTHER_KEY) as other:
        assert other.post("/sessions/token", json={"session_id": session_id}).status_code == 404
    assert api.post("/sessions/token", json={}).status_code == 422
    assert api.post("/sessions/token", json={"session_id": 5}).status_code == 422


def test_session_owner_and_close(api: Any, server: Any) -> None:
    session_id = api.allocate()
    sink = server.context.sink
    assert server.call(sink.session_owner, session_id) == server.backend.primary_key_id
    server.call(sink.session_closed, session_id)
    assert server.call(sink.session_owner, session_id) is None
    assert api.post("/sessions/token", json={"session_id": session_id}).status_code == 404


# -- CORS -------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "method"), [
    ("/auth/token", "POST"), ("/regions", "GET"), ("/sessions/request", "POST"),
    ("/sessions/token", "POST"), ("/simulation-jobs/job_x", "DELETE"),
    ("/recordings/abc", "GET"), ("/stream-recordings", "GET"), ("/telemetry", "POST"),
])
def test_cors_preflight(server: Any, path: str, method: str) -> None:
    r = requests.options(server.url + path, headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type"}, timeout=10)
    assert r.status_code in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert method in r.headers["Access-Control-Allow-Methods"]
    assert "Location" in r.headers["Access-Control-Expose-Headers"]


def test_cors_headers_on_errors(server: Any) -> None:
    r = requests.get(server.url + "/regions", headers={"Origin": "http://x"}, timeout=10)
    assert r.status_code == 401
    assert r.headers["Access-Control-Allow-Origin"] == "*"


# -- misc ---------------------------------------------------------------------------


def test_telemetry_accepts_anything(server: Any) -> None:
    r = requests.post(server.url + "/telemetry", json={"events": [{"event": "x"}]}, timeout=10)
    assert r.ok
    assert requests.post(server.url + "/telemetry", data=b"garbage", timeout=10).ok


def test_unknown_route_and_method_are_json(server: Any) -> None:
    r = requests.get(server.url + "/nope", timeout=10)
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    r = requests.put(server.url + "/auth/token", timeout=10)
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}


def test_unexpected_exception_is_json_500(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> dict[str, str]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(server.backend.store, "key_hashes", boom)
    r = requests.post(server.url + "/auth/token", json={"api_key": "k"}, timeout=10)
    assert r.status_code == 500
    assert r.json() == {"detail": "Internal Server Error"}
    assert "secret internals" not in r.text


# -- admin ----------------------------------------------------------------------------


def test_admin_faults_with_api_key_and_token(server: Any, api: Any) -> None:
    url = server.url + "/_admin/faults"
    r = requests.post(url, json={"refuse_sessions": 1},
                      headers={"Authorization": f"Bearer {server.api_key}"}, timeout=10)
    assert r.status_code == 200 and r.json()["refuse_sessions"] == 1
    assert server.faults.refuse_sessions == 1
    assert api.post("/sessions/request", json={}).status_code == 503
    r = requests.post(url, json={"signaling_error": "streamer_not_available"},
                      headers=api.headers(), timeout=10)
    assert r.status_code == 200
    assert server.faults.signaling_error == "streamer_not_available"
    r = requests.delete(url, headers=api.headers(), timeout=10)
    assert r.status_code == 200 and server.faults.signaling_error is None
    state = requests.get(server.url + "/_admin/state", headers=api.headers(), timeout=10)
    assert state.status_code == 200
    body = state.json()
    assert {"allocations", "streams", "faults"} <= set(body)
    assert (body["sessions_in_use"], body["free_capacity"]) == (0, server.config.capacity)
    api.allocate()
    body = requests.get(server.url + "/_admin/state", headers=api.headers(), timeout=10).json()
    assert (body["sessions_in_use"], body["free_capacity"]) == (1, server.config.capacity - 1)
    assert body["allocations"][0]["stale_seconds"] is None
    assert server.sessions_in_use == 1 and server.free_capacity == server.config.capacity - 1


def test_admin_rejects_others_and_bad_input(server: Any) -> None:
    url = server.url + "/_admin/faults"
    assert requests.post(url, json={}, timeout=10).status_code == 401
    with Api(server, OTHER_KEY) as other:
        assert requests.post(url, json={"refuse_sessions": 1}, headers=other.headers(),
                             timeout=10).status_code == 403
        r = requests.post(url, json={}, headers={"Authorization": f"Bearer {OTHER_KEY}"},
                          timeout=10)
        assert r.status_code == 403
    admin = {"Authorization": f"Bearer {server.api_key}"}
    assert requests.post(url, json={"no_such_fault": 1}, headers=admin,
                         timeout=10).status_code == 422
    assert requests.post(url, json={"refuse_sessions": "many"}, headers=admin,
                         timeout=10).status_code == 422
    assert server.faults.refuse_sessions == 0


def test_admin_adds_api_keys(server: Any) -> None:
    url = server.url + "/_admin/api-keys"
    admin = {"Authorization": f"Bearer {server.api_key}"}
    assert requests.post(server.url + "/auth/token", json={"api_key": "tenant-3"},
                         timeout=10).status_code == 401
    r = requests.post(url, json={"api_key": "tenant-3"}, headers=admin, timeout=10)
    assert r.status_code == 201 and r.json()["key_id"].startswith("key_")
    assert "tenant-3" not in r.text
    with Api(server, "tenant-3") as tenant:
        assert tenant.get("/regions").status_code == 200
    assert requests.post(url, json={"api_key": ""}, headers=admin, timeout=10).status_code == 422
    with Api(server, OTHER_KEY) as other:
        assert requests.post(url, json={"api_key": "x"}, headers=other.headers(),
                             timeout=10).status_code == 403
