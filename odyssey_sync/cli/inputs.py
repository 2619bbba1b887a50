"""What the user passed, checked before any network call, and the client built from it.

Every check raises :class:`~.output.UsageError` (exit code 2) with a message
naming the option, so a paid stream never starts only to fail on a bad path.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .._images import encode_image
from ..client import Odyssey
from .output import UsageError

__all__ = ["check_out_path", "open_client", "read_image", "require_key", "safe_file_name"]


def require_key(args: argparse.Namespace) -> str:
    """The API key from ``--api-key`` / ``$ODYSSEY_API_KEY``, or a usage error."""
    key = args.api_key
    if not key:
        raise UsageError("no API key: pass --api-key or set ODYSSEY_API_KEY")
    return str(key)


def open_client(args: argparse.Namespace) -> Odyssey:
    """An :class:`~odyssey_sync.Odyssey` from the global options (not connected yet).

    ``stream`` resumes by default (``args.resume``): a stream longer than the
    service's 150 s limit goes on, on a new stream id each time.

    Non-blocking. Use it with ``with`` so its threads are joined on exit.
    """
    key = require_key(args)
    # Commands that stream for a user-chosen time resume across the service's
    # limits (``--no-resume`` turns it off); the others never hold a stream long.
    options = {"debug": bool(args.debug), "resume": bool(getattr(args, "resume", False))}
    if args.api_url:
        return Odyssey(key, api_url=args.api_url, **options)
    return Odyssey(key, **options)


def read_image(path: Path | None, *, portrait: bool) -> str | None:
    """``--image`` as the data URL the stream will send, or a usage error.

    Blocking (file read and Pillow decode, milliseconds). The image is decoded
    and fitted here, before connecting, with the SDK's own image preparation:
    a missing, unreadable or non-image file is refused without a stream.
    """
    if path is None:
        return None
    if not path.is_file():
        raise UsageError(f"cannot read image {str(path)!r}: no such file")
    try:
        return encode_image(path, portrait=portrait)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read image {str(path)!r}: {exc}") from None


def check_out_path(path: Path | None) -> None:
    """Refuse an ``--out`` that cannot be written, before connecting.

    Discovering an unwritable ``--out`` after a paid stream has run would
    waste the stream.
    """
    if path is None:
        return
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"output directory does not exist: {str(parent)!r}")
    if path.is_dir():
        raise UsageError(f"--out must be a file, not a directory: {str(path)!r}")


def safe_file_name(stream_id: str) -> str:
    """``<stream_id>.mp4`` made safe as one file name (ids come from the server)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stream_id).lstrip(".") or "recording"
    return f"{safe}.mp4"
