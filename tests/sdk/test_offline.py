"""OfflineMethods (recordings, simulations, credentials) through a tiny concrete
class, end to end against the local server, plus stub-API unit tests for the
polling logic."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from odyssey_sync import errors
from odyssey_sync._offline import OfflineMethods
from odyssey_sync._rest import ApiClient
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.types import (
    ClientCredentials,
    Recording,
    SimulationJobDetail,
    SimulationJobStatus,
)

SCRIPT_A = [
    {"timestamp_ms": 0, "start": {"prompt": "a red balloon over a city"}},
    {"timestamp_ms": 3000, "interact": {"prompt": "the balloon rises"}},
    {"timestamp_ms": 6000, "end": {}},
]
SCRIPT_B = [
    {"timestamp_ms": 0, "start": {"prompt": "a forest at dawn",
                                  "image": np.full((90, 160, 3), 120, np.uint8)}},
    {"timestamp_ms": 4000, "end": {}},
]
FPS = 10


class _C(OfflineMethods):
    def __init__(self, api: ApiClient) -> None:
        self._api = api


def _paths(client: _C) -> list[str]:
    seen: list[str] = []
    client._api.http.add_response_hook(
        lambda r, *a, **k: seen.append(f"{r.request.method} {r.request.path_url.split('?')[0]}"))
    return seen


@pytest.fixture
def fast_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOdyssey]:
    # function-scoped: rendering starts the server's render threads, which
    # must stop (with the server) before the thread-leak check runs
    with LocalOdyssey(size=(320, 176), fps=FPS, data_dir=tmp_path_factory.mktemp("srv"),
                      job_delay=0.05,
                      capacity=4) as srv:
        yield srv


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOdyssey]:
    # jobs stay pending for a minute: nothing renders, jobs can be cancelled
    with LocalOdyssey(size=(320, 176), fps=FPS, data_dir=tmp_path_factory.mktemp("slow"),
                      job_delay=60.0, capacity=8, max_concurrent_per_key=8,
                      allocation_timeout=5.0) as srv:
        yield srv


@pytest.fixture
def fast(fast_server: LocalOdyssey) -> Iterator[_C]:
    with ApiClient(fast_server.url, fast_server.api_key) as api:
        yield _C(api)


@pytest.fixture
def slow(slow_server: LocalOdyssey) -> Iterator[_C]:
    slow_server.faults.clear()
    with ApiClient(slow_server.url, slow_server.api_key) as api:
        yield _C(api)
    slow_server.faults.clear()


def _decode(path: Path) -> list[np.ndarray]:  # type: ignore[type-arg]
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


# --------------------------------------------------------------------------- end to end


def test_two_scripts_end_to_end(fast: _C, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                ) -> None:
    job = fast.simulate(scripts=[SCRIPT_A, SCRIPT_B], portrait=False)
    assert job.status.is_active
    done = fast.wait_for_simulation(job.job_id, timeout=60, poll_interval=0.1, progress=True)
    assert done.status is SimulationJobStatus.COMPLETED
    assert "simulation" in capsys.readouterr().err  # the status line went to stderr
    streams = sorted(done.streams, key=lambda s: s.script_index)
    assert [s.script_index for s in streams] == [0, 1]
    expected_frames = [6 * FPS, 4 * FPS]

    out = tmp_path / "videos"
    out.mkdir()
    stamps_expected = importlib.util.find_spec("odyssey_sync.local.render.media") is not None
    for stream, n in zip(streams, expected_frames, strict=True):
        assert stream.frame_count == n
        path = fast.download_recording(stream.stream_id, out, progress=False)
        assert path == out / f"{stream.stream_id}.mp4"
        frames = _decode(path)
        assert len(frames) == n
        assert all(f.shape == (176, 320, 3) for f in frames)
        if stamps_expected:
            from odyssey_sync.local.render.stamp import decode_stamp

            numbers = [s.frame for s in map(decode_stamp, frames) if s is not None]
            assert numbers == list(range(n))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s.stream_id}.mp4" for s in streams)

    # the recordings are listed and fetchable too
    page = fast.list_stream_recordings(limit=10)
    assert page.total == 2
    assert {r.stream_id for r in page.recordings} == {s.stream_id for s in streams}
    assert {(r.width, r.height) for r in page.recordings} == {(320, 176)}
    one = fast.list_stream_recordings(limit=1, offset=1)
    assert len(one.recordings) == 1 and one.offset == 1
    rec = fast.get_recording(streams[0].stream_id)
    assert rec.video_url and rec.frame_count == expected_frames[0]
    assert rec.duration_seconds == pytest.approx(6.0)


def test_portrait_simulation_and_download_to_file(fast: _C, tmp_path: Path) -> None:
    job = fast.simulate(script=[SCRIPT_A[0], SCRIPT_A[-1]], portrait=True)
    done = fast.wait_for_simulation(job.job_id, timeout=60, poll_interval=0.1, progress=False)
    (stream,) = done.streams
    target = tmp_path / "clip.mp4"
    assert fast.download_recording(stream.stream_id, str(target), progress=False) == target
    frames = _decode(target)
    assert frames[0].shape == (320, 176, 3) and len(frames) == stream.frame_count
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_download_progress_bar(fast: _C, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    job = fast.simulate(script=[SCRIPT_A[0], SCRIPT_A[-1]], portrait=False)
    (stream,) = fast.wait_for_simulation(job.job_id, timeout=60, poll_interval=0.1,
                                         progress=False).streams
    capsys.readouterr()
    fast.download_recording(stream.stream_id, tmp_path, progress=True)
    assert f"{stream.stream_id}.mp4" in capsys.readouterr().err


def test_failed_simulation(fast: _C) -> None:
    # the emulator refuses to fetch foreign script URLs: the job fails
    job = fast.simulate(script_url="http://example.invalid/script.json")
    with pytest.raises(errors.OdysseyStreamError, match="not served by this local server") as info:
        fast.wait_for_simulation(job.job_id, timeout=60, poll_interval=0.1, progress=False)
    assert info.value.reason == "simulation_failed"


def test_cancel_finished_job_400(fast: _C) -> None:
    job = fast.simulate(script=[SCRIPT_A[0], SCRIPT_A[-1]])
    fast.wait_for_simulation(job.job_id, timeout=60, poll_interval=0.1, progress=False)
    with pytest.raises(errors.OdysseyRequestError, match="completed") as info:
        fast.cancel_simulation(job.job_id)
    assert info.value.status == 400


def test_recording_not_found(fast: _C, tmp_path: Path) -> None:
    with pytest.raises(errors.OdysseyNotFoundError):
        fast.get_recording("no-such-stream")
    with pytest.raises(errors.OdysseyNotFoundError):
        fast.download_recording("no-such-stream", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- slow server


def test_cancelled_simulation(slow: _C) -> None:
    job = slow.simulate(script=SCRIPT_A)
    info = slow.cancel_simulation(job.job_id)
    assert info.status is SimulationJobStatus.CANCELLED
    with pytest.raises(errors.OdysseyStreamError, match="cancelled") as err:
        slow.wait_for_simulation(job.job_id, timeout=10, poll_interval=0.1, progress=False)
    assert err.value.reason == "simulation_cancelled"
    status = slow.get_simulate_status(job.job_id)
    assert status.status is SimulationJobStatus.CANCELLED and status.streams == []


def test_wait_timeout(slow: _C) -> None:
    job = slow.simulate(script=SCRIPT_A)
    try:
        with pytest.raises(errors.OdysseyTimeoutError, match=r"did not finish within 0\.3 s"):
            slow.wait_for_simulation(job.job_id, timeout=0.3, poll_interval=0.05, progress=False)
    finally:
        slow.cancel_simulation(job.job_id)


def test_list_simulations_filters(slow: _C) -> None:
    job = slow.simulate(script=SCRIPT_A)
    active = slow.list_simulations(active=True, limit=100)
    assert job.job_id in [j.job_id for j in active.jobs]
    slow.cancel_simulation(job.job_id)
    pending = slow.list_simulations(status="pending", limit=100)
    assert job.job_id not in [j.job_id for j in pending.jobs]
    cancelled = slow.list_simulations(status=SimulationJobStatus.CANCELLED, active=False)
    assert job.job_id in [j.job_id for j in cancelled.jobs]


def test_bypass_flag_is_sent(slow: _C) -> None:
    # the local server grants the privilege by default: the job is accepted
    bodies: list[bytes] = []
    slow._api.http.add_response_hook(
        lambda r, *a, **k: bodies.append(r.request.body or b""))
    job = slow.simulate(script=SCRIPT_A, bypass_prompt_expansion=True)
    slow.cancel_simulation(job.job_id)
    submitted = json.loads(bodies[-2])
    assert submitted["bypass_vlm_expansion"] is True and submitted["output_video"] is True


def test_close_interrupts_wait(slow: _C) -> None:
    job = slow.simulate(script=SCRIPT_A)
    raised: list[BaseException] = []
    polled = threading.Event()
    slow._api.http.add_response_hook(lambda r, *a, **k: polled.set())

    def run() -> None:
        try:
            slow.wait_for_simulation(job.job_id, timeout=30, poll_interval=5, progress=False)
        except BaseException as exc:
            raised.append(exc)

    polled.clear()
    t = threading.Thread(target=run, name="test-wait")
    t.start()
    assert polled.wait(10)
    slow._api.close()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(raised[0], errors.OdysseyConnectionError)


def test_create_client_credentials(slow: _C, slow_server: LocalOdyssey) -> None:
    slow_server.faults.set(refuse_sessions=1)
    seen = _paths(slow)
    creds = slow.create_client_credentials(timeout=20)
    assert isinstance(creds, ClientCredentials)
    assert creds.signaling_url.startswith("ws://")
    assert creds.capabilities is not None and creds.capabilities.image_to_video
    assert creds.expires_in > 0
    assert creds.session_id.startswith("sess")
    assert creds.session_token not in repr(creds)
    again = ClientCredentials.from_dict(creds.to_dict())
    assert again.session_id == creds.session_id
    assert seen.count("POST /sessions/request") == 2  # one 503, then the allocation
    assert seen.count("POST /sessions/token") == 1


def test_credentials_queue_timeout(slow: _C, slow_server: LocalOdyssey) -> None:
    slow_server.faults.set(refuse_sessions=50)
    with pytest.raises(errors.OdysseyQueueTimeoutError):
        slow.create_client_credentials(timeout=10, queue_timeout=0)


def test_foreign_job_is_403(slow: _C, tmp_path: Path) -> None:
    with LocalOdyssey(size=(320, 176), data_dir=tmp_path, job_delay=60.0,
                      extra_api_keys=["other-account-key-123456"]) as srv, \
            ApiClient(srv.url, srv.api_key) as mine_api, \
            ApiClient(srv.url, "other-account-key-123456") as theirs_api:
        theirs = _C(theirs_api).simulate(script=SCRIPT_A)
        with pytest.raises(errors.OdysseyPermissionError):
            _C(mine_api).get_simulate_status(theirs.job_id)
        with pytest.raises(errors.OdysseyPermissionError):
            _C(mine_api).cancel_simulation(theirs.job_id)


# --------------------------------------------------------------------------- local checks


def test_no_api_key_fails_before_any_request(slow_server: LocalOdyssey, tmp_path: Path) -> None:
    with ApiClient(slow_server.url, None) as api:
        c = _C(api)
        seen = _paths(c)
        calls: list[Callable[[], object]] = [
            lambda: c.get_recording("s"),
            lambda: c.list_stream_recordings(),
            lambda: c.download_recording("s", tmp_path),
            lambda: c.simulate(script=SCRIPT_A),
            lambda: c.get_simulate_status("j"),
            lambda: c.list_simulations(),
            lambda: c.cancel_simulation("j"),
            lambda: c.wait_for_simulation("j"),
            lambda: c.create_client_credentials(),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="API key"):
                call()
        assert seen == []


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda c, p: c.simulate(), ValueError, "exactly one"),
        (lambda c, p: c.simulate(script=[SCRIPT_A[1]]), ValueError, r"script\[0\]"),
        (lambda c, p: c.list_simulations(limit=0), ValueError, "limit"),
        (lambda c, p: c.list_simulations(limit=101), ValueError, "limit"),
        (lambda c, p: c.list_simulations(offset=-1), ValueError, "offset"),
        (lambda c, p: c.list_stream_recordings(limit="3"), TypeError, "limit"),
        (lambda c, p: c.get_recording(""), ValueError, "stream_id"),
        (lambda c, p: c.get_simulate_status("a\nb"), ValueError, "control"),
        (lambda c, p: c.download_recording("s", p / "missing" / "x.mp4"), ValueError,
         "does not exist"),
        (lambda c, p: c.download_recording("../evil", p), ValueError, "file name"),
        (lambda c, p: c.download_recording("s", 5), TypeError, "path"),
        (lambda c, p: c.wait_for_simulation("j", poll_interval=0), ValueError, "poll_interval"),
        (lambda c, p: c.get_recording("s", timeout=-1), ValueError, "timeout"),
        (lambda c, p: c.get_recording("s", timeout="1"), TypeError, "timeout"),
        (lambda c, p: c.download_recording("s", p, progress="yes"), TypeError, "progress"),
        (lambda c, p: c.download_recording(".", p), ValueError, "stream_id"),
        (lambda c, p: c.download_recording("s", p, timeout=float("nan")), ValueError,
         "timeout"),
        (lambda c, p: c.wait_for_simulation("j", progress=None), TypeError, "progress"),
        (lambda c, p: c.list_stream_recordings(limit=101), ValueError, "between 1 and 100"),
        (lambda c, p: c.list_stream_recordings(offset=2**63), ValueError, "offset"),
        (lambda c, p: c.simulate(script=SCRIPT_A, timeout=-1), ValueError, "timeout"),
        (lambda c, p: c.simulate(scripts=[SCRIPT_A] * 17), ValueError,
         "MAX_SCRIPTS_PER_BATCH"),
    ],
)
def test_bad_arguments_fail_before_any_request(
    slow: _C, tmp_path: Path, call: Any, exc: type[Exception], match: str
) -> None:
    seen = _paths(slow)
    with pytest.raises(exc, match=match):
        call(slow, tmp_path)
    assert seen == []


# --------------------------------------------------------------------------- stub API


class _StubApi:
    """Stands in for ApiClient: answers from a script of results (the last one repeats)."""

    has_api_key = True

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0
        self.downloads: list[tuple[str, Path]] = []
        self.closed = threading.Event()

    def _next(self) -> Any:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def get_simulation(self, job_id: str, *, deadline: Any = None) -> SimulationJobDetail:
        return SimulationJobDetail.from_dict({"job_id": job_id, "status": self._next()})

    def get_recording(self, stream_id: str, *, deadline: Any = None) -> Recording:
        """The answer is the video URL, ``None`` while processing."""
        return Recording.from_dict({"stream_id": stream_id, "video_url": self._next()})

    def download(self, url: str, path: Path, **kwargs: Any) -> Path:
        self.downloads.append((url, path))
        return path

    def wait_closed(self, timeout: float) -> bool:
        return self.closed.wait(min(timeout, 0.001))


def _stubbed(answers: list[Any]) -> tuple[_C, _StubApi]:
    stub = _StubApi(answers)
    c = _C.__new__(_C)
    c._api = stub  # type: ignore[assignment]
    return c, stub


def test_transient_poll_failures_are_retried() -> None:
    c, stub = _stubbed([errors.OdysseyConnectionError("blip"), "processing",
                        errors.OdysseyTimeoutError("slow"), errors.OdysseyConnectionError("blip"),
                        "completed"])
    job = c.wait_for_simulation("j", timeout=None, poll_interval=0.01, progress=False)
    assert job.status is SimulationJobStatus.COMPLETED and stub.calls == 5


def test_persistent_poll_failures_raise() -> None:
    c, stub = _stubbed([errors.OdysseyConnectionError(f"down {i}") for i in range(5)])
    with pytest.raises(errors.OdysseyConnectionError, match="down 3"):
        c.wait_for_simulation("j", timeout=None, poll_interval=0.01, progress=False)
    assert stub.calls == 4


def test_unknown_status_keeps_polling() -> None:
    c, stub = _stubbed(["pending", "dispatched", "warming_up", "completed"])
    job = c.wait_for_simulation("j", timeout=None, poll_interval=0.01, progress=False)
    assert job.status.value == "completed" and stub.calls == 4


def test_failed_message_carried() -> None:
    class FailingApi(_StubApi):
        def get_simulation(self, job_id: str, *, deadline: Any = None) -> SimulationJobDetail:
            return SimulationJobDetail.from_dict(
                {"job_id": job_id, "status": "failed", "error_message": "GPU on fire"})

    c = _C.__new__(_C)
    c._api = FailingApi([])  # type: ignore[assignment]
    with pytest.raises(errors.OdysseyStreamError, match="GPU on fire") as info:
        c.wait_for_simulation("j", progress=False)
    assert info.value.reason == "simulation_failed"


# --------------------------------------------------------------------------- recordings (stub)


def test_wait_polls_until_the_video_url_exists() -> None:
    c, stub = _stubbed([None, None, errors.OdysseyConnectionError("blip"), "http://x/v.mp4"])
    rec = c.wait_for_recording("s", timeout=None, poll_interval=0.01)
    assert rec.video_url == "http://x/v.mp4" and stub.calls == 4


def test_wait_times_out_with_the_last_state() -> None:
    c, _ = _stubbed([None])
    with pytest.raises(errors.OdysseyTimeoutError, match="processing") as info:
        c.wait_for_recording("s", timeout=0.2, poll_interval=0.01)
    assert info.value.stream_id == "s"


def test_close_interrupts_the_wait() -> None:
    c, stub = _stubbed([None])
    closer = threading.Timer(0.1, stub.closed.set)
    closer.start()
    try:
        with pytest.raises(errors.OdysseyConnectionError, match="closed"):
            c.wait_for_recording("s", timeout=30, poll_interval=0.01)
    finally:
        closer.join()


def test_download_recording_waits_then_downloads(tmp_path: Path) -> None:
    c, stub = _stubbed([None, None, "http://x/v.mp4"])
    path = c.download_recording("s", tmp_path, progress=False, timeout=10)
    assert path == tmp_path / "s.mp4"
    assert stub.downloads == [("http://x/v.mp4", tmp_path / "s.mp4")] and stub.calls == 3


def test_a_stream_without_frames_has_no_video_to_wait_for() -> None:
    c = _C.__new__(_C)

    class NoFrames(_StubApi):
        def get_recording(self, stream_id: str, *, deadline: Any = None) -> Recording:
            return Recording.from_dict({"stream_id": stream_id, "video_url": None,
                                        "frame_count": 0, "duration_seconds": 0.0})

    c._api = NoFrames([])  # type: ignore[assignment]
    with pytest.raises(errors.OdysseyNotFoundError, match="without any frame"):
        c.wait_for_recording("s", timeout=30, poll_interval=0.01)


def test_download_recording_timeout_covers_the_wait(tmp_path: Path) -> None:
    c, stub = _stubbed([None])
    with pytest.raises(errors.OdysseyTimeoutError):
        c.download_recording("s", tmp_path, progress=False, timeout=0.2)
    assert stub.downloads == []
