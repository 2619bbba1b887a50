"""The interactive protocol without I/O: messages, reply matching, the status machine.

Everything here is plain data and bookkeeping, safe from any thread, and
testable without a socket:

* the client's messages (PROTOCOL §6) and the checks their arguments get
  before anything is sent;
* :func:`parse_streamer_message`, which turns a ``streamerToClient`` JSON
  object into a typed :data:`StreamerEvent`;
* :class:`ReplyBook`, which pairs each reply with the request it answers;
* the connection status machine (§10), :func:`transition_allowed`.

Reply matching. The protocol has no request ids: the streamer answers the
requests of one kind *in order*, and ``update_acknowledged`` echoes the
applied prompt. So the oldest outstanding request of a kind owns the next
reply of that kind, with two refinements that keep one lost reply from
poisoning every later call (PITFALLS "Protocol"):

* a request whose caller gave up is *retired*, not removed: a late reply to
  it is recognised and dropped instead of being handed to a newer caller;
* replies come in order, so a reply that provably answers a newer request
  (the echoed prompt matches it, or no live request is older) means every
  older request of that kind will never be answered: their slots are dropped.

The echo is the *applied* prompt, which the streamer may have expanded: it
matches the request whose prompt it equals or, failing that, the longest
one it contains.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from .config import MAX_PROMPT_CHARS
from .types import BroadcastInfo, ConnectionStatus

__all__ = [
    "MAX_PROMPT_CHARS",
    "BroadcastMalformed",
    "BroadcastReady",
    "InteractAcknowledged",
    "ReplyBook",
    "ReplyKind",
    "ReplySlot",
    "StreamEnded",
    "StreamError",
    "StreamStarted",
    "StreamerEvent",
    "UnknownMessage",
    "check_bool",
    "check_prompt",
    "client_disconnecting_message",
    "end_message",
    "parse_streamer_message",
    "start_message",
    "transition_allowed",
    "update_message",
]

log = logging.getLogger("odyssey_sync.protocol")


ReplyKind = Literal["start", "interact", "end"]


# ----------------------------------------------------------------- arguments
def check_bool(name: str, value: Any) -> None:
    """``TypeError`` unless ``value`` is a real bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_prompt(prompt: Any, *, allow_empty: bool) -> None:
    """``TypeError`` / ``ValueError`` for a prompt the protocol would not accept."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not allow_empty and not prompt.strip():
        raise ValueError("prompt must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")


# ------------------------------------------------------------------ messages
def start_message(
    prompt: str,
    *,
    portrait: bool,
    image_data_url: str | None,
    broadcast: bool,
    bypass_prompt_expansion: bool | None,
) -> dict[str, Any]:
    """``interactive_stream_start`` (§6.3)."""
    message: dict[str, Any] = {
        "type": "interactive_stream_start",
        "prompt": prompt,
        "portrait": portrait,
        "input_image_base64": image_data_url,
        "broadcast": broadcast,
    }
    if bypass_prompt_expansion is not None:
        message["bypass_vlm_expansion"] = bypass_prompt_expansion
    return message


def update_message(prompt: str) -> dict[str, Any]:
    """``update`` (an interaction, §6.3)."""
    return {"type": "update", "prompt": prompt}


def end_message() -> dict[str, Any]:
    """``interactive_stream_end`` (§6.3)."""
    return {"type": "interactive_stream_end"}


def client_disconnecting_message() -> dict[str, Any]:
    """``client_disconnecting``, sent over signaling just before a clean close (§4)."""
    return {"type": "client_disconnecting"}


# -------------------------------------------------------------------- events
@dataclass(frozen=True)
class StreamStarted:
    stream_id: str
    applied_prompt: str | None


@dataclass(frozen=True)
class InteractAcknowledged:
    prompt: str


@dataclass(frozen=True)
class StreamEnded:
    pass


@dataclass(frozen=True)
class BroadcastReady:
    info: BroadcastInfo


@dataclass(frozen=True)
class BroadcastMalformed:
    detail: str


@dataclass(frozen=True)
class StreamError:
    reason: str
    message: str


@dataclass(frozen=True)
class UnknownMessage:
    kind: str


StreamerEvent = (
    StreamStarted | InteractAcknowledged | StreamEnded | BroadcastReady | BroadcastMalformed
    | StreamError | UnknownMessage
)


def _text(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    return value if isinstance(value, str) else ""


def parse_streamer_message(msg: dict[str, Any]) -> StreamerEvent:
    """A ``streamerToClient`` object (with a string ``type``) → its event (§6.4).

    Missing or mistyped fields take the reference client's defaults (``""``).
    """
    kind = msg["type"]
    if kind == "stream_started":
        applied = _text(msg, "applied_prompt")
        return StreamStarted(_text(msg, "stream_id"), applied or None)
    if kind == "update_acknowledged":
        return InteractAcknowledged(_text(msg, "prompt"))
    if kind == "stream_ended":
        return StreamEnded()
    if kind == "broadcast_ready":
        url, token, hls = _text(msg, "webrtc_url"), _text(msg, "spectator_token"), _text(
            msg, "broadcast_url"
        )
        if url and token:
            return BroadcastReady(BroadcastInfo(url, token, hls or None))
        return BroadcastMalformed("broadcast_ready without webrtc_url/spectator_token")
    if kind == "interactive_stream_error":
        return StreamError(_text(msg, "reason") or "unknown", _text(msg, "message"))
    return UnknownMessage(kind)


# ------------------------------------------------------------- reply matching
class ReplySlot:
    """One outstanding request: the caller waits on :attr:`future`."""

    __slots__ = ("echo", "future", "kind", "retired")

    def __init__(self, kind: ReplyKind, echo: str | None) -> None:
        self.kind = kind
        self.echo = echo
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.retired = False


class ReplyBook:
    """Outstanding requests per kind, matched to replies as the module docstring says.

    Every call arms its slot *before* its message is sent (a fast reply can
    never be lost) and a second caller never takes the first one's reply.
    Thread safety: every method may be called from any thread.
    """

    KINDS: tuple[ReplyKind, ...] = ("start", "interact", "end")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[ReplyKind, deque[ReplySlot]] = {kind: deque() for kind in self.KINDS}
        self._closed: BaseException | None = None
        #: late replies recognised and dropped (a timed-out caller's answer)
        self.late_replies = 0

    def arm(self, kind: ReplyKind, *, echo: str | None = None) -> ReplySlot:
        """A new slot at the back of ``kind``'s queue (already failed when closed).

        ``echo``: what the reply will echo back (the prompt of an interaction),
        used to match replies when one went missing.
        """
        slot = ReplySlot(kind, echo)
        with self._lock:
            if self._closed is not None:
                slot.future.set_exception(self._closed)
                return slot
            self._queues[kind].append(slot)
        return slot

    def _take(self, kind: ReplyKind, echo: str | None) -> ReplySlot | None:
        """The slot this reply answers (lock held); older, unanswerable slots are dropped."""
        queue = self._queues[kind]
        target: int | None = None
        if echo is not None:
            target = _echo_match(queue, echo)
        if target is None:
            # No usable echo: the oldest live request, or the oldest retired one
            # when nobody is waiting any more (a late reply).
            target = next((i for i, s in enumerate(queue) if not s.retired), None)
            if target is None and queue:
                target = 0
        if target is None:
            return None
        for _ in range(target):  # answered in order: these will never get a reply
            lost = queue.popleft()
            if not lost.retired:
                log.debug("a %s reply went missing; its caller is told so", kind)
                lost.future.set_exception(_lost_reply(kind))
        return queue.popleft()

    def resolve(self, kind: ReplyKind, value: Any, *, echo: str | None = None) -> bool:
        """Give ``value`` to the slot it answers; False when it answers nobody alive."""
        with self._lock:
            slot = self._take(kind, echo)
        if slot is None:
            return False
        if slot.retired:
            self.late_replies += 1
            log.debug("dropped a late %s reply (its caller had timed out)", kind)
            return False
        if not slot.future.done():
            slot.future.set_result(value)
        return True

    def fail(self, kind: ReplyKind, exc: BaseException) -> bool:
        """Fail the slot the next ``kind`` reply answers; False when none is waiting."""
        with self._lock:
            slot = self._take(kind, None)
        if slot is None or slot.retired:
            return False
        if not slot.future.done():
            slot.future.set_exception(exc)
        return True

    def retire(self, slot: ReplySlot) -> None:
        """The caller stopped waiting: a late reply to ``slot`` will be dropped."""
        with self._lock:
            slot.retired = True
        slot.future.cancel()

    def discard(self, slot: ReplySlot, exc: BaseException) -> None:
        """Remove a slot whose request never went out, failing it with ``exc``."""
        with self._lock:
            queue = self._queues[slot.kind]
            if slot in queue:
                queue.remove(slot)
        if not slot.future.done():
            slot.future.set_exception(exc)

    def waiting(self, kind: ReplyKind) -> int:
        """How many callers of ``kind`` are waiting (retired slots not counted)."""
        with self._lock:
            return sum(1 for s in self._queues[kind] if not s.retired)

    def close(self, exc: BaseException) -> None:
        """Fail every outstanding slot (and future ones) with ``exc`` — never drop them."""
        with self._lock:
            self._closed = exc
            slots = [s for q in self._queues.values() for s in q]
            for q in self._queues.values():
                q.clear()
        for slot in slots:
            if not slot.future.done():
                slot.future.set_exception(exc)


def _echo_match(queue: deque[ReplySlot], echo: str) -> int | None:
    """The slot an echoed prompt answers: equal, else the longest prompt it contains.

    A streamer may expand a prompt before echoing it ("a cat" → "a cat,
    cinematic lighting"), so containment counts too; a rewrite that keeps
    nothing of the prompt matches no slot, and order decides.
    """
    exact = next((i for i, s in enumerate(queue) if s.echo == echo), None)
    if exact is not None:
        return exact
    best: int | None = None
    for i, slot in enumerate(queue):
        if slot.echo and slot.echo in echo and (
            best is None or len(slot.echo) > len(queue[best].echo or "")
        ):
            best = i
    return best


def _lost_reply(kind: str) -> BaseException:
    from .errors import OdysseyConnectionError

    return OdysseyConnectionError(
        f"the streamer answered a later {kind} request first: this one's reply was lost"
    )


# ------------------------------------------------------------- status machine
_S = ConnectionStatus
# Allowed transitions (§10). Anything may go to DISCONNECTED; RECONNECTING is
# the resume path: a connected client whose connection was lost.
_TRANSITIONS: dict[ConnectionStatus, frozenset[ConnectionStatus]] = {
    _S.DISCONNECTED: frozenset({_S.AUTHENTICATING, _S.CONNECTING}),
    _S.FAILED: frozenset({_S.AUTHENTICATING, _S.CONNECTING}),
    _S.AUTHENTICATING: frozenset({_S.CONNECTING, _S.FAILED}),
    _S.CONNECTING: frozenset({_S.CONNECTING, _S.CONNECTED, _S.FAILED}),
    _S.CONNECTED: frozenset({_S.FAILED, _S.RECONNECTING}),
    _S.RECONNECTING: frozenset({_S.RECONNECTING, _S.CONNECTED, _S.FAILED}),
}


def transition_allowed(old: ConnectionStatus, new: ConnectionStatus) -> bool:
    """Whether the status machine may go from ``old`` to ``new`` (any → DISCONNECTED is)."""
    return new is ConnectionStatus.DISCONNECTED or new in _TRANSITIONS.get(old, frozenset())
