"""odyssey_sync._protocol: status machine, message parsing, reply matching (no I/O)."""

from __future__ import annotations

import threading

import pytest

from odyssey_sync._protocol import (
    MAX_PROMPT_CHARS,
    BroadcastMalformed,
    BroadcastReady,
    InteractAcknowledged,
    ReplyBook,
    StreamEnded,
    StreamError,
    StreamStarted,
    UnknownMessage,
    check_prompt,
    parse_streamer_message,
    start_message,
    transition_allowed,
)
from odyssey_sync.errors import OdysseyConnectionError, OdysseyStreamError
from odyssey_sync.types import ConnectionStatus as S


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        (S.DISCONNECTED, S.AUTHENTICATING, True),
        (S.DISCONNECTED, S.CONNECTING, True),  # connect_with_credentials
        (S.FAILED, S.AUTHENTICATING, True),
        (S.AUTHENTICATING, S.CONNECTING, True),
        (S.AUTHENTICATING, S.FAILED, True),
        (S.CONNECTING, S.CONNECTING, True),  # re-announced per attempt
        (S.CONNECTING, S.CONNECTED, True),
        (S.CONNECTED, S.FAILED, True),
        (S.CONNECTED, S.DISCONNECTED, True),
        (S.CONNECTED, S.RECONNECTING, True),  # resume: a lost connection
        (S.RECONNECTING, S.CONNECTED, True),
        (S.RECONNECTING, S.FAILED, True),
        (S.FAILED, S.DISCONNECTED, True),
        (S.DISCONNECTED, S.CONNECTED, False),
        (S.CONNECTED, S.CONNECTING, False),
        (S.AUTHENTICATING, S.CONNECTED, False),
        (S.FAILED, S.CONNECTED, False),
        (S.CONNECTING, S.RECONNECTING, False),
    ],
)
def test_status_transitions(old: S, new: S, ok: bool) -> None:
    assert transition_allowed(old, new) is ok


# ---------------------------------------------------------------- messages


def test_parse_each_streamer_message() -> None:
    assert parse_streamer_message(
        {"type": "stream_started", "stream_id": "s1", "applied_prompt": "a cat"}
    ) == StreamStarted("s1", "a cat")
    assert parse_streamer_message({"type": "stream_started"}) == StreamStarted("", None)
    assert parse_streamer_message(
        {"type": "update_acknowledged", "prompt": 3}
    ) == InteractAcknowledged("")
    assert parse_streamer_message({"type": "stream_ended"}) == StreamEnded()
    ready = parse_streamer_message(
        {"type": "broadcast_ready", "webrtc_url": "http://x/whep", "spectator_token": "t"}
    )
    assert isinstance(ready, BroadcastReady) and ready.info.hls_url is None
    assert isinstance(parse_streamer_message(
        {"type": "broadcast_ready", "webrtc_url": "http://x"}), BroadcastMalformed)
    assert parse_streamer_message(
        {"type": "interactive_stream_error", "message": "m"}
    ) == StreamError("unknown", "m")
    assert parse_streamer_message({"type": "novel"}) == UnknownMessage("novel")


def test_start_message_sends_bypass_only_when_given() -> None:
    plain = start_message("p", portrait=True, image_data_url=None, broadcast=False,
                          bypass_prompt_expansion=None)
    assert "bypass_vlm_expansion" not in plain and plain["input_image_base64"] is None
    flagged = start_message("p", portrait=False, image_data_url="data:x", broadcast=True,
                            bypass_prompt_expansion=True)
    assert flagged["bypass_vlm_expansion"] is True and flagged["portrait"] is False


def test_prompt_checks() -> None:
    check_prompt("", allow_empty=True)
    with pytest.raises(ValueError, match="empty"):
        check_prompt("  ", allow_empty=False)
    with pytest.raises(ValueError, match=str(MAX_PROMPT_CHARS)):
        check_prompt("x" * (MAX_PROMPT_CHARS + 1), allow_empty=True)
    with pytest.raises(TypeError):
        check_prompt(b"bytes", allow_empty=True)


# ------------------------------------------------------------ reply matching


def test_replies_resolve_oldest_first() -> None:
    book = ReplyBook()
    a, b = book.arm("interact"), book.arm("interact")
    assert book.resolve("interact", "first")
    assert book.resolve("interact", "second")
    assert (a.future.result(0), b.future.result(0)) == ("first", "second")
    assert not book.resolve("interact", "nobody")


def test_kinds_are_independent() -> None:
    book = ReplyBook()
    s, i = book.arm("start"), book.arm("interact")
    book.resolve("interact", "ack")
    assert i.future.result(0) == "ack" and not s.future.done()
    book.fail("start", OdysseyStreamError("no"))
    with pytest.raises(OdysseyStreamError):
        s.future.result(0)


def test_a_retired_slot_drops_its_late_reply() -> None:
    book = ReplyBook()
    timed_out = book.arm("end")
    book.retire(timed_out)  # its caller gave up
    assert not book.resolve("end", None)  # the late reply: recognised and dropped
    nxt = book.arm("end")
    assert book.resolve("end", None)
    assert nxt.future.done() and book.late_replies == 1


def test_a_lost_reply_does_not_shift_later_ones() -> None:
    """One reply never comes; every later caller still gets its own (PITFALLS 'Protocol')."""
    book = ReplyBook()
    lost = book.arm("interact", echo="jump")
    book.retire(lost)  # timed out: the server never acknowledged "jump"
    later = [book.arm("interact", echo=p) for p in ("run", "sit", "wave")]
    for prompt, slot in zip(("run", "sit", "wave"), later, strict=True):
        assert book.resolve("interact", prompt, echo=prompt)
        assert slot.future.result(0) == prompt
    assert book.waiting("interact") == 0


def test_without_echo_a_reply_goes_to_the_oldest_live_caller() -> None:
    book = ReplyBook()
    lost = book.arm("start")
    book.retire(lost)
    live = book.arm("start")
    assert book.resolve("start", "stream-2")
    assert live.future.result(0) == "stream-2"
    assert book.waiting("start") == 0


def test_an_echo_proves_older_requests_lost() -> None:
    """Replies come in order: an answer to 'b' means 'a' will never be answered."""
    book = ReplyBook()
    a, b = book.arm("interact", echo="a"), book.arm("interact", echo="b")
    assert book.resolve("interact", "b", echo="b")
    assert b.future.result(0) == "b"
    with pytest.raises(OdysseyConnectionError, match="lost"):
        a.future.result(0)


def test_an_expanded_echo_falls_back_to_order() -> None:
    book = ReplyBook()
    slot = book.arm("interact", echo="cat")
    assert book.resolve("interact", "a fluffy cat", echo="a fluffy cat")
    assert slot.future.result(0) == "a fluffy cat"


def test_discard_removes_a_slot_that_never_went_out() -> None:
    book = ReplyBook()
    lost, kept = book.arm("end"), book.arm("end")
    book.discard(lost, OdysseyConnectionError("send failed"))
    with pytest.raises(OdysseyConnectionError):
        lost.future.result(0)
    book.resolve("end", None)
    assert kept.future.done() and book.waiting("end") == 0


def test_close_fails_everything_and_later_arms() -> None:
    book = ReplyBook()
    slots = [book.arm(k) for k in ReplyBook.KINDS]
    book.close(OdysseyConnectionError("gone"))
    for slot in [*slots, book.arm("start")]:
        with pytest.raises(OdysseyConnectionError):
            slot.future.result(0)


def test_reply_book_is_thread_safe() -> None:
    book = ReplyBook()
    slots = []
    lock = threading.Lock()

    def arm() -> None:
        for _ in range(200):
            slot = book.arm("interact")
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=arm, name=f"test-arm{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(800):
        assert book.resolve("interact", n)
    assert sorted(s.future.result(0) for s in slots) == list(range(800))


def test_an_expanded_echo_still_finds_its_request() -> None:
    """The local server (and the service) echo the prompt after expansion."""
    book = ReplyBook()
    late = book.arm("interact", echo="slow one")
    book.retire(late)
    nxt = book.arm("interact", echo="second")
    assert not book.resolve("interact", "slow one, cinematic", echo="slow one, cinematic")
    assert book.resolve("interact", "second, cinematic", echo="second, cinematic")
    assert nxt.future.result(0) == "second, cinematic"
