"""The REST routes of the local server (PROTOCOL §3), except simulation jobs.

Auth tokens, regions and ping, session allocation and signaling tokens,
recordings and their signed media URLs, telemetry, and the ``/_admin``
routes (fault switches, state, extra API keys) that tests and tools use.
Every handler answers a client mistake with an :class:`~.errors.ApiError`.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .. import auth
from ..faults import Faults, FaultValueError
from ..store import Row
from .backend import MEDIA_KINDS, LocalBackend, backend_of
from .errors import ApiError, validation_error
from .parsing import query_int, read_json, read_limited, require_object, require_str

__all__ = ["SMALL_BODY_LIMIT", "add_routes"]

log = logging.getLogger("odyssey_sync.local")

#: bodies of ordinary endpoints (auth, allocation, tokens, telemetry)
SMALL_BODY_LIMIT = 1 << 20


async def auth_token(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT))
    key = require_str(body, "api_key", non_empty=True)
    faults = backend.ctx.faults
    if faults.take("deny_auth"):
        raise ApiError(403, faults.deny_auth_detail)
    key_id = backend.check_api_key(key)
    if key_id is None:
        raise ApiError(401, "Invalid API key")
    ttl = backend.config.auth_token_ttl
    return web.json_response({"access_token": backend.tokens.issue_access(key_id, ttl),
                              "token_type": "bearer", "expires_in": ttl})


async def regions(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    backend.bearer_key_id(request)
    return web.json_response({"regions": [
        {"id": "local", "ping_url": f"{backend.ctx.base_url}/ping"}]})


async def ping(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def sessions_request(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT, required=False))
    latencies = body.get("region_latencies")
    if latencies is not None:
        if not isinstance(latencies, dict):
            raise validation_error(["body", "region_latencies"], "Input should be a valid "
                                   "dictionary", "dict_type")
        for region, value in latencies.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise validation_error(["body", "region_latencies", region],
                                       "Input should be a valid number", "float_type")
    alloc = backend.allocate(key_id)
    log.info("allocation %s (slot %d) for %s", alloc.session_id, alloc.slot, key_id)
    return web.json_response({
        "session_id": alloc.session_id,
        "signalling_url": backend.ctx.signaling_url,
        "capabilities": {"image_to_video": True},
        "streamer_id": f"local-streamer-{alloc.slot}",
        "model": "odyssey-local",
        "region": "local",
    })


async def sessions_token(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT))
    session_id = require_str(body, "session_id")
    alloc = backend.allocations.get(session_id)
    if alloc is None or alloc.key_id != key_id:
        raise ApiError(404, "Session not found")
    ttl = backend.config.session_token_ttl
    return web.json_response({
        "session_token": backend.tokens.issue_session(session_id, key_id, ttl),
        "expires_in": ttl})


def _own_stream(backend: LocalBackend, key_id: str, stream_id: str) -> Row:
    row = backend.store.stream(stream_id)
    # Someone else's stream answers like an unknown one: ids do not leak.
    if row is None or row["key_id"] != key_id:
        raise ApiError(404, "Recording not found")
    return row


async def get_recording(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    row = _own_stream(backend, key_id, request.match_info["stream_id"])
    return web.json_response(backend.recording_json(row))


async def list_stream_recordings(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    limit = query_int(request, "limit", 20, 1, 100)
    offset = query_int(request, "offset", 0, 0)
    rows, total = backend.store.streams_of_key(key_id, limit, offset)
    return web.json_response({
        "recordings": [{"stream_id": r["stream_id"], "width": r["width"],
                        "height": r["height"], "started_at": r["started_at"],
                        "ended_at": r["ended_at"], "duration_seconds": r["duration_seconds"]}
                       for r in rows],
        "total": total, "limit": limit, "offset": offset})


async def get_media(request: web.Request) -> web.StreamResponse:
    """Serve a recording file behind an expiring HMAC signature.

    The file is found from (stream row in the DB, kind from a fixed table):
    nothing in the URL ever becomes part of a filesystem path.
    """
    backend = backend_of(request)
    stream_id = request.match_info["stream_id"]
    kind = request.match_info["kind"]
    if kind not in MEDIA_KINDS:
        raise ApiError(404, "Not Found")
    if not auth.verify_resource_signature(backend.ctx.secret, stream_id, kind,
                                          request.query.get("expires"),
                                          request.query.get("sig")):
        raise ApiError(403, "Invalid or expired signature")
    row = backend.store.stream(stream_id)
    if row is None:
        raise ApiError(404, "Not Found")
    if kind == "events":
        return web.json_response(backend.events_json(row))
    path = backend.media_paths(row["media_key"])[kind]
    if row["render_state"] != "ready" or not path.is_file():
        raise ApiError(404, "Not Found")
    response = web.FileResponse(path)
    response.content_type = MEDIA_KINDS[kind][1]
    return response


async def telemetry(request: web.Request) -> web.StreamResponse:
    # Fire-and-forget from the Py client; body ignored, but bounded.
    if request.content_length is not None and request.content_length > SMALL_BODY_LIMIT:
        raise ApiError(413, "Request body too large")
    await read_limited(request.content, SMALL_BODY_LIMIT)
    return web.json_response({"status": "ok"})


async def admin_set_faults(request: web.Request) -> web.StreamResponse:
    backend = _admin(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT))
    try:
        changes = Faults.validate(body)
    except TypeError as exc:
        raise validation_error(["body"], str(exc), "extra_forbidden") from None
    except FaultValueError as exc:
        raise validation_error(["body", exc.name], str(exc), "value_error") from None
    backend.ctx.faults.set(**changes)
    log.info("faults set: %s", ", ".join(sorted(changes)) or "(none)")
    return web.json_response(backend.ctx.faults.as_dict())


async def admin_clear_faults(request: web.Request) -> web.StreamResponse:
    backend = _admin(request)
    backend.ctx.faults.clear()
    return web.json_response(backend.ctx.faults.as_dict())


async def admin_add_key(request: web.Request) -> web.StreamResponse:
    """Register another API key (a separate account) on a running server."""
    backend = _admin(request)
    body = require_object(await read_json(request, SMALL_BODY_LIMIT))
    key = body.get("api_key")
    if not isinstance(key, str) or not key:
        raise validation_error(["body", "api_key"], "Input should be a non-empty string",
                               "string_type")
    key_hash = auth.hash_api_key(key)
    key_id = auth.key_id_for(key_hash)
    backend.store.add_key(key_hash, key_id, "admin")
    log.info("API key %s registered", key_id)
    return web.json_response({"key_id": key_id}, status=201)


async def admin_state(request: web.Request) -> web.StreamResponse:
    return web.json_response(_admin(request).state_json())


def _admin(request: web.Request) -> LocalBackend:
    backend = backend_of(request)
    if not request.headers.get("Authorization"):
        raise ApiError(401, "Not authenticated", {"WWW-Authenticate": "Bearer"})
    if not backend.is_admin(request):
        raise ApiError(403, "Admin routes need the server's API key")
    return backend


def add_routes(app: web.Application) -> None:
    """Register every route of this module on ``app``."""
    r = app.router
    r.add_post("/auth/token", auth_token)
    r.add_get("/regions", regions)
    r.add_get("/ping", ping)
    r.add_post("/sessions/request", sessions_request)
    r.add_post("/sessions/token", sessions_token)
    r.add_get("/recordings/{stream_id}", get_recording)
    r.add_get("/stream-recordings", list_stream_recordings)
    r.add_get("/media/{stream_id}/{kind}", get_media)
    r.add_post("/telemetry", telemetry)
    r.add_post("/_admin/faults", admin_set_faults)
    r.add_delete("/_admin/faults", admin_clear_faults)
    r.add_get("/_admin/state", admin_state)
    r.add_post("/_admin/api-keys", admin_add_key)
