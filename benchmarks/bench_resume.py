"""Resume benchmark: the seam at the service's stream limit, and recovery from faults.

The local server runs in its own process (640×352 @ 20 fps by default) with a
short stream limit. In this process, one after the other:

* **planned seams, ours**: ``Odyssey(resume=True)`` pulls frames with
  ``frames()`` across ``--seams`` stream-limit handovers; the seam is the
  time between the last frame of stream k and the first frame of stream k+1
  as the consumer sees them (``VideoFrame.received_at``), and the frames lost
  in it (whole frame intervals missing beyond the first);
* **planned seams, the documented pattern**: the same client with
  ``resume=False``, doing what the service's documentation tells users to do
  (catch ``session_timeout`` in ``on_stream_error``, then ``connect()`` and
  ``start_stream()`` again), measured the same way;
* **unplanned recovery, ours**: ``--injections`` of each fault kind (the
  signaling socket dropped, the video stopped) through the server's fault
  switches over HTTP; recovery is the time from the injection to the first
  frame of the next stream.

Usage::

    python benchmarks/bench_resume.py [--seams 10] [--injections 10] [--stream-limit 4]
                                      [--markdown benchmarks/README.md]

It prints a table (median, p90, p99, max); ``--markdown`` also writes it
there. No assertions: it reports numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from odyssey_sync import ConnectionStatus, Odyssey  # noqa: E402

_SERVER = """
import json, sys, tempfile
from odyssey_sync.local import LocalOdyssey
w, h = map(int, sys.argv[1].split("x"))
srv = LocalOdyssey(size=(w, h), fps=float(sys.argv[2]), stream_limit=float(sys.argv[3]),
                   capacity=4, max_concurrent_per_key=4, recordings=False,
                   data_dir=tempfile.mkdtemp(prefix="bench-resume-"))
srv.start()
print(json.dumps({"url": srv.url, "api_key": srv.api_key}), flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
srv.stop()
"""


@contextmanager
def server_process(size: str, fps: float, stream_limit: float) -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, size, str(fps), str(stream_limit)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the server process did not start")
        yield json.loads(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def set_faults(srv: dict[str, str], **faults: Any) -> None:
    r = requests.post(srv["url"] + "/_admin/faults", json=faults, timeout=5,
                      headers={"Authorization": f"Bearer {srv['api_key']}"})
    r.raise_for_status()


@dataclass
class Seams:
    gaps_ms: list[float] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)


def _record_seam(seams: Seams, gap: float, interval: float) -> None:
    seams.gaps_ms.append(gap * 1000.0)
    seams.lost.append(max(0, round(gap / interval) - 1))


def planned_ours(srv: dict[str, str], n: int, limit: float, fps: float) -> Seams:
    seams = Seams()
    with Odyssey(srv["api_key"], api_url=srv["url"], resume=True, stream_limit=limit,
                 connection_limit=None) as client:
        client.connect()
        client.start_stream("a long walk", portrait=False)
        previous: tuple[str | None, float] | None = None
        for frame in client.frames(timeout=10.0):
            if previous is not None and frame.stream_id != previous[0]:
                _record_seam(seams, frame.received_at - previous[1], 1.0 / fps)
                if len(seams.gaps_ms) >= n:
                    break
            previous = (frame.stream_id, frame.received_at)
    return seams


def planned_documented(srv: dict[str, str], n: int, fps: float) -> Seams:
    """The service's documented pattern, by the same client without resume."""
    seams = Seams()
    timed_out = threading.Event()

    def on_stream_error(reason: str, message: str) -> None:
        if reason == "session_timeout":
            timed_out.set()

    with Odyssey(srv["api_key"], api_url=srv["url"]) as client:
        last_frame_at: float | None = None
        while len(seams.gaps_ms) < n:
            timed_out.clear()
            if not client.is_connected:
                client.connect(on_stream_error=on_stream_error)
            client.start_stream("a long walk", portrait=False)
            first = True
            for frame in client.frames(timeout=10.0):
                if first and last_frame_at is not None:
                    _record_seam(seams, frame.received_at - last_frame_at, 1.0 / fps)
                first = False
                last_frame_at = frame.received_at
            # frames() ended: the service closed the connection after the lease expired
            deadline = time.monotonic() + 10.0
            while client.current_status is ConnectionStatus.CONNECTED and (
                    time.monotonic() < deadline):
                time.sleep(0.01)
    return seams


def unplanned_ours(srv: dict[str, str], n: int, fault: str) -> list[float]:
    recoveries: list[float] = []
    reconnecting = threading.Event()

    def on_status(status: ConnectionStatus, message: str | None) -> None:
        if status is ConnectionStatus.RECONNECTING:
            reconnecting.set()

    with Odyssey(srv["api_key"], api_url=srv["url"], resume=True, stream_limit=None,
                 connection_limit=None, stall_timeout=0.3) as client:
        client.connect(on_status_change=on_status)
        client.start_stream("weathering faults", portrait=False)
        client.get_latest_frame(timeout=10).release()
        for _ in range(n):
            before = client.stream_ids[-1]
            reconnecting.clear()
            injected = time.monotonic()
            if fault == "signaling dropped":
                set_faults(srv, drop_signaling_after=0.0)
                reconnecting.wait(10)
                set_faults(srv, drop_signaling_after=None)
            else:
                set_faults(srv, stop_video=True)
                reconnecting.wait(10)
                set_faults(srv, stop_video=False)
            for frame in client.frames(timeout=30.0):
                if frame.stream_id != before:
                    # for a stall, the fault is only detectable after stall_timeout
                    recoveries.append((frame.received_at - injected) * 1000.0)
                    break
            time.sleep(0.5)
    return recoveries


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _row(name: str, values: list[float], extra: str = "") -> str:
    if not values:
        return f"| {name} | – | – | – | – | {extra} |"
    return (f"| {name} | {statistics.median(values):.0f} | {_pct(values, 90):.0f} | "
            f"{_pct(values, 99):.0f} | {max(values):.0f} | {extra} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seams", type=int, default=10)
    parser.add_argument("--injections", type=int, default=10)
    parser.add_argument("--stream-limit", type=float, default=4.0)
    parser.add_argument("--size", default="640x352")
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)

    with server_process(args.size, args.fps, args.stream_limit) as srv:
        ours = planned_ours(srv, args.seams, args.stream_limit, args.fps)
        documented = planned_documented(srv, args.seams, args.fps)
        faults = {kind: unplanned_ours(srv, args.injections, kind)
                  for kind in ("signaling dropped", "video stopped")}

    interval = 1000.0 / args.fps
    lines = [
        f"Setup: local server subprocess {args.size}@{args.fps:g}, stream limit "
        f"{args.stream_limit:g} s, {args.seams} seams per client, {args.injections} "
        "injections per fault kind, same machine and run.",
        "",
        "| what (ms) | p50 | p90 | p99 | max | notes |",
        "|---|---|---|---|---|---|",
        _row("planned seam, ours (resume=True)", ours.gaps_ms,
             f"frames lost: {sum(ours.lost)} in {len(ours.lost)} seams"),
        _row("planned seam, documented pattern", documented.gaps_ms,
             f"frames lost: {sum(documented.lost)} in {len(documented.lost)} seams"),
        *(_row(f"unplanned recovery: {kind}", values,
               "stall detection (0.3 s) included" if kind == "video stopped" else "")
          for kind, values in faults.items()),
        "",
    ]
    if ours.gaps_ms and documented.gaps_ms:
        p99 = _pct(ours.gaps_ms, 99)
        lines.append(
            f"- planned seam p99 ours = {p99:.0f} ms = {p99 / interval:.2f} frame intervals "
            f"(goal ≤ 2); documented-pattern p50 ÷ ours p50 = "
            f"{statistics.median(documented.gaps_ms) / statistics.median(ours.gaps_ms):.1f}× "
            "(goal ≥ 10×)")
    for kind, values in faults.items():
        if values:
            lines.append(f"- {kind}: recovery p50 {statistics.median(values):.0f} ms "
                         "(goal ≤ 1000 ms)")
    table = "\n".join(lines)
    print(table)
    if args.markdown is not None:
        _write_section(args.markdown, table)
    return 0


def _write_section(path: Path, table: str) -> None:
    begin, end = "<!-- bench_resume:begin -->", "<!-- bench_resume:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{table}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n## Resume: `benchmarks/bench_resume.py`\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
