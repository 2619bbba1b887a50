"""``odyssey-sync doctor``: what is wrong with this setup, and how to fix it.

Each check returns a :class:`Check` -- ``ok``, ``warn`` (works, but worth
knowing) or ``fail`` (something will not work, or runs far slower than it
should) -- with the facts it found and, when not ok, a fix. The command exits
0 when no check failed, 1 otherwise, listing the reasons.

Checks, in order: versions; the native frame converter and its SIMD tier (or
why the NumPy fallback is in use); video decoders; the API key (never
printed); the API URL (DNS and TCP, then ``POST /auth/token``, ``GET /regions``
and each region's ping, with timings); outbound UDP for WebRTC (a STUN
binding request); the local server's data directory and its size.

Every network step is bounded by ``--timeout``; nothing here changes state
anywhere (the data directory is only read).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import ipaddress
import os
import platform
import secrets
import socket
import ssl
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .._version import __version__
from ..config import DEFAULT_API_URL
from ..errors import OdysseyError
from .output import EXIT_FAILURE, EXIT_OK, PROG, Output, human_size, one_line

__all__ = ["Check", "cmd_doctor", "run_checks"]

Status = Literal["ok", "warn", "fail"]

#: the protocol's fallback ICE server (PROTOCOL §2), used for the UDP probe
STUN_SERVER = ("stun.l.google.com", 19302)
#: SIMD tiers of csrc/oys_yuv.c (OYS_LEVEL_*)
_TIERS = {0: "portable C (no SIMD)", 1: "SSE2", 2: "AVX2", 3: "AVX-512 (BW+VBMI)"}
#: a region ping without a reply in time (PROTOCOL §3.3)
_UNANSWERED_MS = 9999
_TROUBLESHOOTING = "docs/troubleshooting.md"


@dataclass
class Check:
    """One finding of the doctor."""

    name: str
    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    fix: str | None = None


# --------------------------------------------------------------------------- local checks


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions() -> Check:
    """Package, Python and the libraries the media path depends on."""
    import av
    import numpy

    libavcodec = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    details = {
        "odyssey_sync": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "aiortc": _dist_version("aiortc"),
        "pyav": av.__version__,
        "libavcodec": libavcodec or None,
        "numpy": numpy.__version__,
        "openssl": ssl.OPENSSL_VERSION,
        "cryptography": _dist_version("cryptography"),
    }
    summary = (f"odyssey-sync {__version__}, Python {details['python']}, "
               f"aiortc {details['aiortc']}, PyAV {details['pyav']}, "
               f"NumPy {details['numpy']}, {details['openssl']}")
    return Check("versions", "ok", summary, details)


def check_native() -> Check:
    """The compiled converter and its SIMD tier, or why the NumPy fallback runs."""
    from .. import native_available

    disabled = os.environ.get("ODYSSEY_SYNC_NATIVE", "").strip() == "0"
    yuv: Any = None
    import_error: str | None = None
    try:
        yuv = importlib.import_module("odyssey_sync._yuv")
    except ImportError as exc:
        import_error = f"{type(exc).__name__}: {exc}"
    if native_available() and yuv is not None:
        active, best = int(yuv.lib.oys_active_level()), int(yuv.lib.oys_cpu_level())
        summary = f"native converter in use, SIMD tier {_TIERS.get(active, active)}"
        if best != active:
            summary += f" (this CPU supports {_TIERS.get(best, best)})"
        return Check("native", "ok", summary,
                     {"native": True, "tier": _TIERS.get(active), "cpu_tier": _TIERS.get(best)})
    details: dict[str, Any] = {"native": False, "disabled_by_env": disabled,
                               "import_error": import_error}
    if disabled:
        return Check("native", "fail", "NumPy fallback in use: ODYSSEY_SYNC_NATIVE=0 is set",
                     details, fix="unset ODYSSEY_SYNC_NATIVE (or set it to 1) to use the "
                                  "native converter")
    if import_error is not None:
        return Check(
            "native", "fail",
            "NumPy fallback in use: the native extension odyssey_sync._yuv is not built "
            f"({import_error})", details,
            fix="install a prebuilt wheel (pip install --force-reinstall --only-binary "
                "odyssey-sync odyssey-sync), or install a C compiler and rebuild with "
                "ODYSSEY_SYNC_NATIVE=1 pip install --force-reinstall --no-binary odyssey-sync "
                f"odyssey-sync (=1 makes a failed build say why); see {_TROUBLESHOOTING}")
    return Check("native", "fail",
                 "NumPy fallback in use although odyssey_sync._yuv imports (it was disabled "
                 "when odyssey_sync was first imported)", details,
                 fix="unset ODYSSEY_SYNC_NATIVE before starting Python")


def check_decoders() -> Check:
    """VP8 and H.264 decoders (the service's video), and an MP4 encoder (--out)."""
    import av

    def has(name: str, mode: Literal["r", "w"]) -> bool:
        try:
            av.codec.Codec(name, mode)
        except Exception:  # unknown codec: PyAV raises its own error types
            return False
        return True

    decoders = {name: has(name, "r") for name in ("vp8", "h264")}
    encoder = next((name for name in ("libx264", "h264", "mpeg4") if has(name, "w")), None)
    details = {"decoders": decoders, "mp4_encoder": encoder}
    missing = [name for name, ok in decoders.items() if not ok]
    if missing:
        return Check("decoders", "fail", f"no {' / '.join(missing)} decoder in this PyAV",
                     details, fix="reinstall PyAV's wheel: pip install --force-reinstall av")
    summary = f"VP8 and H.264 decoders; MP4 encoder {encoder}"
    if encoder is None:
        return Check("decoders", "warn", "VP8 and H.264 decoders; no MP4 encoder (--out fails)",
                     details, fix="pip install --force-reinstall av")
    return Check("decoders", "ok", summary, details)


def check_api_key(args: argparse.Namespace) -> Check:
    """Whether a key is set (never its value)."""
    if args.api_key:
        given = "--api-key" if os.environ.get("ODYSSEY_API_KEY") != args.api_key \
            else "ODYSSEY_API_KEY"
        return Check("api_key", "ok", f"API key set (from {given}; not shown)",
                     {"set": True, "source": given})
    return Check("api_key", "warn", "no API key: ODYSSEY_API_KEY is not set",
                 {"set": False},
                 fix="export ODYSSEY_API_KEY=... (from the Odyssey portal); the embedded "
                     f"server ({PROG} serve / demo) needs none of yours")


def check_data_dir(args: argparse.Namespace) -> Check:
    """The local server's data directory and the space it takes (read only)."""
    from ..local import default_data_dir

    path = Path(args.data_dir) if args.data_dir is not None else default_data_dir()
    details: dict[str, Any] = {"path": str(path), "exists": path.is_dir()}
    if not path.is_dir():
        return Check("data_dir", "ok", f"local server data: {path} (not created yet)", details)
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while we walk
                continue
            files += 1
    details.update(bytes=total, files=files)
    return Check("data_dir", "ok",
                 f"local server data: {path}, {human_size(total)} in {files} files "
                 f"(free it with: {PROG} local prune)", details)


# --------------------------------------------------------------------------- network checks


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_api(args: argparse.Namespace) -> Check:
    """The API URL: DNS and TCP, then (with a key) auth, /regions and region pings."""
    url = args.api_url or DEFAULT_API_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Check("api", "fail", f"not an http(s) URL: {url!r}", {"url": url},
                     fix="pass --api-url https://host[:port] or fix ODYSSEY_API_URL")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    details: dict[str, Any] = {"url": url}
    started = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        details["dns_ms"] = _ms(started)
        started = time.monotonic()
        address = (str(infos[0][4][0]), int(infos[0][4][1]))
        with socket.create_connection(address, timeout=args.timeout):
            details["tcp_connect_ms"] = _ms(started)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return Check("api", "fail", f"{url} does not answer: {reason} ({host}:{port})", details,
                     fix="check the URL (--api-url / ODYSSEY_API_URL), your network and proxy; "
                         f"for the embedded server start '{PROG} serve' first")
    if not args.api_key:
        return Check("api", "ok", f"{url} answers (TCP {details['tcp_connect_ms']} ms); "
                                  "no API key, so authentication was not checked", details)
    return _check_api_calls(url, str(args.api_key), args.timeout, details)


def _check_api_calls(url: str, key: str, timeout: float, details: dict[str, Any]) -> Check:
    # The SDK's own REST boundary, so the doctor sees what a client sees.
    from .._rest import ApiClient

    with ApiClient(url, key, timeout=timeout) as api:
        started = time.monotonic()
        try:
            api.access_token()
        except OdysseyError as exc:
            details["auth_error"] = one_line(exc)
            return Check("api", "fail", f"{url} answers, but authentication failed: "
                                        f"{one_line(exc)}", details,
                         fix="check the API key (--api-key / ODYSSEY_API_KEY) in the portal")
        details["auth_ms"] = _ms(started)
        started = time.monotonic()
        latencies = api.region_latencies(budget=min(timeout, 2.0))
        details["regions_ms"] = _ms(started)
    details["region_ping_ms"] = latencies
    summary = f"{url} answers: auth {details['auth_ms']} ms"
    if not latencies:
        return Check("api", "warn", summary + "; GET /regions failed or listed no region "
                                              "(streams still work, without region choice)",
                     details)
    pings = ", ".join(f"{region} {'no reply' if ms >= _UNANSWERED_MS else f'{ms} ms'}"
                      for region, ms in sorted(latencies.items()))
    summary += f", /regions and pings {details['regions_ms']} ms ({pings})"
    if all(ms >= _UNANSWERED_MS for ms in latencies.values()):
        return Check("api", "warn", summary + "; no region answered its ping", details,
                     fix="region pings are plain HTTPS GETs: check a proxy or firewall")
    return Check("api", "ok", summary, details)


def _stun_request() -> tuple[bytes, bytes]:
    transaction = secrets.token_bytes(12)
    # Binding request, no attributes, the RFC 5389 magic cookie.
    return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction, transaction


def check_udp(args: argparse.Namespace) -> Check:
    """Outbound UDP, which WebRTC media needs: one STUN binding request."""
    host = urlsplit(args.api_url or DEFAULT_API_URL).hostname or ""
    if _is_loopback(host):
        return Check("udp", "ok", "API on this machine: WebRTC needs no outbound UDP",
                     {"skipped": True})
    server = f"{STUN_SERVER[0]}:{STUN_SERVER[1]}"
    hint = ("WebRTC video needs outbound UDP (to the STUN/TURN servers and the streamer's "
            "ephemeral ports); without it, connecting fails unless the service offers TURN "
            f"over TCP/TLS: allow outbound UDP in your firewall; see {_TROUBLESHOOTING}")
    request, transaction = _stun_request()
    started = time.monotonic()
    try:
        family, _, _, _, addr = socket.getaddrinfo(*STUN_SERVER, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(min(args.timeout, 3.0))
            sock.sendto(request, addr)
            while True:
                reply = sock.recv(2048)
                if len(reply) >= 20 and reply[8:20] == transaction:
                    break
    except OSError as exc:  # socket.timeout is an OSError
        reason = "no reply" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return Check("udp", "warn", f"STUN over UDP to {server} failed: {reason}",
                     {"stun_server": server, "error": reason}, fix=hint)
    rtt = _ms(started)
    # The reply carries this machine's public address: not printed.
    return Check("udp", "ok", f"outbound UDP works (STUN {server} answered in {rtt} ms)",
                 {"stun_server": server, "rtt_ms": rtt})


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)


# --------------------------------------------------------------------------- command


def run_checks(args: argparse.Namespace) -> list[Check]:
    """Every check, in report order. Blocking: at most a few ``args.timeout``."""
    return [check_versions(), check_native(), check_decoders(), check_api_key(args),
            check_api(args), check_udp(args), check_data_dir(args)]


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    """``doctor``: print every check; exit 0 when none failed, else 1 with the reasons."""
    checks = run_checks(args)
    problems = [f"{c.name}: {c.summary}" for c in checks if c.status == "fail"]

    def human() -> None:
        for c in checks:
            out.line(f"{c.status.upper():4}  {c.name:9} {c.summary}")
            if c.fix and c.status != "ok":
                out.line(f"{'':15}fix: {c.fix}")
        if problems:
            out.line(f"{len(problems)} problem(s):")
            for p in problems:
                out.line(f"  - {p}")
        else:
            out.line("healthy")

    out.result({"healthy": not problems, "problems": problems, "checks": checks,
                "python_executable": sys.executable}, human)
    return EXIT_FAILURE if problems else EXIT_OK
