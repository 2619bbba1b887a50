"""The methods of :class:`~odyssey_sync.Odyssey` that need no live connection.

Recordings, simulation jobs and client credentials are plain REST calls; they
work before ``connect()``, after ``disconnect()``, and from any thread, and
never touch the event loop. :class:`OfflineMethods` is a mixin: the facade
inherits it and provides ``self._api`` (an :class:`~odyssey_sync._api.ApiClient`).

Timeouts. Every method takes ``timeout``: ``None`` means no overall limit,
though each HTTP request still times out after the client's per-request
timeout (``ApiClient.timeout``, 10 s by default) so nothing can hang; a number
is an overall budget in seconds shared by every request of the call (token
refresh included), after which :class:`~odyssey_sync.errors.OdysseyTimeoutError`
is raised.

Errors. Bad arguments raise ``TypeError``/``ValueError`` before any request;
server answers map to :mod:`odyssey_sync.errors` (see :mod:`odyssey_sync._http`):
``OdysseyNotFoundError`` (404), ``OdysseyPermissionError`` (403),
``OdysseyRequestError`` (400/422), ``OdysseyAuthError`` (401, bad key),
``OdysseyUsageError`` subclasses (429), ``OdysseyConnectionError`` (network,
5xx), ``OdysseyTimeoutError``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ._deadline import Deadline, check_timeout
from ._download import progress_bar
from ._http import validate_id
from ._rest import ApiClient, check_page
from ._scripts import build_simulation_body
from .errors import (
    OdysseyConnectionError,
    OdysseyNotFoundError,
    OdysseyStreamError,
    OdysseyTimeoutError,
)
from .types import (
    ClientCredentials,
    Recording,
    SimulationJobDetail,
    SimulationJobInfo,
    SimulationJobsList,
    SimulationJobStatus,
    StreamRecordingsList,
)

__all__ = ["OfflineMethods"]

log = logging.getLogger("odyssey_sync.offline")

#: Consecutive transient failures (network, 5xx) tolerated while polling.
_POLL_RETRIES = 3

_T = TypeVar("_T")


def _deadline(timeout: Any) -> Deadline | None:
    """A :class:`Deadline` for ``timeout`` (validated), or ``None`` for no limit."""
    seconds = check_timeout(timeout)
    return None if seconds is None else Deadline(seconds)


def _check_poll_interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"poll_interval must be a number of seconds, not {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"poll_interval must be > 0 seconds, not {value!r}")
    return float(value)


def _check_progress(value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"progress must be a bool, not {type(value).__name__}")


def _names_a_directory(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` ends with a path separator (``videos/``): a directory, existing or not."""
    text = os.fspath(path)
    seps = tuple(s for s in (os.sep, os.altsep, "/") if s)
    return isinstance(text, str) and text.endswith(seps)


class OfflineMethods:
    """Recordings, simulations and credentials: blocking REST methods (a mixin).

    The class using it must set ``self._api`` to an
    :class:`~odyssey_sync._api.ApiClient`, and may override
    :meth:`_default_queue_timeout` to supply its configured queue timeout.
    All methods block the calling thread (any thread; none needs a connection).
    """

    _api: ApiClient

    # ------------------------------------------------------------------ hooks

    def _require_api_key(self, doing: str) -> None:
        """Raise ``ValueError`` when the client has no API key (before any request)."""
        if not self._api.has_api_key:
            raise ValueError(
                f"{doing} needs an API key; create the client with Odyssey(api_key=...)"
            )

    def _default_queue_timeout(self) -> float:
        """Seconds :meth:`create_client_credentials` waits for a free streamer by default."""
        return 30.0

    # ------------------------------------------------------------------ recordings

    def get_recording(self, stream_id: str, *, timeout: float | None = None) -> Recording:
        """Fetch a stream's recording with presigned URLs (valid for about 1 h).

        Blocking, any thread; needs only the API key, no connection.

        Args:
            stream_id: as returned by ``start_stream()`` / ``on_stream_started``.
            timeout: overall seconds, or ``None`` (see the module docstring).

        Returns:
            :class:`Recording`; its URLs are ``None`` while not (yet) available.

        Raises:
            ValueError: empty/invalid ``stream_id`` or no API key.
            OdysseyNotFoundError: no such stream for this account.
            OdysseyAuthError: the API key was refused.
            OdysseyTimeoutError: no answer within ``timeout``.
            OdysseyConnectionError: the service could not be reached.
        """
        validate_id(stream_id, "stream_id")
        self._require_api_key("get_recording()")
        return self._api.get_recording(stream_id, deadline=_deadline(timeout))

    def list_stream_recordings(
        self, limit: int | None = None, offset: int | None = None, *,
        timeout: float | None = None,
    ) -> StreamRecordingsList:
        """List this account's stream recordings, newest first.

        Blocking, any thread.

        Args:
            limit: page size 1–100 (``MAX_LIST_LIMIT``), server default when ``None``.
            offset: entries to skip, 0 to 2⁶³−1.
            timeout: overall seconds, or ``None``.

        Returns:
            :class:`StreamRecordingsList` (``recordings``, ``total``, ``limit``, ``offset``).

        Raises:
            TypeError/ValueError: bad ``limit``/``offset`` (the message names the
                limit), bad ``timeout`` or no API key — before any request.
            OdysseyAuthError: the API key was refused.
            OdysseyTimeoutError: no answer within ``timeout``.
            OdysseyConnectionError: the service could not be reached.
        """
        check_page(limit, offset)
        deadline = _deadline(timeout)
        self._require_api_key("list_stream_recordings()")
        return self._api.list_stream_recordings(limit, offset, deadline=deadline)

    def wait_for_recording(
        self,
        stream_id: str,
        *,
        timeout: float | None = 600.0,
        poll_interval: float = 1.0,
    ) -> Recording:
        """Block until a stream's recording has its video, and return it.

        Right after ``end_stream()`` the service is still processing the
        recording: :meth:`get_recording` then answers with ``video_url``
        ``None``. This polls until the URL is there. Up to three consecutive
        transient failures (network errors, 5xx) are retried; closing the
        client interrupts the wait.

        Blocking, any thread; needs only the API key, no connection.

        Args:
            stream_id: as returned by ``start_stream()`` / ``on_stream_started``.
            timeout: seconds to wait in total (default 600), or ``None`` to
                wait as long as it takes (each request still times out).
            poll_interval: seconds between two requests (> 0).

        Returns:
            The :class:`Recording`, with ``video_url`` set (presigned, valid
            for about 1 h).

        Raises:
            TypeError/ValueError: bad ``stream_id`` (empty, ``.``, ``..``),
                ``timeout`` or ``poll_interval``, or no API key — before any request.
            OdysseyNotFoundError: no such stream for this account, or the stream
                ended without a single frame (so it has no video).
            OdysseyTimeoutError: still no video after ``timeout``.
            OdysseyConnectionError: after the retries, or the client was closed.
            OdysseyAuthError: the API key was refused.
        """
        validate_id(stream_id, "stream_id")
        interval = _check_poll_interval(poll_interval)
        deadline = _deadline(timeout)
        self._require_api_key("wait_for_recording()")
        return self._wait_for_video(stream_id, deadline, interval)

    def _wait_for_video(
        self, stream_id: str, deadline: Deadline | None, poll_interval: float
    ) -> Recording:
        def finished(rec: Recording) -> bool:
            if not rec.video_url and rec.frame_count == 0 and not rec.duration_seconds:
                # an ended stream without a single frame: no video will ever come
                raise OdysseyNotFoundError(
                    f"stream {stream_id} ended without any frame; it has no video",
                    stream_id=stream_id,
                )
            return bool(rec.video_url)

        return self._poll(
            lambda d: self._api.get_recording(stream_id, deadline=d),
            finished,
            what=f"the recording of stream {stream_id}",
            deadline=deadline,
            poll_interval=poll_interval,
            state=lambda rec: "ready" if rec.video_url else "processing",
            ids={"stream_id": stream_id},
        )

    def download_recording(
        self,
        stream_id: str,
        path: str | os.PathLike[str],
        *,
        progress: bool = True,
        timeout: float | None = 600.0,
    ) -> Path:
        """Download a stream's MP4 to ``path``, waiting for processing if needed.

        Blocking, any thread. When the recording is still being processed
        (right after ``end_stream()``) this waits for it first, as
        :meth:`wait_for_recording` does, within the same ``timeout``. The
        video goes to a temporary file beside the target and is renamed into
        place only once complete, so ``path`` never holds a partial video.
        The file is created like any other file of the program (the umask
        applies). A progress bar is drawn on stderr (tqdm) unless
        ``progress=False``.

        Args:
            stream_id: the stream whose recording to fetch.
            path: target file; or a directory — an existing one, or any path
                ending with a separator (``"videos/"``, created if its parent
                exists) — in which case the file is ``<dir>/<stream_id>.mp4``.
                An existing file is replaced.
            timeout: overall seconds for waiting, lookup and transfer (default
                600), or ``None`` for no overall limit (each read still times
                out after the per-request timeout, so a stalled transfer fails).

        Returns:
            The path written.

        Raises:
            TypeError/ValueError: bad ``stream_id`` (empty, ``.``, ``..``),
                ``timeout`` or ``path``, missing parent directory, no API key —
                before any request.
            OdysseyNotFoundError: unknown stream.
            OdysseyTimeoutError: the video was not ready, or not downloaded,
                within ``timeout``.
            OdysseyConnectionError: the service could not be reached, or the body
                was truncated.
        """
        validate_id(stream_id, "stream_id")
        _check_progress(progress)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        target = Path(path)
        make_dir = False
        if target.is_dir() or _names_a_directory(path):
            if any(sep in stream_id for sep in ("/", "\\", os.sep)):
                raise ValueError(
                    f"stream_id {stream_id!r} cannot be used as a file name; pass a file path"
                )
            if target.exists() and not target.is_dir():
                raise ValueError(f"{os.fspath(path)!r} ends with a separator but is a file")
            make_dir = not target.is_dir()
            target = target / f"{stream_id}.mp4"
        if not target.parent.is_dir() and not (make_dir and target.parent.parent.is_dir()):
            missing = target.parent if not make_dir else target.parent.parent
            raise ValueError(f"directory does not exist: {missing}")
        deadline = _deadline(timeout)
        self._require_api_key("download_recording()")
        recording = self._wait_for_video(stream_id, deadline, 1.0)
        assert recording.video_url is not None  # _wait_for_video returns only then
        if make_dir:
            target.parent.mkdir(exist_ok=True)
        return self._api.download(
            recording.video_url, target, progress=progress, deadline=deadline,
            description=f"{stream_id}.mp4",
        )

    # ------------------------------------------------------------------ simulations

    def simulate(
        self,
        *,
        script: list[dict[str, Any]] | None = None,
        scripts: list[list[dict[str, Any]]] | None = None,
        script_url: str | None = None,
        portrait: bool = True,
        bypass_prompt_expansion: bool | None = None,
        timeout: float | None = None,
    ) -> SimulationJobDetail:
        """Submit a simulation job: video rendered offline from a script.

        Blocking until the job is *accepted* (not finished — see
        :meth:`wait_for_simulation`), any thread.

        Every rule of the script format is checked first (entries of
        ``timestamp_ms`` plus exactly one of ``start``/``interact``/``end``;
        ``start`` first at 0, ``end`` last, chronological, non-empty prompts);
        a ``start.image`` (path, bytes, PIL image, NumPy array or data URL) is
        fitted to the orientation and embedded. Interactions closer than 3 s
        give a :class:`UserWarning`.

        Args:
            script: one script. ``scripts``: several, run in parallel (one
                output stream each). ``script_url``: an http(s) URL of a JSON
                script the service fetches. Exactly one of the three.
            portrait: 704×1280 when True, 1280×704 when False.
            bypass_prompt_expansion: skip prompt expansion (needs a privilege).
            timeout: overall seconds, or ``None``.

        Returns:
            :class:`SimulationJobDetail` of the new job (usually ``pending``).

        Raises:
            TypeError/ValueError: bad script (the message names the entry, e.g.
                ``script[2]: entry has both 'interact' and 'end'``), a documented
                limit exceeded (prompt length ``MAX_PROMPT_CHARS``, script length
                ``MAX_SCRIPT_MS``, batch size ``MAX_SCRIPTS_PER_BATCH``; the
                message names it), bad ``timeout``, no API key.
            OdysseyPermissionError: ``bypass_prompt_expansion`` without the privilege.
            OdysseyRequestError: the service refused the script.
            OdysseyUsageError: an account limit (429).
            OdysseyAuthError: the API key was refused.
            OdysseyTimeoutError: no answer within ``timeout``.
            OdysseyConnectionError: the service could not be reached.
        """
        deadline = _deadline(timeout)
        body = build_simulation_body(
            script=script, scripts=scripts, script_url=script_url, portrait=portrait,
            bypass_prompt_expansion=bypass_prompt_expansion,
        )
        self._require_api_key("simulate()")
        return self._api.submit_simulation(body, deadline=deadline)

    def get_simulate_status(
        self, job_id: str, *, timeout: float | None = None
    ) -> SimulationJobDetail:
        """Current state of a simulation job, with its output streams once done.

        Blocking, any thread. Unknown future status values are kept as
        pseudo-members of :class:`SimulationJobStatus` rather than failing.

        Raises:
            ValueError: bad ``job_id`` or no API key.
            OdysseyNotFoundError: no such job (404).
            OdysseyPermissionError: another account's job (403).
            OdysseyTimeoutError: no answer within ``timeout``.
            OdysseyConnectionError: the service could not be reached.
        """
        validate_id(job_id, "job_id")
        self._require_api_key("get_simulate_status()")
        return self._api.get_simulation(job_id, deadline=_deadline(timeout))

    def list_simulations(
        self,
        *,
        status: SimulationJobStatus | str | None = None,
        active: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        timeout: float | None = None,
    ) -> SimulationJobsList:
        """List this account's simulation jobs, newest first.

        Blocking, any thread.

        Args:
            status: only jobs in this status.
            active: ``True`` only pending/dispatched/processing jobs, ``False``
                only finished ones.
            limit: page size 1–100 (``MAX_LIST_LIMIT``; server default 20).
            offset: entries to skip, 0 to 2⁶³−1.
            timeout: overall seconds, or ``None``.

        Raises:
            TypeError/ValueError: out-of-range or mistyped filters (the message
                names the limit), bad ``timeout``, no API key — before any request.
            OdysseyAuthError: the API key was refused.
            OdysseyTimeoutError: no answer within ``timeout``.
            OdysseyConnectionError: the service could not be reached.
        """
        check_page(limit, offset)
        deadline = _deadline(timeout)
        self._require_api_key("list_simulations()")
        return self._api.list_simulations(
            status=status, active=active, limit=limit, offset=offset, deadline=deadline,
        )

    def cancel_simulation(self, job_id: str, *, timeout: float | None = None) -> SimulationJobInfo:
        """Cancel a job that has not started processing (pending or dispatched).

        Blocking, any thread.

        Returns:
            :class:`SimulationJobInfo` with status ``cancelled``.

        Raises:
            ValueError: bad ``job_id`` or no API key.
            OdysseyRequestError: the job can no longer be cancelled (400; the
                message carries the service's reason).
            OdysseyNotFoundError: no such job.
            OdysseyPermissionError: another account's job.
            OdysseyTimeoutError: no answer within ``timeout``.
            OdysseyConnectionError: the service could not be reached.
        """
        validate_id(job_id, "job_id")
        self._require_api_key("cancel_simulation()")
        return self._api.cancel_simulation(job_id, deadline=_deadline(timeout))

    def wait_for_simulation(
        self,
        job_id: str,
        *,
        timeout: float | None = 600.0,
        poll_interval: float = 1.0,
        progress: bool = True,
    ) -> SimulationJobDetail:
        """Block until a simulation job completes, polling its status.

        Blocking, any thread. Up to three consecutive transient failures
        (network errors, 5xx) while polling are retried; closing the client
        interrupts the wait. With ``progress`` the status is shown on stderr.

        Args:
            job_id: the job returned by :meth:`simulate`.
            timeout: seconds to wait in total (default 600), or ``None`` to
                wait as long as it takes.
            poll_interval: seconds between status requests (> 0).
            progress: show a status line on stderr (tqdm).

        Returns:
            The :class:`SimulationJobDetail` of the completed job (its
            ``streams`` hold the output videos).

        Raises:
            OdysseyStreamError: the job failed (``reason="simulation_failed"``,
                message from the job's ``error_message``) or was cancelled
                (``reason="simulation_cancelled"``).
            OdysseyTimeoutError: still not finished after ``timeout``.
            ValueError: bad arguments or no API key.
            OdysseyNotFoundError: no such job (as for :meth:`get_simulate_status`).
            OdysseyPermissionError: another account's job.
            OdysseyAuthError: the API key was refused.
            OdysseyConnectionError: the service could not be reached (after the
                retries).
        """
        validate_id(job_id, "job_id")
        _check_progress(progress)
        interval = _check_poll_interval(poll_interval)
        deadline = _deadline(timeout)
        self._require_api_key("wait_for_simulation()")
        with progress_bar(
            total=None, desc=f"simulation {job_id}", bar_format="{desc}{postfix} [{elapsed}]",
            disable=not progress, file=sys.stderr, leave=False,
        ) as bar:

            def finished(job: SimulationJobDetail) -> bool:
                bar.set_postfix_str(job.status.value, refresh=False)
                if job.status == SimulationJobStatus.FAILED:
                    raise OdysseyStreamError(
                        f"simulation {job_id} failed: {job.error_message or 'no reason given'}",
                        reason="simulation_failed",
                    )
                if job.status == SimulationJobStatus.CANCELLED:
                    raise OdysseyStreamError(
                        f"simulation {job_id} was cancelled", reason="simulation_cancelled"
                    )
                return job.status == SimulationJobStatus.COMPLETED

            return self._poll(
                lambda d: self._api.get_simulation(job_id, deadline=d),
                finished,
                what=f"simulation {job_id}",
                deadline=deadline,
                poll_interval=interval,
                state=lambda job: job.status.value,
                ids={},
            )

    def _poll(
        self,
        fetch: Callable[[Deadline | None], _T],
        finished: Callable[[_T], bool],
        *,
        what: str,
        deadline: Deadline | None,
        poll_interval: float,
        state: Callable[[_T], str],
        ids: dict[str, Any],
    ) -> _T:
        """Call ``fetch`` every ``poll_interval`` s until ``finished(result)``; return it.

        Blocking. Tolerates :data:`_POLL_RETRIES` consecutive transient
        failures; closing the client interrupts the wait.

        Raises:
            OdysseyTimeoutError: ``deadline`` passed (the message names ``what``
                and the last state seen).
            OdysseyConnectionError: the client was closed, or too many failures.
            Whatever ``fetch`` / ``finished`` raise otherwise.
        """
        failures = 0
        shown = "unknown"

        def expired() -> OdysseyTimeoutError:
            limit = deadline.timeout if deadline is not None else 0.0
            return OdysseyTimeoutError(
                f"{what} did not finish within {limit:g} s (last status: {shown})", **ids
            )

        while True:
            try:
                result = fetch(deadline)
            except (OdysseyConnectionError, OdysseyTimeoutError) as exc:
                if deadline is not None and deadline.expired:
                    raise expired() from exc
                failures += 1
                if failures > _POLL_RETRIES:
                    raise
                log.debug("polling %s failed (%d/%d): %s", what, failures, _POLL_RETRIES, exc)
            else:
                failures = 0
                shown = state(result)
                if finished(result):
                    return result
            if deadline is not None and deadline.expired:
                raise expired()
            pause = poll_interval if deadline is None else deadline.clamp(poll_interval)
            if self._api.wait_closed(pause or 0.0):
                raise OdysseyConnectionError(f"client closed while waiting for {what}", **ids)

    # ------------------------------------------------------------------ credentials

    def create_client_credentials(
        self, *, timeout: float | None = 60.0, queue_timeout: float | None = None
    ) -> ClientCredentials:
        """Allocate a streamer for *another* client and return its credentials.

        For a trusted backend holding the API key (PROTOCOL §3.6): it
        authenticates, allocates a streamer (queueing while all are busy) and
        fetches the signaling token, but opens no WebRTC connection. Hand
        ``creds.to_dict()`` to the untrusted client, which connects with
        ``connect_with_credentials()`` and needs no API key.

        Blocking, any thread.

        Args:
            timeout: overall seconds (default 60), or ``None``.
            queue_timeout: seconds to wait for a free streamer (``0`` = fail
                at once); ``None`` uses the client's configured default (30 s).

        Returns:
            :class:`ClientCredentials` (``session_id`` derived from the token).

        Raises:
            ValueError: no API key.
            OdysseyAuthError: key refused.
            OdysseyUsageError: account limits.
            OdysseyQueueTimeoutError: no streamer freed up within ``queue_timeout``.
            OdysseyTimeoutError: no answer within ``timeout``.
            OdysseyConnectionError: the service could not be reached.
        """
        self._require_api_key("create_client_credentials()")
        queue = self._default_queue_timeout() if queue_timeout is None else queue_timeout
        deadline = _deadline(timeout) or Deadline(None)
        alloc = self._api.allocate(queue_timeout=queue, deadline=deadline)
        try:
            return ClientCredentials(
                signaling_url=alloc.signaling_url,
                session_token=alloc.session_token,
                expires_in=alloc.token_expires_in,
                capabilities=alloc.capabilities,
            )
        except ValueError as exc:  # the token is not a JWT with a session_id claim
            raise OdysseyConnectionError(
                f"the service returned an unusable session token: {exc}",
                session_id=alloc.session_id,
            ) from exc
