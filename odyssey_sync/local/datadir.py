"""The local server's data directory: where it is, who uses it, and freeing space.

Layout of a data directory::

    odyssey-local.sqlite3   metadata: API keys, streams, events, jobs (never pruned)
    api_key                 the generated development key, mode 0600 (never pruned)
    server.lock             lock file: which servers use the directory
    media/                  recordings (MP4, thumbnails, previews, input images);
                            ``*.part`` files are renders in progress or left by a crash

The default directory is ``$ODYSSEY_SYNC_DATA_DIR`` when that environment
variable is set, else ``platformdirs.user_cache_dir("odyssey-sync") / "local"``.
The test suite sets the variable, so it never writes to the user's directory.

:func:`prune` frees space (old media, leftover ``*.part`` files); it never
touches the database or the key, so every recording's metadata survives and
only its media URLs start answering 404.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .render.media import PART_SUFFIX

__all__ = [
    "DATA_DIR_ENV",
    "DB_NAME",
    "KEY_FILE",
    "MEDIA_DIR",
    "DataDirLock",
    "PruneResult",
    "default_data_dir",
    "prune",
]

#: environment variable naming the default data directory
DATA_DIR_ENV = "ODYSSEY_SYNC_DATA_DIR"
DB_NAME = "odyssey-local.sqlite3"
KEY_FILE = "api_key"
LOCK_FILE = "server.lock"
MEDIA_DIR = "media"
#: a ``*.part`` file younger than this may be a render in progress of a running server
_PART_GRACE_SECONDS = 24 * 3600.0


def default_data_dir() -> Path:
    """Where a server keeps its state when no ``data_dir`` is given. Non-blocking.

    ``$ODYSSEY_SYNC_DATA_DIR`` when set (and not empty), else
    ``platformdirs.user_cache_dir("odyssey-sync") / "local"``.
    """
    configured = os.environ.get(DATA_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("odyssey-sync")) / "local"


class DataDirLock:
    """A shared lock held by every server using one data directory (POSIX ``flock``).

    Several servers (e.g. parallel test processes) may share a directory.
    Restart recovery (closing allocations, failing interrupted jobs, removing
    ``*.part`` files) must only run when no other live server uses it, or it
    would clobber that server's work: :meth:`acquire` tries an exclusive lock
    first (its result says whether we are alone), then keeps a shared one
    until :meth:`release`. A process killed with ``kill -9`` releases its lock
    with its descriptors. Not thread-safe; blocking only while another process
    converts its lock (microseconds).
    """

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the shared lock; True when no other server held the directory."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no cross-process guard
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError:
            alone = False
        fcntl.flock(fd, fcntl.LOCK_SH)  # converts (or waits for the shared grant)
        self._fd = fd
        return alone

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _in_use(data_dir: Path) -> bool:
    """True when a running server holds ``data_dir`` (non-blocking probe)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    path = data_dir / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the probe's lock
    return False


def stored_or_new_key(data_dir: Path, generate: str) -> str:
    """The development key kept in ``data_dir`` (written owner-only from ``generate``
    when there is none yet). Blocking file I/O."""
    path = data_dir / KEY_FILE
    if path.is_file():
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
    # Written owner-only: it is a credential, even if only a local one.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(generate + "\n")
    return generate


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` removed."""

    files_removed: int
    bytes_freed: int


def prune(data_dir: Path | None = None, *, older_than_days: float | None = None) -> PruneResult:
    """Free space in a local server's data directory. Blocking (file I/O).

    Removes media files (recordings, thumbnails, previews, input images) last
    modified more than ``older_than_days`` days ago — all of them when it is
    None — and leftover ``*.part`` files of interrupted renders. Never touches
    the database, the API key or the lock file, so recordings keep their
    metadata (their media URLs then answer 404). While a server is using the
    directory, ``*.part`` files younger than a day are kept (they may be
    renders in progress).

    Args:
        data_dir: the directory (default: :func:`default_data_dir`). A
            directory that does not exist has nothing to prune.
        older_than_days: age limit in days (a finite number ≥ 0), or None.

    Returns a :class:`PruneResult`. Raises ``ValueError`` for a bad
    ``older_than_days`` and ``OSError`` when a file cannot be removed.
    """
    if older_than_days is not None and (
            isinstance(older_than_days, bool) or not isinstance(older_than_days, (int, float))
            or not 0 <= older_than_days < float("inf")):
        raise ValueError("older_than_days must be a finite number >= 0 or None, "
                             f"not {older_than_days!r}")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    media = root / MEDIA_DIR
    if not media.is_dir():
        return PruneResult(0, 0)
    now = time.time()
    cutoff = None if older_than_days is None else now - float(older_than_days) * 86400.0
    busy = _in_use(root)
    removed = freed = 0
    for entry in media.iterdir():
        with contextlib.suppress(FileNotFoundError):  # a render renamed it meanwhile
            info = entry.lstat()
            if not entry.is_file() or entry.is_symlink():
                continue
            if entry.name.endswith(PART_SUFFIX):
                if busy and now - info.st_mtime < _PART_GRACE_SECONDS:
                    continue
            elif cutoff is not None and info.st_mtime >= cutoff:
                continue
            entry.unlink()
            removed += 1
            freed += info.st_size
    return PruneResult(files_removed=removed, bytes_freed=freed)
