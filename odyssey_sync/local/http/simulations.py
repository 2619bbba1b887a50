"""The simulation-job routes (PROTOCOL §3.9): submit, list, get, cancel, and script upload.

Validation of scripts and the job runner live in :mod:`.jobs`; this module
only reads requests and shapes answers. Validation (which decodes start
images) runs in the loop's executor, so a large submission never stalls the
loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from aiohttp import web

from .. import auth
from ..store import Row
from .backend import LocalBackend, backend_of
from .errors import ApiError, validation_error
from .jobs import (
    JOB_STATUSES,
    LARGE_BODY_LIMIT,
    MAX_BATCH,
    Script,
    ScriptError,
    parse_scripts_document,
    validate_script,
)
from .parsing import query_bool, query_int, read_json, require_object

__all__ = ["add_routes"]

log = logging.getLogger("odyssey_sync.local")


def _script_error_422(exc: ScriptError) -> ApiError:
    return ApiError(422, [{"type": "value_error", "loc": ["body", *exc.loc], "msg": exc.msg}])


def _optional_bool(body: dict[str, Any], name: str, default: bool | None) -> bool | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, bool):
        raise validation_error(["body", name], "Input should be a valid boolean", "bool_type")
    return value


async def submit_job(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    body = require_object(await read_json(request, LARGE_BODY_LIMIT))
    portrait = _optional_bool(body, "portrait", True)
    _optional_bool(body, "output_video", True)
    bypass = _optional_bool(body, "bypass_vlm_expansion", None)
    given = [name for name in ("script", "scripts", "script_url")
             if body.get(name) not in (None, [])]
    if len(given) != 1:
        raise validation_error(["body"], "exactly one of 'script', 'scripts' or 'script_url' "
                               f"is required (got {', '.join(given) or 'none'})")
    scripts: list[Script] | None = None
    script_url: str | None = None
    loop = asyncio.get_running_loop()
    try:
        if given[0] == "script":
            # Validation decodes start images: off the loop.
            scripts = [await loop.run_in_executor(
                None, validate_script, body["script"], ["script"])]
        elif given[0] == "scripts":
            batch = body["scripts"]
            if not isinstance(batch, list):
                raise ScriptError(["scripts"], "'scripts' must be a list of scripts")
            if len(batch) > MAX_BATCH:
                raise ScriptError(["scripts"], f"at most {MAX_BATCH} scripts per job")
            scripts = await loop.run_in_executor(
                None, lambda: [validate_script(s, ["scripts", n]) for n, s in enumerate(batch)])
        else:
            script_url = body["script_url"]
            if not isinstance(script_url, str) or not script_url.startswith(
                    ("http://", "https://")):
                raise ScriptError(["script_url"], "'script_url' must be an http(s) URL")
    except ScriptError as exc:
        raise _script_error_422(exc) from None
    if bypass and not backend.config.bypass_privileged:
        raise ApiError(403, "bypass_vlm_expansion requires a privileged API key")
    row = backend.jobs.submit(key_id, bool(portrait), scripts, script_url)
    log.info("simulation job %s submitted (%s)", row["job_id"], given[0])
    return web.json_response(backend.jobs.detail_json(row))


def _own_job(request: web.Request) -> tuple[LocalBackend, Row]:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    row = backend.store.job(request.match_info["job_id"])
    if row is None:
        raise ApiError(404, "Job not found")
    if row["key_id"] != key_id:
        raise ApiError(403, "Not authorized to access this job")
    return backend, row


async def get_job(request: web.Request) -> web.StreamResponse:
    backend, row = _own_job(request)
    return web.json_response(backend.jobs.detail_json(row))


async def cancel_job(request: web.Request) -> web.StreamResponse:
    backend, row = _own_job(request)
    if not backend.jobs.cancel(row["job_id"]):
        current = backend.store.job(row["job_id"]) or row
        raise ApiError(400, f"Job cannot be cancelled in status '{current['status']}' "
                            "(only pending or dispatched jobs can be cancelled)")
    fresh = backend.store.job(row["job_id"])
    assert fresh is not None
    return web.json_response(backend.jobs.detail_json(fresh))


async def list_jobs(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    status = request.query.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise validation_error(["query", "status"], "Input should be "
                               + ", ".join(repr(s) for s in JOB_STATUSES), "enum")
    active = query_bool(request, "active")
    limit = query_int(request, "limit", 20, 1, 100)
    offset = query_int(request, "offset", 0, 0)
    rows, total = backend.store.jobs_of_key(key_id, status=status, active=active,
                                            limit=limit, offset=offset)
    return web.json_response({
        "jobs": [{"job_id": r["job_id"], "status": r["status"], "priority": r["priority"],
                  "created_at": r["created_at"], "completed_at": r["completed_at"],
                  "error_message": r["error_message"]} for r in rows],
        "total": total, "limit": limit, "offset": offset})


async def upload_script(request: web.Request) -> web.StreamResponse:
    """Emulator extension: store a script and hand back a signed ``script_url``."""
    backend = backend_of(request)
    key_id = backend.bearer_key_id(request)
    doc = await read_json(request, LARGE_BODY_LIMIT)
    try:
        await asyncio.get_running_loop().run_in_executor(None, parse_scripts_document, doc)
    except ScriptError as exc:
        raise _script_error_422(exc) from None
    script_id = "scr_" + uuid.uuid4().hex
    backend.store.add_script(script_id, key_id, json.dumps(doc))
    url = backend.signed_url(script_id, "json", prefix="scripts")
    return web.json_response({"script_id": script_id, "script_url": url}, status=201,
                             headers={"Location": url})


async def get_script(request: web.Request) -> web.StreamResponse:
    backend = backend_of(request)
    script_id = request.match_info["script_id"]
    if request.match_info["kind"] != "json":
        raise ApiError(404, "Not Found")
    if not auth.verify_resource_signature(backend.ctx.secret, script_id, "json",
                                          request.query.get("expires"),
                                          request.query.get("sig")):
        raise ApiError(403, "Invalid or expired signature")
    row = backend.store.script(script_id)
    if row is None:
        raise ApiError(404, "Not Found")
    return web.Response(text=row["body"], content_type="application/json")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/simulation-jobs", submit_job)
    r.add_get("/simulation-jobs", list_jobs)
    r.add_get("/simulation-jobs/{job_id}", get_job)
    r.add_delete("/simulation-jobs/{job_id}", cancel_job)
    r.add_post("/scripts", upload_script)
    r.add_get("/scripts/{script_id}/{kind}", get_script)
