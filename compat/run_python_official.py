"""Drive the OFFICIAL Odyssey Python client (package ``odyssey``) against odyssey_sync.local.

Not part of the test suite: it needs the official client installed by you
(``pip install git+<odyssey-python repository>`` or a local checkout on
``PYTHONPATH``). Nothing of the official client is shipped here.

Usage::

    python3 compat/run_python_official.py                  # embedded LocalOdyssey (320x176)
    python3 compat/run_python_official.py --url http://127.0.0.1:8787 --key KEY
    python3 compat/run_python_official.py --json results.json

Every step is bounded by a timeout (the official client has none on start/interact/end,
PROTOCOL §15.1) and recorded as PASS/FAIL with details; the exit code is the number of
failed steps (0 = all passed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

STEP_TIMEOUT = 30.0


@dataclass
class Frames:
    """Frames seen by one callback: count, sizes, decoded stamps."""

    count: int = 0
    stamped: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    last_stamp_frame: int | None = None

    def on_frame(self, frame: Any) -> None:
        from odyssey_sync.local.render.stamp import decode_stamp

        self.count += 1
        self.sizes.add((int(frame.width), int(frame.height)))
        stamp = decode_stamp(frame.data)
        if stamp is not None:
            self.stamped += 1
            self.last_stamp_frame = stamp.frame

    def summary(self) -> str:
        sizes = ",".join(f"{w}x{h}" for w, h in sorted(self.sizes))
        return f"{self.count} frames ({self.stamped} with a valid stamp; sizes {sizes or '-'})"


class Report:
    """Collects step results and prints them as a table."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    async def step(
        self,
        name: str,
        coro: Awaitable[T],
        timeout: float = STEP_TIMEOUT,
        detail: Callable[[T], str] | None = None,
    ) -> T | None:
        t0 = time.monotonic()
        try:
            value = await asyncio.wait_for(coro, timeout)
        except Exception as exc:  # the point is to record any failure, typed or not
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.rows.append({"step": name, "result": "FAIL", "detail": text[:300]})
            print(f"FAIL  {name}: {text[:300]}", flush=True)
            return None
        ms = (time.monotonic() - t0) * 1000
        info = detail(value) if detail else ""
        self.rows.append(
            {"step": name, "result": "PASS", "detail": f"{info} ({ms:.0f} ms)".strip()}
        )
        print(f"PASS  {name}: {info} ({ms:.0f} ms)", flush=True)
        return value

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append({"step": name, "result": "PASS" if ok else "FAIL", "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    @property
    def failures(self) -> int:
        return sum(1 for r in self.rows if r["result"] != "PASS")


async def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(interval)
    return pred()


async def run(url: str, key: str) -> Report:
    # The official client is installed by the user, never vendored here.
    import odyssey  # type: ignore[import-not-found]
    from odyssey import (  # type: ignore[import-not-found]
        ClientCredentials,
        Odyssey,
        SimulationJobStatus,
        connect_to_stream,
    )

    rep = Report()
    frames = Frames()
    events: list[str] = []
    client = Odyssey(api_key=key, api_url=url)

    ok = await rep.step(
        "connect",
        client.connect(
            on_video_frame=frames.on_frame,
            on_stream_started=lambda sid: events.append(f"started:{sid}"),
            on_stream_ended=lambda: events.append("ended"),
            on_interact_acknowledged=lambda p: events.append(f"ack:{p}"),
            on_stream_error=lambda r, m: events.append(f"error:{r}"),
        ),
        detail=lambda _: f"status={client.current_status.value}",
    )
    if ok is None and not client.is_connected:
        await client.disconnect()
        return rep

    sid1 = await rep.step(
        "start_stream (text, data channel)",
        client.start_stream("A lighthouse at dusk", portrait=False),
        detail=lambda s: f"stream_id={s} applied_prompt={client.last_applied_prompt!r}",
    )
    for i, prompt in enumerate(("The lamp turns on", "A ship passes by"), 1):
        await rep.step(f"interact #{i}", client.interact(prompt), detail=lambda p: f"ack={p!r}")
    await asyncio.sleep(1.0)
    await rep.step("end_stream", client.end_stream())
    rep.record("frames during text stream", frames.stamped > 0, frames.summary())

    # Image-to-video: the official client sends this start over the WebSocket (§6.3).
    img = np.zeros((360, 640, 3), dtype=np.uint8)
    img[:, :320] = (200, 40, 40)
    img[:, 320:] = (40, 40, 200)
    before = frames.count
    sid2 = await rep.step(
        "start_stream (image, via WebSocket)",
        client.start_stream("Animate this flag", portrait=True, image=img),
        detail=lambda s: f"stream_id={s}",
    )
    await asyncio.sleep(1.0)
    await rep.step("end_stream (image stream)", client.end_stream())
    rep.record(
        "frames during image stream",
        frames.count > before,
        f"{frames.count - before} new frames; sizes {sorted(frames.sizes)}",
    )

    for sid in (sid1, sid2):
        if sid:
            rec: Any = None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    rec = await client.get_recording(sid)
                    if rec.video_url:
                        break
                except ValueError:
                    pass  # 404 until the recording is finalised
                await asyncio.sleep(0.5)
            rep.record(
                f"get_recording({sid[:12]}…)",
                bool(rec and rec.video_url),
                f"frame_count={getattr(rec, 'frame_count', None)} "
                f"duration={getattr(rec, 'duration_seconds', None)}",
            )
    await rep.step(
        "list_stream_recordings",
        client.list_stream_recordings(limit=10),
        detail=lambda r: f"total={r.total} returned={len(r.recordings)}",
    )

    # Simulations (no connection needed).
    script = [
        {"timestamp_ms": 0, "start": {"prompt": "A cat sleeping"}},
        {"timestamp_ms": 500, "interact": {"prompt": "The cat wakes up"}},
        {"timestamp_ms": 1000, "end": {}},
    ]
    job = await rep.step(
        "simulate",
        client.simulate(script=script, portrait=False),
        detail=lambda j: f"job_id={j.job_id} status={j.status.value}",
    )
    if job is not None:

        async def until_done() -> Any:
            while True:
                st = await client.get_simulate_status(job.job_id)
                if st.status in (
                    SimulationJobStatus.COMPLETED,
                    SimulationJobStatus.FAILED,
                    SimulationJobStatus.CANCELLED,
                ):
                    return st
                await asyncio.sleep(0.3)

        st = await rep.step(
            "get_simulate_status until terminal",
            until_done(),
            timeout=60,
            detail=lambda s: (
                f"status={s.status.value} streams={len(s.streams)} "
                f"video_url={'yes' if s.streams and s.streams[0].video_url else 'no'}"
            ),
        )
        if st is not None and st.status != SimulationJobStatus.COMPLETED:
            rep.record(
                "simulation completed", False, f"ended {st.status.value}: {st.error_message}"
            )
    await rep.step(
        "list_simulations",
        client.list_simulations(limit=5),
        detail=lambda r: f"total={r.total} returned={len(r.jobs)}",
    )
    job2 = await rep.step("simulate (to cancel)", client.simulate(script=script))
    if job2 is not None:
        await rep.step(
            "cancel_simulation",
            client.cancel_simulation(job2.job_id),
            detail=lambda j: f"status={j.status.value}",
        )

    # Broadcast + spectator (WHEP).
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    # The official client binds handlers at connect time: reconnect with on_broadcast_ready.
    await client.disconnect()
    frames_b = Frames()

    def on_ready(info: Any) -> None:
        if not ready.done():
            ready.set_result(info)

    client = Odyssey(api_key=key, api_url=url)
    await rep.step(
        "connect (broadcast producer)",
        client.connect(on_video_frame=frames_b.on_frame, on_broadcast_ready=on_ready),
    )
    if client.is_connected:
        await rep.step(
            "start_stream (broadcast=True)",
            client.start_stream("A crowd watches fireworks", portrait=False, broadcast=True),
            detail=lambda s: f"stream_id={s}",
        )
        info = await rep.step(
            "on_broadcast_ready",
            asyncio.shield(ready),
            timeout=15,
            detail=lambda i: f"webrtc_url={i.webrtc_url} hls={i.hls_url}",
        )
        if info is not None:
            spec_frames = Frames()
            conn = await rep.step(
                "connect_to_stream (WHEP spectator)",
                connect_to_stream(
                    info.webrtc_url, info.spectator_token, on_video_frame=spec_frames.on_frame
                ),
            )
            if conn is not None:
                got = await wait_until(lambda: spec_frames.stamped >= 10, 15)
                rep.record("spectator frames", got, spec_frames.summary())
                await rep.step("spectator disconnect", conn.disconnect())
        await rep.step("end_stream (broadcast)", client.end_stream())
    await client.disconnect()

    # Two-phase auth: server side mints, a key-less client connects.
    creds = await rep.step(
        "create_client_credentials",
        Odyssey(api_key=key, api_url=url, enable_telemetry=False).create_client_credentials(),
        detail=lambda c: f"session_id={c.session_id} expires_in={c.expires_in}",
    )
    if creds is not None:
        creds = ClientCredentials.from_dict(json.loads(json.dumps(creds.to_dict())))
        frames_c = Frames()
        guest = Odyssey(api_url=url)
        await rep.step(
            "connect_with_credentials",
            guest.connect_with_credentials(creds, on_video_frame=frames_c.on_frame),
        )
        if guest.is_connected:
            await rep.step("start_stream (credentials client)", guest.start_stream("A forest path"))
            await rep.step("interact (credentials client)", guest.interact("It starts to rain"))
            await wait_until(lambda: frames_c.stamped >= 5, 10)
            await rep.step("end_stream (credentials client)", guest.end_stream())
            rep.record("frames (credentials client)", frames_c.stamped > 0, frames_c.summary())
        await rep.step("disconnect (credentials client)", guest.disconnect())

    # Error mapping: a wrong key must surface as OdysseyAuthError (401 from /auth/token).
    bad = Odyssey(api_key="ody_wrong_key_for_compat_check", api_url=url, enable_telemetry=False)
    try:
        await asyncio.wait_for(bad.connect(), STEP_TIMEOUT)
        rep.record("connect with a wrong key", False, "connected?!")
    except odyssey.OdysseyAuthError as exc:
        rep.record("connect with a wrong key", True, f"OdysseyAuthError: {exc}")
    except Exception as exc:
        rep.record("connect with a wrong key", False, f"{type(exc).__name__}: {exc}")
    finally:
        await bad.disconnect()

    rep.record(
        "callbacks",
        any(e.startswith("ack:") for e in events) and "ended" in events,
        f"{len(events)} events: {', '.join(e.split(':')[0] for e in events)}",
    )
    rep.record("official client version", True, getattr(odyssey, "__version__", "?"))
    return rep


async def run_faults(url: str, key: str, faults: Any) -> Report:
    """Error paths through the server's fault switches (embedded server only)."""
    import odyssey  # type: ignore[import-not-found]
    from odyssey import Odyssey

    rep = Report()

    async def expect(name: str, setup: dict[str, Any], action: str, want: tuple[str, ...]) -> None:
        faults.clear()
        faults.set(**setup)
        client = Odyssey(api_key=key, api_url=url, enable_telemetry=False)
        try:
            await asyncio.wait_for(client.connect(), STEP_TIMEOUT)
            if action == "start":
                await asyncio.wait_for(client.start_stream("fault check"), STEP_TIMEOUT)
                await asyncio.wait_for(client.end_stream(), STEP_TIMEOUT)
            got = "ok"
        except Exception as exc:
            got = f"{type(exc).__name__}: {exc}"
        finally:
            faults.clear()
            await client.disconnect()
        rep.record(name, got.split(":")[0] in want, got[:200])

    await expect(
        "503 twice, then allocation (queue polling)", {"refuse_sessions": 2}, "connect", ("ok",)
    )
    await expect(
        "429 MONTHLY_LIMIT_REACHED",
        {
            "usage_error": {
                "error": "MONTHLY_LIMIT_REACHED",
                "message": "Monthly hours used up",
                "action": "Upgrade plan",
                "details": {"used_hours": 10, "limit_hours": 10},
            },
            "usage_error_count": 1,
        },
        "connect",
        ("MonthlyLimitReachedError",),
    )
    await expect(
        "403 on /auth/token (client maps by substring, §15.17)",
        {"deny_auth": 1},
        "connect",
        ("OdysseyAuthError", "OdysseyConnectionError"),
    )
    await expect(
        "WebSocket upgrade refused once (client retries)",
        {"refuse_signaling": 1},
        "connect",
        ("ok",),
    )
    await expect(
        "signaling error streamer_not_available",
        {"signaling_error": "streamer_not_available"},
        "connect",
        ("OdysseyConnectionError",),
    )
    await expect(
        "stream error quota_exceeded",
        {"stream_error": "quota_exceeded"},
        "start",
        ("MonthlyLimitReachedError",),
    )
    await expect(
        "stream error session_timeout",
        {"stream_error": "session_timeout"},
        "start",
        ("StreamDurationExceededError",),
    )
    await expect(
        "stream error lease_denied",
        {"stream_error": "lease_denied"},
        "start",
        ("OdysseyStreamError",),
    )
    del odyssey
    return rep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", help="API URL of a running server (default: start an embedded one)"
    )
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument(
        "--size", default="320x176", help="embedded server frame size (landscape WxH)"
    )
    parser.add_argument(
        "--no-faults", action="store_true", help="skip the error paths (embedded server only)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    if args.url:
        if not args.key:
            parser.error("--key is required with --url")
        rep = asyncio.run(run(args.url.rstrip("/"), args.key))
    else:
        from odyssey_sync.local import LocalOdyssey

        w, h = (int(v) for v in args.size.lower().split("x"))
        with (
            tempfile.TemporaryDirectory() as tmp,
            LocalOdyssey(size=(w, h), fps=15, data_dir=tmp) as server,
        ):
            rep = asyncio.run(run(server.url, server.api_key))
            if not args.no_faults:
                rep.rows += asyncio.run(run_faults(server.url, server.api_key, server.faults)).rows

    print()
    print("| step | result | detail |")
    print("|---|---|---|")
    for row in rep.rows:
        print(f"| {row['step']} | {row['result']} | {row['detail']} |")
    if args.json:
        args.json.write_text(json.dumps(rep.rows, indent=2))
    return rep.failures


if __name__ == "__main__":
    sys.exit(main())
