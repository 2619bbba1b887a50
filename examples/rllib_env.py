"""Train an RLlib agent on an Odyssey world (documented, not run in CI).

RLlib takes the environment through ``register_env``; each env runner owns
one :class:`~odyssey_sync.gym.OdysseyEnv`, i.e. one session, so
``num_env_runners × num_envs_per_env_runner`` must stay within the account's
concurrent-stream limit. The ``Discrete`` action space (0 = no-op, then one
action per prompt) is what PPO expects, and 84×84 observations come resized
from the client's native conversion pass.

The reward here is a toy (how bright the picture is); write your own
``reward_fn(obs, info)``. Needs ``pip install "odyssey-sync[ray]" "ray[rllib]" torch``
(heavy, which is why the test-suite only compiles this file)::

    ODYSSEY_API_KEY=ody_... python examples/rllib_env.py --iterations 5
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

PROMPTS = ["The drone climbs", "The drone descends", "The drone turns toward the light"]


def brightness(obs: np.ndarray, info: dict[str, Any]) -> float:
    """Toy reward: mean brightness in [0, 1]."""
    return float(obs.mean()) / 255.0


def make_env(config: dict[str, Any]) -> Any:
    """RLlib's env creator: ``config`` is the ``env_config`` below."""
    from odyssey_sync.gym import OdysseyEnv

    return OdysseyEnv(**config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--env-runners", type=int, default=2, help="sessions at once")
    args = parser.parse_args()

    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.tune.registry import register_env

    register_env("odyssey", make_env)
    env_config = {
        "api_key": os.environ["ODYSSEY_API_KEY"],
        "prompt": "A drone above a valley at dusk",
        "prompts": PROMPTS,
        "obs_size": (84, 84),
        "control_hz": 10,
        "max_episode_steps": 200,
        "reward_fn": brightness,
    }
    ray.init()
    try:
        config = (
            PPOConfig()
            .environment("odyssey", env_config=env_config)
            .env_runners(num_env_runners=args.env_runners, num_envs_per_env_runner=1)
            .training(train_batch_size_per_learner=400, minibatch_size=100)
        )
        algo = config.build_algo()
        for i in range(args.iterations):
            result = algo.train()
            runners = result.get("env_runners", {})
            print(f"iteration {i}: episode_return_mean={runners.get('episode_return_mean')}")
        algo.stop()
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
