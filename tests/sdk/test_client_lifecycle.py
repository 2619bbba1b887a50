"""One lifecycle: teardown on one deadline, `with` bodies that raise, lost replies."""

from __future__ import annotations

import inspect
import threading
import time

import pytest

from odyssey_sync import SpectatorConnection
from odyssey_sync.client import Odyssey
from odyssey_sync.errors import OdysseyTimeoutError
from odyssey_sync.local import LocalOdyssey
from odyssey_sync.types import ConnectionStatus

pytestmark = pytest.mark.e2e


def test_a_lost_acknowledgement_does_not_poison_later_calls(server: LocalOdyssey) -> None:
    """The server withholds one acknowledgement; every later call still succeeds."""
    with Odyssey(server.api_key, api_url=server.url) as client:
        client.connect()
        client.start_stream("lost ack")
        server.faults.set(drop_acks=1)
        with pytest.raises(OdysseyTimeoutError, match="interact"):
            client.interact("never acknowledged", timeout=1.0)
        for prompt in ("jump", "run", "sit down"):
            assert prompt in client.interact(prompt, timeout=5)
        client.end_stream(timeout=5)
        assert client.start_stream("again", timeout=5)
        client.end_stream(timeout=5)


def test_disconnect_and_close_share_one_signature() -> None:
    for method in (Odyssey.disconnect, Odyssey.close, SpectatorConnection.disconnect,
                   SpectatorConnection.close):
        timeout = inspect.signature(method).parameters["timeout"]
        assert timeout.annotation in ("float | None", float | None), method


def test_bad_timeout_is_refused_before_disconnecting(server: LocalOdyssey) -> None:
    with Odyssey(server.api_key, api_url=server.url) as client:
        client.connect()
        with pytest.raises(TypeError, match="timeout"):
            client.disconnect(timeout="x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            client.disconnect(timeout=-1)
        assert client.is_connected  # nothing was torn down
        client.disconnect(timeout=None)  # None waits (each step still capped)
        assert client.current_status is ConnectionStatus.DISCONNECTED


def test_teardown_runs_on_one_deadline(server: LocalOdyssey) -> None:
    """A callback that holds teardown up: disconnect(timeout=N) raises after about N s."""
    release = threading.Event()

    def slow_goodbye() -> None:
        release.wait(4.0)

    client = Odyssey(server.api_key, api_url=server.url)
    try:
        client.connect(on_disconnected=slow_goodbye)
        started = time.monotonic()
        with pytest.raises(OdysseyTimeoutError, match="disconnect"):
            client.disconnect(timeout=0.5)
        # one budget for every step, not 5 + 2 + 5 + 5 s
        assert time.monotonic() - started < 3.0
        assert client.current_status is ConnectionStatus.DISCONNECTED
    finally:
        release.set()
        client.close()


def test_a_with_body_that_raises_cancels_queued_callbacks(server: LocalOdyssey) -> None:
    """anyio's rule: after an exception in the body, pending work is cancelled, not drained."""
    calls: dict[str, list[object]] = {"raised": [], "clean": []}
    for case in ("raised", "clean"):
        gate = threading.Event()

        def on_connected(gate: threading.Event = gate) -> None:
            gate.wait(1.0)  # hold the event worker: later events queue up behind it

        def on_disconnected(case: str = case) -> None:
            calls[case].append("disconnected")

        try:
            with Odyssey(server.api_key, api_url=server.url) as client:
                client.connect(on_connected=on_connected, on_disconnected=on_disconnected)
                if case == "raised":
                    raise KeyError("body failed")
        except KeyError:
            pass
        gate.set()
    assert calls["raised"] == []
    assert calls["clean"] == ["disconnected"]
