"""Downloads: a presigned URL streamed into a file, atomically (PROTOCOL §3.7).

Used for recordings (``download_recording``). Blocking, caller's thread,
through the owner's :class:`~odyssey_sync._http.HttpClient` (no
``Authorization`` header: presigned URLs carry their own signature and may
point at another host).
"""

from __future__ import annotations

import functools
import os
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._deadline import Deadline
from ._http import HttpClient, int_header
from .errors import OdysseyConnectionError, OdysseyTimeoutError

__all__ = ["download_to_file", "progress_bar"]


def download_to_file(
    http: HttpClient,
    url: str,
    path: Path,
    *,
    timeout: float,
    progress: bool,
    chunk: int = 1 << 16,
    deadline: Deadline | None = None,
    description: str | None = None,
) -> Path:
    """Stream a presigned URL into ``path`` (blocking, caller's thread).

    The body goes to a temporary file next to ``path`` that is renamed over
    ``path`` only when the whole body arrived (a failed download leaves no
    partial file behind). The file is created with the process umask
    applied, like any file the user's program writes. No
    ``Authorization`` header is sent: the URL is presigned and may point
    at another host. Each read times out after the ``timeout`` seconds;
    ``deadline`` bounds the whole transfer.

    Args:
        progress: show a tqdm progress bar on stderr.

    Returns:
        ``path``.

    Raises:
        ValueError: ``url`` is not http(s), or the parent directory is missing.
        OdysseyNotFoundError / OdysseyPermissionError: 404 / 403 (e.g. an
            expired presigned URL).
        OdysseyConnectionError: network failure, 5xx, truncated body.
        OdysseyTimeoutError: a read or ``deadline`` ran out.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("download URL must be http:// or https://")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"directory does not exist: {path.parent}")
    if deadline is not None:
        deadline.check("download")
        timeout = deadline.clamp(timeout) or 0.0
    resp = http.request("GET", url, what="download", timeout=timeout, stream=True)
    tmp: Path | None = None
    try:
        http.raise_for_status(resp, "download")
        total = int_header(resp, "Content-Length")
        fd, tmp = _create_part_file(path)
        received = 0
        with os.fdopen(fd, "wb") as out, progress_bar(
            total=total, unit="B", unit_scale=True, unit_divisor=1024,
            desc=description or path.name, disable=not progress, file=sys.stderr,
            leave=False,
        ) as bar:
            for piece in http.iter_body(resp, chunk, what="download"):
                if deadline is not None and deadline.expired:
                    raise OdysseyTimeoutError(
                        f"download timed out after {deadline.timeout:g} s "
                        f"({received} bytes received)"
                    )
                out.write(piece)
                received += len(piece)
                bar.update(len(piece))
        if total is not None and received != total:
            raise OdysseyConnectionError(
                f"download truncated: {received} of {total} bytes received"
            )
        os.replace(tmp, path)
        tmp = None
        return path
    finally:
        resp.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _create_part_file(target: Path) -> tuple[int, Path]:
    """Create ``.<name>.<random>.part`` beside ``target``; return ``(fd, path)``.

    ``os.open`` with mode 0o666 lets the kernel apply the umask, as for any
    file the program writes (``tempfile.mkstemp`` would force 0600).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


@functools.lru_cache(maxsize=1)
def _bar_class() -> Any:
    from tqdm import tqdm  # lazily: only downloads and waits draw bars

    class QuietMonitorBar(tqdm):  # type: ignore[misc]
        monitor_interval = 0

    return QuietMonitorBar


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar (same keyword arguments) that starts no monitor thread.

    tqdm's default starts a process-wide ``tqdm_monitor`` thread with the
    first bar and keeps it alive for good; our bars are updated on every
    chunk/poll, so the monitor adds nothing but a thread we would leak.
    """
    return _bar_class()(**kwargs)
