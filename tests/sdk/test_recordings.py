"""Recordings: waiting for processing, downloads into directories, file modes
(issue 10 items 11 and 12), against the embedded server and a stub API."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from odyssey_sync._offline import OfflineMethods
from odyssey_sync._rest import ApiClient
from odyssey_sync.client import Odyssey
from odyssey_sync.errors import OdysseyNotFoundError
from odyssey_sync.local import LocalOdyssey

SCRIPT = [
    {"timestamp_ms": 0, "start": {"prompt": "a lighthouse at dusk"}},
    {"timestamp_ms": 2000, "end": {}},
]
FPS = 10


class _C(OfflineMethods):
    def __init__(self, api: ApiClient) -> None:
        self._api = api


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOdyssey]:
    with LocalOdyssey(size=(320, 176), fps=FPS, data_dir=tmp_path_factory.mktemp("rec"),
                      job_delay=0.05, capacity=2) as srv:
        yield srv


@pytest.fixture
def client(server: LocalOdyssey) -> Iterator[_C]:
    with ApiClient(server.url, server.api_key) as api:
        yield _C(api)


def _finished_stream(client: _C) -> str:
    job = client.simulate(script=SCRIPT, portrait=False)
    done = client.wait_for_simulation(job.job_id, timeout=60, poll_interval=0.05, progress=False)
    (stream,) = done.streams
    return stream.stream_id


def _frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# --------------------------------------------------------------------------- item 12: downloads


@pytest.mark.parametrize("suffix", ["/", os.sep])
def test_trailing_separator_names_a_new_directory(
    client: _C, tmp_path: Path, suffix: str
) -> None:
    stream_id = _finished_stream(client)
    target = str(tmp_path / "videos") + suffix
    path = client.download_recording(stream_id, target, progress=False)
    assert path == tmp_path / "videos" / f"{stream_id}.mp4"
    assert (tmp_path / "videos").is_dir()
    assert _frame_count(path) == 2 * FPS


def test_trailing_separator_under_a_missing_parent_is_refused(client: _C, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        client.download_recording("s", str(tmp_path / "a" / "b") + "/", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_trailing_separator_on_a_file_is_refused(client: _C, tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"x")
    with pytest.raises(ValueError, match="separator"):
        client.download_recording("s", str(tmp_path / "taken") + "/", progress=False)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.usefixtures("umask_022")
def test_downloaded_file_respects_the_umask(client: _C, tmp_path: Path) -> None:
    stream_id = _finished_stream(client)
    path = client.download_recording(stream_id, tmp_path / "clip.mp4", progress=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # 0o666 & ~0o022, not 0o600


# --------------------------------------------------------------------------- item 11: waiting


def test_wait_for_recording_returns_the_ready_recording(client: _C) -> None:
    stream_id = _finished_stream(client)
    rec = client.wait_for_recording(stream_id, timeout=30)
    assert rec.stream_id == stream_id and rec.video_url and rec.frame_count == 2 * FPS


def test_wait_for_recording_unknown_stream_is_not_found(client: _C) -> None:
    with pytest.raises(OdysseyNotFoundError):
        client.wait_for_recording("no-such-stream", timeout=5)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [({"stream_id": ".."}, ValueError), ({"stream_id": "."}, ValueError),
     ({"timeout": -1}, ValueError), ({"timeout": "5"}, TypeError),
     ({"poll_interval": 0}, ValueError)],
)
def test_wait_for_recording_checks_arguments_first(
    client: _C, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    seen: list[str] = []
    client._api.http.add_response_hook(lambda r, *a, **k: seen.append(r.url))
    args: dict[str, Any] = {"stream_id": "s", "timeout": 1.0, "poll_interval": 0.1, **kwargs}
    stream_id = args.pop("stream_id")
    with pytest.raises(exc):
        client.wait_for_recording(stream_id, **args)
    assert seen == []


def test_download_right_after_end_stream_waits_for_processing(
    server: LocalOdyssey, tmp_path: Path
) -> None:
    """The defect: download_recording right after end_stream said "no video yet"."""
    with Odyssey(server.api_key, api_url=server.url) as client:
        client.connect()
        stream_id = client.start_stream("a harbour in the rain", portrait=False)
        for n, frame in enumerate(client.frames(timeout=10)):
            frame.release()
            if n == 4:
                break
        client.end_stream()
        path = client.download_recording(stream_id, tmp_path, progress=False, timeout=60)
    assert path == tmp_path / f"{stream_id}.mp4"
    assert _frame_count(path) >= 1
