"""Simulation jobs of the local server (PROTOCOL §3.9, §9) over real sockets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.local.helpers import (
    OTHER_KEY,
    Api,
    decode_stamps,
    decode_video,
    local_server,
    png_data_url,
    script,
)

pytestmark = pytest.mark.timeout(90)

DETAIL_FIELDS = {"job_id", "status", "priority", "created_at", "dispatched_at", "started_at",
                 "completed_at", "error_message", "assigned_region", "retry_count",
                 "estimated_wait_minutes", "streams"}




def wait_job(api: Any, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll like a client does until the job is final (the wire offers no push)."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        detail: dict[str, Any] = api.get(f"/simulation-jobs/{job_id}").json()
        if not seen or seen[-1] != detail["status"]:
            seen.append(detail["status"])
        if detail["status"] in ("completed", "failed", "cancelled"):
            detail["_seen"] = seen
            return detail
        assert time.monotonic() < deadline, f"job stuck in {detail['status']}"
        time.sleep(0.02)


def test_batch_of_two_scripts_completes_with_two_streams(server: Any, api: Any) -> None:
    r = api.post("/simulation-jobs", json={
        "portrait": False, "output_video": True,
        "scripts": [script(1000, "it rains"), script(500)]})
    assert r.status_code == 200, r.text
    submitted = r.json()
    assert set(submitted) == DETAIL_FIELDS
    assert submitted["status"] == "pending" and submitted["streams"] == []
    assert submitted["priority"] == "normal" and submitted["created_at"]

    done = wait_job(api, submitted["job_id"])
    assert done["status"] == "completed", done
    assert done["completed_at"] and done["started_at"] and done["dispatched_at"]
    streams = sorted(done["streams"], key=lambda s: s["script_index"])
    assert [s["script_index"] for s in streams] == [0, 1]
    fps = server.config.fps
    for stream, length_ms in zip(streams, (1000, 500), strict=True):
        assert stream["frame_count"] == round(length_ms * fps / 1000)
        video = requests.get(stream["video_url"], timeout=20)
        assert video.status_code == 200
        count, width, height = decode_video(video.content)
        assert count == stream["frame_count"]
        assert (width, height) == server.config.size  # landscape
        # frames carry their numbers, in order, none lost
        assert decode_stamps(video.content) == list(range(count))
        # simulation outputs are recordings of the key too
        rec = api.get(f"/recordings/{stream['stream_id']}").json()
        assert rec["frame_count"] == stream["frame_count"]


def test_portrait_default_and_start_image(server: Any, api: Any) -> None:
    entries = script(400)
    entries[0]["start"]["image"] = png_data_url()
    r = api.post("/simulation-jobs", json={"script": entries})
    assert r.status_code == 200, r.text
    done = wait_job(api, r.json()["job_id"])
    assert done["status"] == "completed", done
    video = requests.get(done["streams"][0]["video_url"], timeout=20).content
    _, width, height = decode_video(video)
    assert (width, height) == server.context.frame_size(True)


def test_states_pass_in_order(tmp_path: Path) -> None:
    with local_server(tmp_path, job_delay=0.3) as server, Api(server) as api:
        job_id = api.post("/simulation-jobs", json={"script": script(200)}).json()["job_id"]
        seen = wait_job(api, job_id)["_seen"]
        order = ["pending", "dispatched", "processing", "completed"]
        assert seen[-1] == "completed"
        assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)
        assert "pending" in seen or "dispatched" in seen


def bad(entries: list[Any]) -> dict[str, Any]:
    return {"script": entries}


START = {"timestamp_ms": 0, "start": {"prompt": "p"}}
END = {"timestamp_ms": 1000, "end": {}}


@pytest.mark.parametrize(("body", "where"), [
    ({}, ["body"]),
    ({"script": script(), "script_url": "http://x/y"}, ["body"]),
    ({"script": "nope"}, ["body", "script"]),
    (bad([START]), ["body", "script"]),
    (bad([{"timestamp_ms": 5, "start": {"prompt": "p"}}, END]),
     ["body", "script", 0, "timestamp_ms"]),
    (bad([{"timestamp_ms": 0, "interact": {"prompt": "p"}}, END]), ["body", "script", 0]),
    (bad([START, {"timestamp_ms": 500, "interact": {"prompt": "p"}}]), ["body", "script", 1]),
    (bad([START, {"timestamp_ms": 1.5, "end": {}}]), ["body", "script", 1, "timestamp_ms"]),
    (bad([START, {"timestamp_ms": "9", "end": {}}]), ["body", "script", 1, "timestamp_ms"]),
    (bad([START, {"end": {}}]), ["body", "script", 1, "timestamp_ms"]),
    (bad([START, {"timestamp_ms": 600, "interact": {"prompt": "a"}},
          {"timestamp_ms": 500, "interact": {"prompt": "b"}}, END]),
     ["body", "script", 2, "timestamp_ms"]),
    (bad([START, {"timestamp_ms": 5, "interact": {"prompt": "a"}, "end": {}}, END]),
     ["body", "script", 1]),
    (bad([START, {"timestamp_ms": 5}, END]), ["body", "script", 1]),
    (bad([{"timestamp_ms": 0, "start": {}}, END]), ["body", "script", 0, "start", "prompt"]),
    (bad([START, {"timestamp_ms": 5, "interact": {"prompt": 3}}, END]),
     ["body", "script", 1, "interact", "prompt"]),
    (bad([START, {"timestamp_ms": 5, "start": {"prompt": "again"}}, END]),
     ["body", "script", 1, "start"]),
    (bad([START, END, END]), ["body", "script", 1, "end"]),
    (bad([{"timestamp_ms": 0, "start": {"prompt": "p", "image": "data:image/png;base64,@@"}},
          END]), ["body", "script", 0, "start", "image"]),
    (bad([{"timestamp_ms": 0, "start": {"prompt": "p", "image": "data:image/png;base64,AAAA"}},
          END]), ["body", "script", 0, "start", "image"]),
    (bad([{"timestamp_ms": 0, "start": {"prompt": "p", "image": "http://x/cat.png"}},
          END]), ["body", "script", 0, "start", "image"]),
    ({"scripts": [script(), [START]]}, ["body", "scripts", 1]),
    ({"script": script(), "portrait": "yes"}, ["body", "portrait"]),
])
def test_script_validation_names_the_entry(api: Any, body: dict[str, Any],
                                           where: list[Any]) -> None:
    r = api.post("/simulation-jobs", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["loc"] == where
    assert error["msg"]


def test_malformed_and_huge_bodies(api: Any) -> None:
    r = api.http.post(api.url + "/simulation-jobs", data=b"[{", timeout=10,
                      headers={**api.headers(), "Content-Type": "application/json"})
    assert r.status_code == 422
    r = api.http.post(api.url + "/simulation-jobs", data=b"x" * (66 << 20), timeout=60,
                      headers={**api.headers(), "Content-Type": "application/json"})
    assert r.status_code == 413


def test_large_image_script_accepted(api: Any) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(1).integers(0, 255, (900, 1600, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert buf.tell() > 2 << 20  # well above the small-body limit
    entries = script(200)
    entries[0]["start"]["image"] = "data:image/png;base64," + base64.b64encode(
        buf.getvalue()).decode()
    r = api.post("/simulation-jobs", json={"script": entries})
    assert r.status_code == 200, r.text[:300]


def test_bypass_vlm_expansion_privilege(tmp_path: Path) -> None:
    with local_server(tmp_path, bypass_privileged=False) as server, Api(server) as api:
        r = api.post("/simulation-jobs", json={"script": script(), "bypass_vlm_expansion": True})
        assert r.status_code == 403 and "detail" in r.json()
        r = api.post("/simulation-jobs",
                     json={"script": script(), "bypass_vlm_expansion": False})
        assert r.status_code == 200
    with local_server(tmp_path / "b") as server, Api(server) as api:
        r = api.post("/simulation-jobs", json={"script": script(), "bypass_vlm_expansion": True})
        assert r.status_code == 200


def test_cancel_pending_and_not_completed(tmp_path: Path) -> None:
    with local_server(tmp_path, job_delay=30.0) as server, Api(server) as api:
        job_id = api.post("/simulation-jobs", json={"script": script()}).json()["job_id"]
        r = api.delete(f"/simulation-jobs/{job_id}")
        assert r.status_code == 200
        assert r.json()["job_id"] == job_id and r.json()["status"] == "cancelled"
        assert api.get(f"/simulation-jobs/{job_id}").json()["status"] == "cancelled"
        again = api.delete(f"/simulation-jobs/{job_id}")
        assert again.status_code == 400 and "cancelled" in again.json()["detail"]


def test_cancel_completed_is_400(server: Any, api: Any) -> None:
    job_id = api.post("/simulation-jobs", json={"script": script(200)}).json()["job_id"]
    assert wait_job(api, job_id)["status"] == "completed"
    r = api.delete(f"/simulation-jobs/{job_id}")
    assert r.status_code == 400
    assert isinstance(r.json()["detail"], str)


def test_unknown_and_foreign_jobs(server: Any, api: Any) -> None:
    assert api.get("/simulation-jobs/job_nope").status_code == 404
    assert api.delete("/simulation-jobs/job_nope").status_code == 404
    job_id = api.post("/simulation-jobs", json={"script": script(200)}).json()["job_id"]
    with Api(server, OTHER_KEY) as other:
        assert other.get(f"/simulation-jobs/{job_id}").status_code == 403
        assert other.delete(f"/simulation-jobs/{job_id}").status_code == 403
        assert other.get("/simulation-jobs").json()["total"] == 0
    wait_job(api, job_id)


def test_list_filters_and_pagination(tmp_path: Path) -> None:
    with local_server(tmp_path, job_delay=30.0) as server, Api(server) as api:
        ids = [api.post("/simulation-jobs", json={"script": script()}).json()["job_id"]
               for _ in range(3)]
        api.delete(f"/simulation-jobs/{ids[0]}")
        body = api.get("/simulation-jobs").json()
        assert (body["total"], body["limit"], body["offset"]) == (3, 20, 0)
        assert [j["job_id"] for j in body["jobs"]] == ids[::-1]
        assert set(body["jobs"][0]) == {"job_id", "status", "priority", "created_at",
                                        "completed_at", "error_message"}
        active = api.get("/simulation-jobs", params={"active": "true"}).json()
        assert {j["job_id"] for j in active["jobs"]} == set(ids[1:])
        inactive = api.get("/simulation-jobs", params={"active": "false"}).json()
        assert [j["job_id"] for j in inactive["jobs"]] == [ids[0]]
        cancelled = api.get("/simulation-jobs", params={"status": "cancelled"}).json()
        assert cancelled["total"] == 1
        page = api.get("/simulation-jobs", params={"limit": 1, "offset": 1}).json()
        assert [j["job_id"] for j in page["jobs"]] == [ids[1]] and page["total"] == 3
        for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"status": "done"},
                       {"active": "maybe"}, {"limit": "ten"}):
            r = api.get("/simulation-jobs", params=params)
            assert r.status_code == 422, params
        for job_id in ids[1:]:
            api.delete(f"/simulation-jobs/{job_id}")


def test_script_url_served_by_this_server(server: Any, api: Any) -> None:
    r = api.post("/scripts", json=script(300, "wind"))
    assert r.status_code == 201, r.text
    url = r.json()["script_url"]
    assert requests.get(url, timeout=10).json()[0]["start"]["prompt"] == "a cat"
    assert requests.get(url.replace("sig=", "sig=0"), timeout=10).status_code == 403
    job_id = api.post("/simulation-jobs", json={"script_url": url}).json()["job_id"]
    done = wait_job(api, job_id)
    assert done["status"] == "completed", done
    assert done["streams"][0]["frame_count"] == 3


def test_script_url_elsewhere_fails_the_job(api: Any) -> None:
    job_id = api.post("/simulation-jobs",
                      json={"script_url": "https://example.com/script.json"}).json()["job_id"]
    done = wait_job(api, job_id)
    assert done["status"] == "failed"
    assert "not served by this local server" in done["error_message"]


def test_script_url_with_invalid_script_fails_the_job(server: Any, api: Any) -> None:
    url = api.get("/regions").json()["regions"][0]["ping_url"]  # JSON, but no script
    job_id = api.post("/simulation-jobs", json={"script_url": url}).json()["job_id"]
    done = wait_job(api, job_id)
    assert done["status"] == "failed"
    assert "invalid script" in done["error_message"]


def test_upload_rejects_invalid_script(api: Any) -> None:
    r = api.post("/scripts", json=[START])
    assert r.status_code == 422
