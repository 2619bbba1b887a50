"""OdysseyEnv: the Gymnasium environment against the local server over real sockets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

gymnasium = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from odyssey_sync.gym import ENV_ID, OdysseyEnv  # noqa: E402
from odyssey_sync.local import LocalOdyssey  # noqa: E402
from odyssey_sync.local.context import ServerConfig  # noqa: E402
from tests.support import live_stream_ids, warm_up  # noqa: E402

pytestmark = pytest.mark.e2e

SIZE = (320, 176)
FPS = 20
#: nothing listens here: a call that reaches the network fails with a connection error
DEAD_URL = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOdyssey]:
    with LocalOdyssey(
        size=SIZE, fps=FPS, capacity=3, max_concurrent_per_key=3, recordings=False,
        data_dir=tmp_path_factory.mktemp("gym"),
    ) as srv:
        warm_up(srv)
        yield srv


def make(server: LocalOdyssey, **kwargs: Any) -> Any:
    kwargs.setdefault("obs_size", SIZE)
    kwargs.setdefault("prompt", "A lighthouse on a cliff")
    return gymnasium.make(ENV_ID, api_key=server.api_key, api_url=server.url, **kwargs)


# ---------------------------------------------------------------- no network at all
def test_registered_as_nondeterministic() -> None:
    spec = gymnasium.spec(ENV_ID)
    assert spec.nondeterministic is True
    assert spec.entry_point == "odyssey_sync.gym:OdysseyEnv"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"control_hz": 0}, ValueError),
        ({"control_hz": "10"}, TypeError),
        ({"obs_size": (1, 84)}, ValueError),
        ({"obs_size": (84.0, 84)}, TypeError),
        ({"prompts": []}, ValueError),
        ({"prompts": ["ok", " "]}, ValueError),
        ({"action_space": gymnasium.spaces.Discrete(2)}, ValueError),
        ({"render_mode": "human"}, ValueError),
        ({"max_episode_steps": 0}, ValueError),
        ({"reward_fn": 3}, TypeError),
        ({"prompt": None}, TypeError),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        OdysseyEnv("ody_test", api_url=DEAD_URL, **kwargs)


def test_action_spaces() -> None:
    text = OdysseyEnv("ody_test", api_url=DEAD_URL, max_prompt_chars=40)
    assert isinstance(text.action_space, gymnasium.spaces.Text)
    assert text.action_space.max_length == 40 and text.action_space.contains("")
    assert text.observation_space.shape == (704, 1280, 3)  # full size without obs_size
    discrete = OdysseyEnv("ody_test", api_url=DEAD_URL, prompts=["left", "right"],
                          obs_size=(84, 84))
    assert discrete.action_space == gymnasium.spaces.Discrete(3)
    assert discrete.observation_space.shape == (84, 84, 3)
    custom = OdysseyEnv("ody_test", api_url=DEAD_URL,
                        action_space=gymnasium.spaces.Box(-1, 1, (1,)),
                        action_to_prompt=lambda a: "left" if a[0] < 0 else None)
    assert isinstance(custom.action_space, gymnasium.spaces.Box)
    for env in (text, discrete, custom):
        env.close()
        env.close()  # idempotent


def test_actions_outside_the_space_raise_before_any_network_call() -> None:
    # Nothing listens at DEAD_URL and the env never connected: the ValueError
    # (and not a connection error or "call reset() first") proves the order.
    env = OdysseyEnv("ody_test", api_url=DEAD_URL, prompts=["left", "right"], obs_size=(84, 84))
    try:
        for bad in (3, -1, "left", 1.5):
            with pytest.raises(ValueError, match="outside the action space"):
                env.step(bad)
        text = OdysseyEnv("ody_test", api_url=DEAD_URL, max_prompt_chars=5)
        for bad_text in ("much too long", "caf\u00e9", 7):
            with pytest.raises(ValueError, match="outside the action space"):
                text.step(bad_text)
        text.close()
        with pytest.raises(ValueError, match="unknown reset option"):
            env.reset(options={"promt": "typo"})
        with pytest.raises(RuntimeError, match="reset"):
            env.step(0)
    finally:
        env.close()


# ---------------------------------------------------------------- against the server
def test_check_env_passes(server: LocalOdyssey) -> None:
    env = make(server, max_prompt_chars=24, obs_size=(84, 84))  # resized by the client
    try:
        assert env.observation_space.shape == (84, 84, 3)
        check_env(env.unwrapped)
    finally:
        env.close()


def test_steps_follow_the_control_rate_with_fresh_frames(server: LocalOdyssey) -> None:
    env = make(server, prompts=["turn left", "turn right"], control_hz=10)
    try:
        obs, info = env.reset(seed=1)
        assert obs.shape == (SIZE[1], SIZE[0], 3) and obs.dtype == np.uint8
        assert info["stream_id"] == env.unwrapped.stream_id and info["step"] == 0
        started = time.monotonic()
        seqs = [info["frame_seq"]]
        acks: list[str] = []
        for i in range(12):
            obs, reward, terminated, truncated, info = env.step(1 if i == 0 else 0)
            seqs.append(info["frame_seq"])
            if info["ack"] is not None:
                acks.append(info["ack"])
            assert (reward, terminated, truncated) == (0.0, False, False)
            assert info["frame_age"] >= 0 and info["late"] >= 0 and info["step"] == i + 1
        elapsed = time.monotonic() - started
        # A step returns at the next tick, never earlier: 12 steps span >= 11 periods.
        assert elapsed >= 11 * 0.1
        # The world ran between steps: newer frames each time (20 fps source, 10 Hz loop).
        assert seqs == sorted(seqs) and seqs[-1] > seqs[0]
        assert acks and "turn left" in acks[0]
    finally:
        env.close()


def test_reset_mid_episode_starts_a_new_stream(server: LocalOdyssey) -> None:
    env = make(server, control_hz=20)
    try:
        _, first = env.reset()
        env.step("")
        env.step("the beam turns")
        _, second = env.reset(options={"prompt": "A harbour at night"})
        assert second["stream_id"] != first["stream_id"]
        assert first["stream_id"] not in live_stream_ids(server)  # ended, not leaked
        _, info = env.step("")[0], env.step("")[4]
        assert info["stream_id"] == second["stream_id"]
    finally:
        env.close()
    assert second["stream_id"] not in live_stream_ids(server)


def test_truncation_reward_and_termination_hooks(server: LocalOdyssey) -> None:
    def reward(obs: Any, info: dict[str, Any]) -> float:
        return float(info["step"])

    def done(obs: Any, info: dict[str, Any]) -> bool:
        return bool(info["step"] >= 4)

    env = make(server, control_hz=20, max_episode_steps=3, reward_fn=reward,
               render_mode="rgb_array")
    try:
        env.reset()
        results = [env.step("") for _ in range(3)]
        assert [r[1] for r in results] == [1.0, 2.0, 3.0]
        assert [r[3] for r in results] == [False, False, True]  # truncated at step 3
        frame = env.render()
        assert frame.shape == (SIZE[1], SIZE[0], 3) and frame.dtype == np.uint8
    finally:
        env.close()
    # with small observations, render() still shows the whole picture at full size
    env = make(server, control_hz=20, obs_size=(48, 32), render_mode="rgb_array")
    try:
        obs, _ = env.reset()
        obs, *_ = env.step("")
        assert obs.shape == (32, 48, 3)
        frame = env.render()
        assert frame.shape == (SIZE[1], SIZE[0], 3) and float(frame.std()) > 1.0
    finally:
        env.close()
    env = make(server, control_hz=20, terminate_fn=done)
    try:
        env.reset()
        terminated = [env.step("")[2] for _ in range(4)]
        assert terminated == [False, False, False, True]
    finally:
        env.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_env_of_two_steps_at_the_requested_rate(server: LocalOdyssey, mode: str) -> None:
    envs = gymnasium.make_vec(
        ENV_ID, num_envs=2, vectorization_mode=mode, api_key=server.api_key,
        api_url=server.url, obs_size=(64, 48), prompts=["left", "right"], control_hz=10,
        prompt="Two robots in a field",
    )
    try:
        obs, infos = envs.reset(seed=3)
        assert obs.shape == (2, 48, 64, 3)
        assert len(set(infos["stream_id"])) == 2  # two sessions, two streams
        started = time.monotonic()
        for _ in range(6):
            obs, _, terminated, _, infos = envs.step(np.array([1, 0]))
        assert time.monotonic() - started >= 5 * 0.1
        assert obs.shape == (2, 48, 64, 3) and obs.any() and not terminated.any()
        assert (infos["frame_seq"] > 0).all()
    finally:
        envs.close()


@pytest.mark.skipif("stream_limit" not in ServerConfig.__dataclass_fields__,
                    reason="needs LocalOdyssey(stream_limit=...) from the resume work (issue 11)")
def test_an_episode_crosses_stream_limit_handovers(tmp_path: Any) -> None:
    # Room for the make-before-break handover: two sessions of one key.
    with LocalOdyssey(size=SIZE, fps=FPS, capacity=2, max_concurrent_per_key=2,
                      recordings=False, data_dir=tmp_path, stream_limit=2.0) as srv:
        env = gymnasium.make(ENV_ID, api_key=srv.api_key, api_url=srv.url, obs_size=SIZE,
                             control_hz=10, prompt="A long road trip",
                             client_options={"stream_limit": 2.0})
        try:
            _, info = env.reset()
            streams = [info["stream_id"]]
            for _ in range(50):  # 5 s of episode: two or more handovers
                _, _, terminated, truncated, info = env.step("")
                assert not (terminated or truncated)
                streams.append(info["stream_id"])
        finally:
            env.close()
    distinct = list(dict.fromkeys(streams))
    assert len(distinct) >= 2, distinct
    # Each stream's observations are contiguous: no flip-flopping across the seam.
    assert [s for i, s in enumerate(streams) if i == 0 or s != streams[i - 1]] == distinct
