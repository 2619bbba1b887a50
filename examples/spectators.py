"""Broadcast a stream and watch it with several spectators; print what they see.

The owner starts a stream with ``broadcast=True``; once ``on_broadcast_ready``
delivers the WHEP URL and spectator token, N spectators join with
``connect_to_stream`` (each on its own thread, as separate viewers would be)
while the owner keeps interacting. Against the embedded local server every
frame carries a machine-readable stamp, so each spectator also reports the
send → callback latency.

    python examples/spectators.py --viewers 3 --seconds 10
    python examples/spectators.py --size 1280x704 --fps 30      # full size

Runs against the embedded local server (the stamps, and so the latency
figures, exist only there).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from odyssey_sync import Odyssey, connect_to_stream
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.local.render.stamp import decode_stamp
from odyssey_sync.types import BroadcastInfo


def watch(name: str, info: BroadcastInfo, seconds: float, report: dict[str, str]) -> None:
    """One spectator: join, collect stamp latencies for ``seconds``, leave."""
    latencies: list[float] = []
    frames: list[int] = []

    def on_frame(frame: object) -> None:
        stamp = decode_stamp(frame.data, now=time.monotonic())  # type: ignore[attr-defined]
        if stamp is not None:
            latencies.append((time.monotonic() - stamp.sent_at) * 1000)
            frames.append(stamp.frame)

    started = time.monotonic()
    with connect_to_stream(info.webrtc_url, info.spectator_token, on_video_frame=on_frame) as sp:
        joined_ms = (time.monotonic() - started) * 1000
        first = sp.get_latest_frame(timeout=10)
        first_ms = (time.monotonic() - started) * 1000
        first.release()
        time.sleep(seconds)
        stats = sp.stats
    in_order = frames == sorted(set(frames))
    lat = sorted(latencies) or [0.0]
    report[name] = (
        f"joined {joined_ms:.0f} ms, first frame {first_ms:.0f} ms, {stats.received} frames "
        f"({stats.fps:.1f} fps, in order: {in_order}), latency p50 "
        f"{statistics.median(lat):.1f} ms p99 {lat[int(0.99 * (len(lat) - 1))]:.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--size", default="320x176", help="WIDTHxHEIGHT of the local server")
    parser.add_argument("--fps", type=float, default=15.0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    ready = threading.Event()
    infos: list[BroadcastInfo] = []

    def on_broadcast_ready(info: BroadcastInfo) -> None:
        infos.append(info)
        ready.set()

    with LocalOdyssey(size=(width, height), fps=args.fps) as server, Odyssey(
        server.api_key, api_url=server.url
    ) as owner:
        owner.connect(on_broadcast_ready=on_broadcast_ready)
        stream_id = owner.start_stream("A harbour at dawn", portrait=False, broadcast=True)
        if not ready.wait(15):
            raise SystemExit("no broadcast_ready within 15 s")
        print(f"stream {stream_id} broadcasting at {infos[0].webrtc_url}")

        report: dict[str, str] = {}
        viewers = [
            threading.Thread(target=watch, args=(f"viewer-{i}", infos[0], args.seconds, report),
                             name=f"viewer-{i}")
            for i in range(args.viewers)
        ]
        for viewer in viewers:
            viewer.start()
        for prompt in ("A boat leaves the harbour", "Gulls circle overhead", "The sun rises"):
            time.sleep(args.seconds / 4)
            print(f"owner: {owner.interact(prompt)}")
        for viewer in viewers:
            viewer.join()
        owner.end_stream()
    for name in sorted(report):
        print(f"{name}: {report[name]}")
    return 0 if len(report) == args.viewers else 1


if __name__ == "__main__":
    raise SystemExit(main())
