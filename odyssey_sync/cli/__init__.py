"""The ``odyssey-sync`` command line.

Commands (``odyssey-sync COMMAND --help`` for each)::

    serve                      run the embedded Odyssey-compatible server
    demo                       a short end-to-end tour (embedded server by default)
    stream PROMPT              start a stream, save / show its video for N seconds
    interact PROMPT            start a stream, then send one interaction per stdin line
    spectate URL TOKEN         watch a broadcast stream as a spectator (WHEP)
    simulate SCRIPT.json       submit a simulation job, optionally wait and download
    recordings list|get|download
    simulations list|get|cancel
    local prune                free the space the embedded server's data takes
    doctor                     check this machine's setup and the API

Global options (before or after the command): ``--api-url`` (default
``$ODYSSEY_API_URL``), ``--api-key`` (default ``$ODYSSEY_API_KEY``), ``--json``
(JSON Lines on stdout) and ``--debug`` (debug logs and a traceback on failure).

Exit codes: 0 success, 1 failure (server refused, lost connection, timeout,
I/O error, ``doctor`` found a problem), 2 usage mistake (bad arguments,
missing API key, unreadable script or image), 130 Ctrl-C, 141 stdout closed
by its reader. Errors are one line on stderr, ``odyssey-sync: error: ...``;
the API key is never printed. ``docs/cli.md`` documents every command.

The package's modules: :mod:`.parser` (arguments), :mod:`.app` (running a
command, error handling), :mod:`.output` (human and JSON output, exit codes),
:mod:`.inputs` (checks before connecting), :mod:`.media` (the MP4 writer, the
OpenCV window, the recording thread), and the commands: :mod:`.live`,
:mod:`.jobs`, :mod:`.local`, :mod:`.doctor`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (does not call ``sys.exit``).

    Blocking: runs the whole command on the calling thread; every thread the
    SDK starts is joined before it returns. ``argv`` defaults to ``sys.argv[1:]``.
    """
    # Imported here so that ``odyssey_sync.cli.media`` (used by the demo) can
    # be imported without the commands, which import the demo.
    from .app import run

    return run(argv)
