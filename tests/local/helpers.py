"""Plain helpers of the local-server tests (not a test module; fixtures live in conftest.py):
a small-server context manager, the server's command line in a child process, a tiny
REST caller, a StreamSink driver, MP4 decoding."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from odyssey_sync.local import LocalOdyssey

REPO = Path(__file__).resolve().parents[2]
SMALL = (320, 176)
OTHER_KEY = "other-tenant-key-0123456789"


@contextmanager
def local_server(data_dir: Path, **options: Any) -> Iterator[LocalOdyssey]:
    """A small, quiet server on a free port (stopped and joined on exit)."""
    options.setdefault("size", SMALL)
    options.setdefault("fps", 10.0)
    options.setdefault("extra_api_keys", [OTHER_KEY])
    options.setdefault("job_delay", 0.0)
    with LocalOdyssey(data_dir=data_dir, **options) as server:
        yield server



@contextmanager
def serve_command(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m odyssey_sync.local --port 0 *args`` in a child process (text pipes, run
    from the repository root); killed if still running, and its pipes closed, on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "odyssey_sync.local", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


class Api:
    """REST calls as one API key, over a real socket (``requests``, not the SDK)."""

    def __init__(self, server: LocalOdyssey, api_key: str | None = None) -> None:
        self.server = server
        self.url = server.url
        self.api_key = api_key if api_key is not None else server.api_key
        self.http = requests.Session()
        self._token: str | None = None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def token(self) -> str:
        if self._token is None:
            r = self.http.post(self.url + "/auth/token", json={"api_key": self.api_key},
                               timeout=10)
            assert r.status_code == 200, r.text
            self._token = r.json()["access_token"]
        return self._token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url + path, headers=self.headers(), timeout=20, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.http.post(self.url + path, headers=self.headers(), timeout=20, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.http.delete(self.url + path, headers=self.headers(), timeout=20, **kw)

    def allocate(self) -> str:
        r = self.post("/sessions/request", json={})
        assert r.status_code == 200, r.text
        session_id: str = r.json()["session_id"]
        return session_id


def play_stream(server: LocalOdyssey, session_id: str, stream_id: str, *, frames: int,
                interactions: list[tuple[int, str]] = (),  # type: ignore[assignment]
                prompt: str = "a red ball", image: bytes | None = None,
                end: bool = True) -> None:
    """Drive the StreamSink on the server loop exactly as the real-time half does."""
    sink = server.context.sink
    width, height = server.context.frame_size(False)
    server.call(lambda: sink.stream_started(
        stream_id=stream_id, session_id=session_id, width=width, height=height,
        fps=server.config.fps, prompt=prompt, applied_prompt=prompt + " (applied)",
        portrait=False, image=image, broadcast=False))
    for frame, text in interactions:
        server.call(sink.stream_interacted, stream_id, frame, text)
    if end:
        server.call(sink.stream_ended, stream_id, frames)


def decode_video(data: bytes) -> tuple[int, int, int]:
    """(frame count, width, height) of an MP4 held in memory."""
    import av

    count = 0
    width = height = 0
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            count += 1
            width, height = frame.width, frame.height
    return count, width, height


def decode_stamps(data: bytes) -> list[int | None]:
    """Frame numbers stamped into each decoded frame of an MP4 (None: unreadable)."""
    import av

    from odyssey_sync.local.render.stamp import decode_stamp_raw

    out: list[int | None] = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            raw = decode_stamp_raw(frame.to_ndarray(format="rgb24"))
            out.append(None if raw is None else raw[0])
    return out


def png_data_url(size: tuple[int, int] = (32, 32)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def script(end_ms: int = 1000, *prompts: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = [{"timestamp_ms": 0, "start": {"prompt": "a cat"}}]
    step = end_ms // (len(prompts) + 1)
    for i, text in enumerate(prompts, start=1):
        entries.append({"timestamp_ms": step * i, "interact": {"prompt": text}})
    entries.append({"timestamp_ms": end_ms, "end": {}})
    return entries


async def open_peer(server: LocalOdyssey, api: Api) -> tuple[Any, str]:
    """Allocate a session as ``api``'s key and connect a plain aiortc test peer to it.

    Returns ``(TestPeer, session_id)``; the caller closes the peer. Blocking HTTP
    calls happen here on the loop thread of the caller's ``asyncio.run`` (fine
    for tests: nothing else runs on it yet).
    """
    from tests.local.rtc_peer import TestPeer

    session_id = api.allocate()
    token = api.post("/sessions/token", json={"session_id": session_id}).json()
    peer = TestPeer()
    try:
        await peer.connect(server.url, session_id, token["session_token"],
                           signaling_url=server.context.signaling_url)
    except BaseException:
        await peer.close()
        raise
    return peer, session_id


def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition()`` every 20 ms until true; AssertionError naming ``what`` after
    ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.02)
