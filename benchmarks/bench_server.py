"""Local server cost per streamed frame: CPU ms/frame, achieved fps, stamp latency.

Runs ``python -m odyssey_sync.local`` (= ``odyssey-sync serve``) in a subprocess (so its CPU time
is measured apart from the receiver's), allocates a session over the HTTP API
and receives the stream with the plain aiortc test peer of tests/local/rtc_peer.py,
decoding every frame's stamp. For each configuration it prints one row:

* server CPU ms per streamed frame (user + system time of the server process
  from /proc, over the measuring window, divided by the frames the peer got);
* achieved fps at the receiver;
* stamp latency p50 / p95 (server hand-off to the encoder → decoded at the
  peer, same machine, same monotonic clock);
* frames whose stamp did not decode.

Usage: ``python benchmarks/bench_server.py [--seconds 20] [--codec vp8|h264]
[--sizes 1280x704,320x176]``. Linux only (/proc). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.local.rtc_peer import TestPeer  # noqa: E402

API_KEY = "bench-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


async def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url + "/sig/config") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            await asyncio.sleep(0.1)


async def _measure(url: str, pid: int, seconds: float) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/auth/token", json={"api_key": API_KEY}) as resp:
            bearer = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
        async with http.post(url + "/sessions/request", json={}, headers=bearer) as resp:
            allocation = await resp.json()
        async with http.post(url + "/sessions/token", headers=bearer,
                             json={"session_id": allocation["session_id"]}) as resp:
            token = (await resp.json())["session_token"]
    peer = TestPeer()
    try:
        await peer.connect(url, allocation["session_id"], token,
                           signaling_url=allocation["signalling_url"])
        await peer.send({"type": "interactive_stream_start", "prompt": "benchmark",
                         "portrait": False})
        await peer.expect("stream_started")
        await asyncio.sleep(2.0)  # warm-up: encoder start, first key frames
        n0, cpu0, t0 = len(peer.stamps), _cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        n1, cpu1, t1 = len(peer.stamps), _cpu_seconds(pid), time.monotonic()
        window = peer.stamps[n0:n1]
        await peer.send({"type": "interactive_stream_end"})
        await peer.expect("stream_ended")
    finally:
        await peer.close()
    frames = n1 - n0
    latencies = sorted((now - s.sent_at) * 1000 for s, now in window if s is not None)
    size = f"{peer.frame_size[0]}x{peer.frame_size[1]}" if peer.frame_size else "?"
    return {
        "size": size,
        "frames": frames,
        "fps": frames / (t1 - t0),
        "cpu_ms_per_frame": (cpu1 - cpu0) * 1000 / max(frames, 1),
        "cpu_percent": (cpu1 - cpu0) / (t1 - t0) * 100,
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": latencies[int(len(latencies) * 0.95)] if latencies else float("nan"),
        "undecoded": sum(1 for s, _ in window if s is None),
    }


def bench(size: str, codec: str, seconds: float) -> dict[str, Any]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        cmd = [sys.executable, "-m", "odyssey_sync.local", "--port", str(port),
               "--api-key", API_KEY, "--data-dir", data_dir, "--size", size,
               "--fps", "30", "--codec", codec]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            asyncio.run(_wait_ready(url, 30.0))
            result = asyncio.run(_measure(url, proc.pid, seconds))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    result["codec"] = codec
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--codec", choices=["vp8", "h264"], action="append")
    parser.add_argument("--sizes", default="1280x704,320x176")
    args = parser.parse_args()
    codecs = args.codec or ["vp8"]
    print(f"{'size':>9} {'codec':>5} {'frames':>6} {'fps':>5} {'CPU ms/frame':>12} "
          f"{'CPU %':>6} {'lat p50':>8} {'lat p95':>8} {'undecoded':>9}")
    for codec in codecs:
        for size in args.sizes.split(","):
            r = bench(size, codec, args.seconds)
            print(f"{r['size']:>9} {r['codec']:>5} {r['frames']:>6} {r['fps']:>5.1f} "
                  f"{r['cpu_ms_per_frame']:>12.2f} {r['cpu_percent']:>6.1f} "
                  f"{r['p50']:>6.1f}ms {r['p95']:>6.1f}ms {r['undecoded']:>9}", flush=True)


if __name__ == "__main__":
    main()
