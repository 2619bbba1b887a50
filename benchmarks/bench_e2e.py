"""End-to-end benchmark: odyssey_sync's client vs an official-style aiortc client.

The local server runs in its own process (``python -m odyssey_sync.local``) at
1280×704@30 by default. In this process, one after the other, four runs of
``--seconds`` each (after a 1 s warm-up):

* **ours**: :class:`odyssey_sync.Odyssey` with an ``on_video_frame`` callback,
  plus a thread pulling frames with ``frames()``;
* **baseline**: plain aiortc written the way the official Python client does
  it — ``frame.to_ndarray(format="rgb24")`` and the user callback *on the
  event loop* — with the same REST/signaling steps;

each once with a trivial callback and once with a callback that takes 50 ms.

Measured per run: received fps; client-process CPU per received frame
(``time.process_time``, all threads of this process; the server is elsewhere);
frame-path overhead p50/p99 from "decoded frame in hand" (``track.recv()``
returned) to the callback starting, and to the frame being available to
``get_latest_frame`` (ours: published in the ring; baseline: after
``to_ndarray``); and stamp latency (server send → callback start, and →
pulled frame for ours) decoded from the pixels. Timing in ours is taken by
wrapping ``FrameRing.write`` (a few µs, included in the figures).

Usage::

    python benchmarks/bench_e2e.py [--seconds 60] [--size 1280x704] [--fps 30]
                                   [--codec vp8] [--markdown benchmarks/README.md]

It prints a table; ``--markdown`` also writes it there. No assertions: it
reports numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from odyssey_sync import _frames  # noqa: E402
from odyssey_sync.client import Odyssey  # noqa: E402
from odyssey_sync.local.render.stamp import decode_stamp  # noqa: E402

BENCH_KEY = "ody_bench_local_key_0123456789"


# ----------------------------------------------------------------- results
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass
class Run:
    name: str
    seconds: float = 0.0
    frames: int = 0
    cpu_s: float = 0.0
    cb_overhead_ms: list[float] = field(default_factory=list)
    pull_overhead_ms: list[float] = field(default_factory=list)
    cb_latency_ms: list[float] = field(default_factory=list)
    pull_latency_ms: list[float] = field(default_factory=list)
    callbacks: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1000 * self.cpu_s / self.frames if self.frames else float("nan")


class Window:
    """Only samples taken between ``open`` and ``close`` count (warm-up excluded)."""

    def __init__(self) -> None:
        self.active = False
        self.frames = 0
        self.lock = threading.Lock()


# ------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    size: str, fps: float, codec: str, data_dir: Path
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "odyssey_sync.local", "--port", str(port), "--size", size,
         "--fps", str(fps), "--codec", codec, "--capacity", "2", "--api-key", BENCH_KEY,
         "--data-dir", str(data_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "listening on" in line:
            return proc, line.rsplit(" ", 1)[-1].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("local server did not start")


# -------------------------------------------------------------------- ours
def run_ours(url: str, seconds: float, work_s: float, low_latency: bool = True) -> Run:
    run = Run(f"ours{' +50ms cb' if work_s else ''}{'' if low_latency else ' (low_latency off)'}")
    window = Window()
    decoded_at: dict[int, float] = {}
    original_write = _frames.FrameRing.write

    def timed_write(self: Any, frame: Any, *args: Any, **kwargs: Any) -> int | None:
        t = time.monotonic()
        seq = original_write(self, frame, *args, **kwargs)
        if seq is not None and window.active:
            decoded_at[seq] = t
            run.pull_overhead_ms.append((time.monotonic() - t) * 1000)
        if window.active:
            window.frames += 1
        return seq

    def on_frame(frame: Any) -> None:
        now = time.monotonic()
        if window.active:
            t_dec = decoded_at.get(frame.seq)
            if t_dec is not None:
                run.cb_overhead_ms.append((now - t_dec) * 1000)
            stamp = decode_stamp(frame.data, now=now)
            if stamp is not None:
                run.cb_latency_ms.append(stamp.latency_ms(now))
            run.callbacks += 1
        if work_s:
            time.sleep(work_s)

    _frames.FrameRing.write = timed_write  # type: ignore[method-assign]
    try:
        with Odyssey(BENCH_KEY, api_url=url, low_latency=low_latency) as client:
            client.connect(on_video_frame=on_frame)
            client.start_stream("benchmark", portrait=False)
            stop = threading.Event()

            def puller() -> None:
                for frame in client.frames(timeout=5):
                    now = time.monotonic()
                    if window.active:
                        stamp = decode_stamp(frame.data, now=now)
                        if stamp is not None:
                            run.pull_latency_ms.append(stamp.latency_ms(now))
                    if stop.is_set():
                        return

            pull_thread = threading.Thread(target=puller, name="bench-puller", daemon=True)
            pull_thread.start()
            time.sleep(1.0)
            cpu0, t0 = time.process_time(), time.monotonic()
            window.active = True
            time.sleep(seconds)
            window.active = False
            run.cpu_s, run.seconds = time.process_time() - cpu0, time.monotonic() - t0
            run.frames = window.frames
            stop.set()
            client.end_stream()
        pull_thread.join(5)
    finally:
        _frames.FrameRing.write = original_write  # type: ignore[method-assign]
    return run


# ---------------------------------------------------------------- baseline
def run_baseline(url: str, seconds: float, work_s: float) -> Run:
    """The official client's frame path: to_ndarray + callback on the event loop."""
    run = Run(f"baseline{' +50ms cb' if work_s else ''}")
    return asyncio.run(_baseline(url, seconds, work_s, run))


async def _baseline(url: str, seconds: float, work_s: float, run: Run) -> Run:
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    http = requests.Session()
    token = http.post(f"{url}/auth/token", json={"api_key": BENCH_KEY}, timeout=10).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    alloc = http.post(f"{url}/sessions/request", json={}, headers=auth, timeout=10).json()
    sid = alloc["session_id"]
    sig = alloc["signalling_url"].rstrip("/")
    sig_token = http.post(f"{url}/sessions/token", json={"session_id": sid}, headers=auth,
                          timeout=10).json()["session_token"]
    http.close()
    window = Window()
    ready = asyncio.Event()
    channels: dict[str, Any] = {}
    replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def callback(data: Any, now: float) -> None:
        stamp = decode_stamp(data, now=now)
        if window.active and stamp is not None:
            run.cb_latency_ms.append(stamp.latency_ms(now))
        if work_s:
            time.sleep(work_s)  # the user's work, on the event loop (as in the official client)

    async def read_video(track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            t_dec = time.monotonic()
            data = frame.to_ndarray(format="rgb24")
            now = time.monotonic()
            if window.active:
                window.frames += 1
                run.pull_overhead_ms.append((now - t_dec) * 1000)
                run.cb_overhead_ms.append((now - t_dec) * 1000)
                run.callbacks += 1
            callback(data, now)

    # Same ICE setting as ours (no STUN) so the comparison is about the frame path.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tasks: list[asyncio.Task[None]] = []

    @pc.on("track")
    def on_track(track: Any) -> None:
        if track.kind == "video":
            tasks.append(asyncio.ensure_future(read_video(track)))

    @pc.on("datachannel")
    def on_channel(channel: Any) -> None:
        channels[channel.label] = channel
        if channel.label == "streamerToClient":
            channel.on("message", lambda m: replies.put_nowait(json.loads(m)))
        if channel.label == "clientToStreamer":
            channel.on("open", ready.set)
            if channel.readyState == "open":
                ready.set()

    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"{sig}/client/{sid}?token={sig_token}", max_msg_size=64 * 1024 * 1024
    ) as ws:
        offer = await ws.receive_json()
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await ws.send_json({"type": "answer", "sdp": pc.localDescription.sdp})
        async def read_signaling() -> None:
            # Reading is what answers the server's pings (aiohttp autoping).
            async for _msg in ws:
                pass

        async def keepalive() -> None:
            while True:
                await asyncio.sleep(10)
                await ws.send_json({"type": "keepalive"})

        side_tasks = [asyncio.ensure_future(read_signaling()), asyncio.ensure_future(keepalive())]
        await asyncio.wait_for(ready.wait(), 30)
        channels["clientToStreamer"].send(json.dumps(
            {"type": "interactive_stream_start", "prompt": "benchmark", "portrait": False,
             "input_image_base64": None, "broadcast": False}))
        while (await asyncio.wait_for(replies.get(), 30))["type"] != "stream_started":
            pass
        await asyncio.sleep(1.0)
        cpu0, t0 = time.process_time(), time.monotonic()
        window.active = True
        await asyncio.sleep(seconds)
        window.active = False
        run.cpu_s, run.seconds = time.process_time() - cpu0, time.monotonic() - t0
        run.frames = window.frames
        channels["clientToStreamer"].send(json.dumps({"type": "interactive_stream_end"}))
        await ws.send_json({"type": "client_disconnecting"})
        for side in side_tasks:
            side.cancel()
    for task in tasks:
        task.cancel()
    await pc.close()
    return run


# ------------------------------------------------------------------- table
def table(runs: list[Run], fps: float, args: argparse.Namespace) -> str:
    by = {r.name: r for r in runs}
    head = (
        f"Setup: local server subprocess {args.size}@{fps:g} ({args.codec}), {args.seconds:g} s "
        f"per run after 1 s warm-up, 2 shared CPU cores, Python {sys.version.split()[0]}, "
        f"converter: {_frames.FrameRing().converter_name}, "
        f"GIL switch interval {sys.getswitchinterval() * 1000:g} ms.\n\n"
        "| run | fps recv | CPU ms/frame | decoded→callback p50 / p99 ms | "
        "decoded→pullable p50 / p99 ms | stamp→callback p50 / p99 ms | "
        "stamp→pulled p50 / p99 ms |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in runs:
        rows.append(
            f"| {r.name} | {r.fps:.1f} | {r.cpu_ms_per_frame:.2f} | "
            f"{pct(r.cb_overhead_ms, 50):.2f} / {pct(r.cb_overhead_ms, 99):.2f} | "
            f"{pct(r.pull_overhead_ms, 50):.2f} / {pct(r.pull_overhead_ms, 99):.2f} | "
            f"{pct(r.cb_latency_ms, 50):.1f} / {pct(r.cb_latency_ms, 99):.1f} | "
            + (f"{pct(r.pull_latency_ms, 50):.1f} / {pct(r.pull_latency_ms, 99):.1f} |"
               if r.pull_latency_ms else "n/a |")
        )
    ratios = []
    for suffix in ("", " +50ms cb"):
        ours, base = by.get(f"ours{suffix}"), by.get(f"baseline{suffix}")
        if ours and base:
            ratios.append(
                f"- {('with a 50 ms callback' if suffix else 'trivial callback')}: "
                f"CPU/frame ours÷baseline = {ours.cpu_ms_per_frame / base.cpu_ms_per_frame:.2f}; "
                f"fps {ours.fps:.1f} vs {base.fps:.1f} ({100 * ours.fps / fps:.0f}% vs "
                f"{100 * base.fps / fps:.0f}% of source); stamp→callback p50 "
                f"{pct(ours.cb_latency_ms, 50):.1f} vs {pct(base.cb_latency_ms, 50):.1f} ms"
            )
    plain, stock, base = by.get("ours"), by.get("ours (low_latency off)"), by.get("baseline")
    if plain and base:
        ours50, ours99 = pct(plain.cb_latency_ms, 50), pct(plain.cb_latency_ms, 99)
        base50 = pct(base.cb_latency_ms, 50)
        ratios.append(
            f"- low-latency receive path: stamp→callback p50 ours {ours50:.1f} ms vs baseline "
            f"{base50:.1f} ms ({base50 - ours50:.1f} ms lower; goal ≥ 25); ours p99 "
            f"{ours99:.1f} ms vs baseline p50 {base50:.1f} ms (goal: not higher)"
        )
    if plain and stock:
        ratios.append(
            "- low_latency on vs off (same client): stamp→callback p50 "
            f"{pct(plain.cb_latency_ms, 50):.1f} vs {pct(stock.cb_latency_ms, 50):.1f} ms; "
            f"fps {plain.fps:.1f} vs {stock.fps:.1f}; CPU ms/frame "
            f"{plain.cpu_ms_per_frame:.2f} vs {stock.cpu_ms_per_frame:.2f}"
        )
    slow = by.get("ours +50ms cb")
    if plain and slow and plain.pull_latency_ms and slow.pull_latency_ms:
        ratios.append(
            "- ours, pulled-frame latency p99 with vs without the 50 ms callback: "
            f"{pct(slow.pull_latency_ms, 99):.1f} vs {pct(plain.pull_latency_ms, 99):.1f} ms"
        )
    return head + "\n".join(rows) + "\n\n" + "\n".join(ratios) + "\n"


BEGIN, END = "<!-- bench_e2e:begin -->", "<!-- bench_e2e:end -->"


def write_markdown(path: Path, text: str, argv: list[str] | None) -> None:
    """Replace the table between the bench_e2e markers (or append a section)."""
    block = (
        f"{BEGIN}\nCommand: `python benchmarks/bench_e2e.py {' '.join(argv or sys.argv[1:])}`"
        f"\n\n{text}{END}"
    )
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n## End to end: `benchmarks/bench_e2e.py`\n\n" + block + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", default="1280x704")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--codec", default="vp8", choices=("vp8", "h264"))
    parser.add_argument("--only", choices=("ours", "baseline"), default=None)
    parser.add_argument("--skip-low-latency-off", action="store_true",
                        help="skip the run of our client with low_latency=False")
    parser.add_argument("--switch-interval", type=float, default=None, metavar="S",
                        help="sys.setswitchinterval for this process (default: Python's 0.005)")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the table into this markdown file")
    args = parser.parse_args(argv)
    import tempfile

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as data_dir:
        proc, url = start_server(args.size, args.fps, args.codec, Path(data_dir))
        try:
            runs: list[Run] = []
            plan: list[tuple[Callable[[str, float, float], Run], float]] = []
            for work in (0.0, 0.05):
                if args.only in (None, "ours"):
                    plan.append((run_ours, work))
                if args.only in (None, "baseline"):
                    plan.append((run_baseline, work))
                if work == 0.0 and args.only in (None, "ours") and not args.skip_low_latency_off:
                    # The same client with the stock aiortc jitter buffer: isolates what
                    # the low-latency receive path (odyssey_sync._jitter) contributes.
                    plan.append((functools.partial(run_ours, low_latency=False), work))
            for fn, work in plan:
                run = fn(url, args.seconds, work)
                print(f"{run.name}: {run.fps:.1f} fps, {run.cpu_s:.3f} s CPU over "
                      f"{run.frames} frames", flush=True)
                runs.append(run)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = table(runs, args.fps, args)
    print()
    print(text)
    if args.markdown is not None:
        write_markdown(args.markdown, text, argv)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
