"""A world-model stream as a Gymnasium environment: :class:`OdysseyEnv`.

Needs the ``gym`` extra (``pip install "odyssey-sync[gym]"``). Importing this
module registers the environment::

    import gymnasium
    import odyssey_sync.gym  # registers "odyssey_sync/Odyssey-v0"

    env = gymnasium.make("odyssey_sync/Odyssey-v0", api_key="ody_...",
                         prompt="A robot arm over a table", obs_size=(128, 128),
                         prompts=["move left", "move right"], control_hz=10)
    obs, info = env.reset(seed=0)
    for _ in range(100):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    env.close()

Real time. The world keeps running between steps, as a robot's does: the
stream is never paused and frames are never queued for the agent. ``step``
hands the action's interaction (if any) to a sender thread and returns the
newest frame at the next tick of ``control_hz``. A step called after its tick
returns at once with the newest frame and says how late it was
(``info["late"]``); the schedule then continues on the same grid.

Observations are ``Box(0, 255, (height, width, 3), uint8)`` RGB frames at
``obs_size`` (``(width, height)``), resized by the client in its native
conversion pass (``Odyssey(frame_size=...)``): no full-size picture is
converted when a small one is asked for. Each observation is a new array.

Actions, one of:

* default: ``Text`` of printable ASCII up to ``max_prompt_chars``; a blank
  text is a no-op, anything else is sent as an interaction prompt;
* ``prompts=[...]``: ``Discrete(len(prompts) + 1)``, 0 the no-op and ``i`` the
  prompt ``prompts[i - 1]`` (what Stable-Baselines3 and RLlib can use);
* ``action_space=`` with ``action_to_prompt=``: any space, mapped to a prompt
  (``None`` or blank for no-op) by your function.

An action outside the space raises ``ValueError`` before anything is sent.

Threads: the client's (see :mod:`odyssey_sync.client`) plus one
``odyssey-env-N-actions`` thread that sends interactions; all joined by
:meth:`OdysseyEnv.close`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, SupportsFloat

import numpy as np
import numpy.typing as npt

try:
    import gymnasium
    from gymnasium import spaces
except ModuleNotFoundError as exc:  # pragma: no cover - only without the extra
    raise ModuleNotFoundError(
        f"odyssey_sync.gym needs Gymnasium ({exc}); pip install \"odyssey-sync[gym]\"",
        name=exc.name) from exc

from ._frames import VideoFrame
from ._protocol import MAX_PROMPT_CHARS
from .client import Odyssey
from .errors import OdysseyStreamError

__all__ = ["ENV_ID", "PRINTABLE", "OdysseyEnv"]

#: the id under which :class:`OdysseyEnv` is registered with Gymnasium
ENV_ID = "odyssey_sync/Odyssey-v0"
#: the characters of the default ``Text`` action space (printable ASCII)
PRINTABLE = "".join(chr(c) for c in range(32, 127))
#: the service's picture sizes (width, height): the observation size without ``obs_size``
_FULL_SIZE = {False: (1280, 704), True: (704, 1280)}
#: interactions sent but not yet acknowledged before ``step`` waits for the oldest
_MAX_IN_FLIGHT = 4
_RESET_OPTIONS = frozenset({"prompt", "image", "portrait"})
_env_ids = itertools.count(1)

Obs = npt.NDArray[np.uint8]
InfoFn = Callable[[Obs, dict[str, Any]], Any]


class OdysseyEnv(gymnasium.Env[Obs, Any]):
    """One Odyssey session as a real-time Gymnasium environment.

    Construction checks every argument and does no I/O; the first
    :meth:`reset` connects. Use ``gymnasium.make(ENV_ID, ...)`` or build it
    directly; both accept the same keyword arguments.

    Args:
        api_key: the account's API key (needed by the first :meth:`reset`,
            which raises ``OdysseyAuthError`` without one).
        api_url: REST base URL (e.g. ``LocalOdyssey().url``); ``None`` = the
            client's default.
        prompt: the prompt each episode starts with (``reset`` may override).
        image: optional start image of each episode (path, bytes, PIL image,
            RGB array).
        portrait: 704×1280 streams when True, 1280×704 when False.
        control_hz: steps per second (the tick rate of :meth:`step`), > 0.
        obs_size: ``(width, height)`` of observations; ``None`` = the stream's
            full size (1280×704 landscape, 704×1280 portrait).
        prompts: named interactions, giving a ``Discrete(len(prompts) + 1)``
            action space (0 = no-op).
        action_space: your own action space (with ``action_to_prompt``).
        action_to_prompt: maps an action of ``action_space`` to a prompt
            (``None`` or blank = no-op); give both or neither.
        max_prompt_chars: longest text action of the default ``Text`` space.
        max_episode_steps: truncate after this many steps (``None`` = never;
            ``gymnasium.make(max_episode_steps=...)`` does the same with a wrapper).
        reward_fn: ``reward_fn(obs, info) -> float`` (default: 0.0).
        terminate_fn: ``terminate_fn(obs, info) -> bool`` (default: never).
        render_mode: ``None`` or ``"rgb_array"`` (:meth:`render` returns the
            newest frame as the client delivers it).
        resume: keep the episode going across the service's stream and
            connection limits (``Odyssey(resume=True)``); episodes may then run
            longer than 150 s.
        max_frame_age: refuse frames older than this many seconds (wait up to
            ``timeout`` for a fresher one); ``None`` = take the newest frame whatever its age.
        timeout: seconds any one blocking step of the environment may take
            (connect, start, end, waiting for a frame).
        client_options: more :class:`~odyssey_sync.Odyssey` options
            (``connect_timeout``, ``codec`` preferences, ...).

    Raises:
        TypeError / ValueError: a bad argument (before any network call).
    """

    # gymnasium declares ``metadata`` an instance attribute, hence no ClassVar
    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": None}  # noqa: RUF012

    def __init__(
        self,
        api_key: str | None = None,
        *,
        api_url: str | None = None,
        prompt: str = "",
        image: Any = None,
        portrait: bool = False,
        control_hz: float = 10.0,
        obs_size: tuple[int, int] | None = None,
        prompts: Sequence[str] | None = None,
        action_space: gymnasium.Space[Any] | None = None,
        action_to_prompt: Callable[[Any], str | None] | None = None,
        max_prompt_chars: int = 256,
        max_episode_steps: int | None = None,
        reward_fn: InfoFn | None = None,
        terminate_fn: InfoFn | None = None,
        render_mode: str | None = None,
        resume: bool = True,
        max_frame_age: float | None = None,
        timeout: float = 30.0,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        _check_prompt_arg("prompt", prompt)
        if not isinstance(portrait, bool) or not isinstance(resume, bool):
            raise TypeError("portrait and resume must be bools")
        self._period = 1.0 / _positive("control_hz", control_hz)
        self._timeout = _positive("timeout", timeout)
        self._max_frame_age = (
            None if max_frame_age is None else _positive("max_frame_age", max_frame_age)
        )
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, int)
            or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps must be an int >= 1 or None, not "
                             f"{max_episode_steps!r}")
        for name, fn in (("reward_fn", reward_fn), ("terminate_fn", terminate_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', not {render_mode!r}")
        self.control_hz = 1.0 / self._period
        self.metadata = {**self.metadata, "render_fps": self.control_hz}
        self.obs_size = _check_size(obs_size) if obs_size is not None else None
        width, height = self.obs_size or _FULL_SIZE[portrait]
        self._obs_shape = (height, width, 3)
        self.observation_space = spaces.Box(0, 255, self._obs_shape, np.uint8)
        self.action_space, self._to_prompt = _action_mapping(
            prompts, action_space, action_to_prompt, max_prompt_chars)
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self._prompt = prompt
        self._image = image
        self._portrait = portrait
        self._reward_fn = reward_fn
        self._terminate_fn = terminate_fn
        options = dict(client_options or {})
        if api_url is not None:
            options["api_url"] = api_url
        options.update(frame_format="rgb24", resume=resume)
        if self.obs_size is not None:
            options["frame_size"] = self.obs_size
        self._client = Odyssey(api_key, **options)  # validates the options, no I/O
        self._id = next(_env_ids)
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight: deque[concurrent.futures.Future[str]] = deque()
        self._acks: deque[str] = deque()
        self._acks_lock = threading.Lock()
        self._next_tick = 0.0
        self._last_seq = 0
        self._steps = 0
        self._stream_id: str | None = None
        self._episode_open = False
        self._closed = False

    # ------------------------------------------------------------------ properties
    @property
    def client(self) -> Odyssey:
        """The :class:`~odyssey_sync.Odyssey` client this environment drives."""
        return self._client

    @property
    def stream_id(self) -> str | None:
        """The id of the current episode's stream (``None`` before :meth:`reset`)."""
        return self._stream_id

    def __repr__(self) -> str:
        size = f"{self._obs_shape[1]}x{self._obs_shape[0]}"
        return f"<OdysseyEnv {size} @ {self.control_hz:g} Hz action_space={self.action_space}>"

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        """End the running stream (if any) and start a new episode's stream.

        Blocking: connects on first use (the same connection serves later
        episodes), ends the previous stream, starts a new one and waits for its
        first frame, each step within ``timeout`` seconds.

        Args:
            seed: seeds ``self.np_random`` (the world itself is not seedable).
            options: ``{"prompt": str, "image": ..., "portrait": bool}``, each
                overriding the constructor's value for this episode.

        Returns:
            The first observation and ``info`` (see :meth:`step`).

        Raises:
            ValueError / TypeError: unknown or bad options (before any network call).
            RuntimeError: the environment was closed.
            OdysseyError: connecting or starting the stream failed (typed, as
                the client raises them).
        """
        super().reset(seed=seed)
        prompt, image, portrait = self._episode_options(options)
        self._require_open()
        client = self._client
        self._drain_sender()
        if not client.is_connected:
            client.connect(on_interact_acknowledged=self._on_ack, timeout=self._timeout)
        if self._episode_open and client.current_stream_id is not None:
            # The stream may have ended on its own; a new one starts below either way.
            with contextlib.suppress(OdysseyStreamError):
                client.end_stream(timeout=self._timeout)
        self._episode_open = False
        with self._acks_lock:
            self._acks.clear()
        self._stream_id = client.start_stream(
            prompt, portrait=portrait, image=image, timeout=self._timeout)
        self._episode_open = True
        self._steps = 0
        frame = self._client.get_latest_frame(**self._frame_wait())
        try:
            obs = self._observation(frame)
            info = self._info(frame, late=0.0, sent=None, skipped=0, step=0)
        finally:
            frame.release()
        self._last_seq = info["frame_seq"]
        self._next_tick = time.monotonic() + self._period
        return obs, info

    def step(self, action: Any) -> tuple[Obs, SupportsFloat, bool, bool, dict[str, Any]]:
        """Send the action's interaction and return the newest frame at the next tick.

        Blocking until the next tick of ``control_hz`` (not at all when the
        call is already late). The interaction is handed to the sender thread,
        so the acknowledgement round trip does not delay the step; it shows up
        in the ``info`` of the step during which it arrived.

        Returns:
            ``(obs, reward, terminated, truncated, info)``; ``info`` holds
            ``stream_id``, ``frame_seq``, ``frame_age`` (seconds since the
            frame arrived), ``frame_timestamp_ms``, ``ack`` (the prompt the
            world acknowledged since the previous step, or ``None``), ``prompt``
            (what this step sent, or ``None``), ``frames_skipped`` (frames that
            arrived since the previous observation and were not returned),
            ``late`` (seconds the call came after its tick) and ``step``.

        Raises:
            ValueError: ``action`` is outside :attr:`action_space` (nothing sent).
            RuntimeError: called before :meth:`reset` or after :meth:`close`.
            OdysseyError: an earlier interaction failed, the connection was
                lost, or no frame arrived within ``timeout``.
        """
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside the action space {self.action_space}")
        prompt = self._to_prompt(action)
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
            raise ValueError(f"action_to_prompt returned {type(prompt).__name__}, "
                             "not a prompt string (or None)")
        self._require_open()
        if not self._episode_open:
            raise RuntimeError("call reset() before step()")
        sent = prompt if prompt and prompt.strip() else None
        self._collect_sent()
        if sent is not None:
            self._send(sent)
        late = self._wait_for_tick()
        frame = self._client.get_latest_frame(**self._frame_wait())
        try:
            obs = self._observation(frame)
            skipped = max(0, frame.seq - self._last_seq - 1)
            info = self._info(frame, late=late, sent=sent, skipped=skipped,
                              step=self._steps + 1)
        finally:
            frame.release()
        self._last_seq = info["frame_seq"]
        self._steps += 1
        reward = float(self._reward_fn(obs, info)) if self._reward_fn is not None else 0.0
        terminated = self._terminate_fn is not None and bool(self._terminate_fn(obs, info))
        truncated = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
        return obs, reward, terminated, truncated, info

    def render(self) -> Obs | None:  # type: ignore[override]
        """The newest frame at full size (``render_mode="rgb_array"``).

        Non-blocking once a stream runs (waits up to ``timeout`` for a first
        frame). Observations are made at ``obs_size`` in the native pass; the
        full-size picture is converted from the kept decoded frame only when
        ``render()`` asks for it. ``None`` when ``render_mode`` is ``None``.
        """
        if self.render_mode is None:
            return None
        self._require_open()
        if not self._episode_open:
            return np.zeros(self._obs_shape, np.uint8)
        frame = self._client.get_latest_frame(timeout=self._timeout, full_size=True)
        return np.array(frame.data[..., :3])

    def close(self) -> None:
        """Disconnect (which ends the stream) and join the environment's threads. Idempotent.

        Blocking, bounded by the client's teardown timeouts.
        """
        if self._closed:
            return
        self._closed = True
        self._episode_open = False
        # Disconnect first: it fails any interaction still waiting for its
        # acknowledgement, so the sender thread is free to be joined at once.
        self._client.close()
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.shutdown(wait=True, cancel_futures=True)
        self._in_flight.clear()

    # ------------------------------------------------------------------ helpers
    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError("the environment is closed")

    def _episode_options(self, options: dict[str, Any] | None) -> tuple[str, Any, bool]:
        if options is None:
            return self._prompt, self._image, self._portrait
        if not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, not {type(options).__name__}")
        unknown = set(options) - _RESET_OPTIONS
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; "
                             f"known: {sorted(_RESET_OPTIONS)}")
        prompt = options.get("prompt", self._prompt)
        _check_prompt_arg("options['prompt']", prompt)
        portrait = options.get("portrait", self._portrait)
        if not isinstance(portrait, bool):
            raise TypeError("options['portrait'] must be a bool")
        if self.obs_size is None and portrait != self._portrait:
            raise ValueError("options['portrait'] changes the picture size; give obs_size "
                             "to change orientation between episodes")
        return prompt, options.get("image", self._image), portrait

    def _frame_wait(self) -> dict[str, Any]:
        wait: dict[str, Any] = {"timeout": self._timeout}
        if self._max_frame_age is not None:
            wait["max_age"] = self._max_frame_age
        return wait

    def _observation(self, frame: VideoFrame) -> Obs:
        data = frame.data
        if data.shape[:2] != self._obs_shape[:2]:
            raise ValueError(
                f"the stream delivers {frame.width}x{frame.height} frames but the observation "
                f"space is {self._obs_shape[1]}x{self._obs_shape[0]}; "
                "pass obs_size=(width, height)")
        return np.array(data[..., :3])  # a new array: the ring slot is reused

    def _info(
        self, frame: VideoFrame, *, late: float, sent: str | None, skipped: int, step: int
    ) -> dict[str, Any]:
        with self._acks_lock:
            ack = self._acks[-1] if self._acks else None
            self._acks.clear()
        return {
            "stream_id": frame.stream_id or self._stream_id,
            "frame_seq": int(frame.seq),
            "frame_timestamp_ms": int(frame.timestamp_ms),
            "frame_age": float(frame.age),
            "ack": ack,
            "prompt": sent,
            "frames_skipped": int(skipped),
            "late": float(late),
            "step": step,
        }

    def _wait_for_tick(self) -> float:
        """Sleep until the next tick; return how late the call was (0.0 when on time)."""
        tick = self._next_tick
        now = time.monotonic()
        if now < tick:
            time.sleep(tick - now)
            late = 0.0
            self._next_tick = tick + self._period
        else:
            late = now - tick
            # stay on the grid: the next tick is the first one after now
            self._next_tick = tick + self._period * (math.floor(late / self._period) + 1)
        return late

    def _on_ack(self, prompt: str) -> None:  # the client's event thread
        with self._acks_lock:
            self._acks.append(prompt)

    def _send(self, prompt: str) -> None:
        if self._sender is None:
            self._sender = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"odyssey-env-{self._id}-actions")
        if len(self._in_flight) >= _MAX_IN_FLIGHT:  # back-pressure, bounded
            self._in_flight.popleft().result(self._timeout)
        self._in_flight.append(
            self._sender.submit(self._client.interact, prompt, timeout=self._timeout))

    def _collect_sent(self) -> None:
        """Drop finished interactions; re-raise the first one that failed."""
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft().result()

    def _drain_sender(self) -> None:
        """Wait (bounded) for interactions still in flight; their errors do not matter now."""
        while self._in_flight:
            # The episode they belonged to is over: their errors do not matter now.
            with contextlib.suppress(Exception):
                self._in_flight.popleft().result(self._timeout)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0, not {value!r}")
    return float(value)


def _check_size(size: Any) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise TypeError(f"obs_size must be a (width, height) pair of ints, not {size!r}")
    width, height = size
    if width < 2 or height < 2:
        raise ValueError(f"obs_size must be at least 2x2, not {width}x{height}")
    return int(width), int(height)


def _check_prompt_arg(name: str, prompt: Any) -> None:
    if not isinstance(prompt, str):
        raise TypeError(f"{name} must be a str, not {type(prompt).__name__}")


def _action_mapping(
    prompts: Sequence[str] | None,
    action_space: gymnasium.Space[Any] | None,
    action_to_prompt: Callable[[Any], str | None] | None,
    max_prompt_chars: int,
) -> tuple[gymnasium.Space[Any], Callable[[Any], str | None]]:
    """The action space and the function turning one of its actions into a prompt."""
    if (action_space is None) != (action_to_prompt is None):
        raise ValueError("give action_space and action_to_prompt together (or neither)")
    if action_space is not None and action_to_prompt is not None:
        if prompts is not None:
            raise ValueError("give either prompts or action_space/action_to_prompt, not both")
        if not isinstance(action_space, gymnasium.Space) or not callable(action_to_prompt):
            raise TypeError("action_space must be a gymnasium.Space and action_to_prompt callable")
        return action_space, action_to_prompt
    if prompts is not None:
        if isinstance(prompts, str) or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("prompts must be a list of non-empty strings")
        if not prompts:
            raise ValueError("prompts must not be empty")
        table: tuple[str | None, ...] = (None, *prompts)
        return spaces.Discrete(len(table)), lambda action: table[int(action)]
    if isinstance(max_prompt_chars, bool) or not isinstance(max_prompt_chars, int) or not (
            1 <= max_prompt_chars <= MAX_PROMPT_CHARS):
        raise ValueError(f"max_prompt_chars must be an int in 1..{MAX_PROMPT_CHARS}")
    return spaces.Text(max_prompt_chars, min_length=0, charset=PRINTABLE), _text_prompt


def _text_prompt(action: str) -> str | None:
    return action if action.strip() else None


# A string entry point: sub-processes of vector environments import it themselves.
gymnasium.register(id=ENV_ID, entry_point="odyssey_sync.gym:OdysseyEnv", nondeterministic=True)
