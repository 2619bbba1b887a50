"""The real-time half's view of the renderer: worlds, idle pictures, input images.

The renderer (``world.py``, ``media.py``) belongs to another module; this file
is the one place the streamer touches it, so a signature change there is a
one-file fix here. When the renderer is not importable (it lands separately),
a small stand-in with the same contract keeps the streamer usable: a flat
colour per prompt, stamped with :func:`odyssey_sync.local.stamp.stamp_frame`.

Everything here is synchronous and CPU-bound; the streamer decides which
calls run on the loop and which in an executor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt

from .stamp import stamp_frame

__all__ = [
    "InvalidImage",
    "RenderWorld",
    "applied_prompt",
    "apply_interaction",
    "decode_data_url",
    "idle_frame",
    "make_world",
    "prepare_scene",
]


class InvalidImage(ValueError):
    """The ``input_image_base64`` of a start message is not a usable picture."""


class RenderWorld(Protocol):
    """What the streamer needs from a world (``odyssey_sync.local.world.World``)."""

    def interact(self, prompt: str, frame: int) -> Any: ...

    def video_frame(self, frame: int, sent_at: float) -> av.VideoFrame: ...


class _StandInWorld:
    """Flat colour derived from the current prompt, stamped; used until world.py exists."""

    def __init__(self, width: int, height: int, prompt: str, image: Any = None) -> None:
        self._width = width
        self._height = height
        self._base = np.zeros((height, width, 3), dtype=np.uint8)
        self._set_prompt(prompt)

    def _set_prompt(self, prompt: str) -> None:
        digest = hashlib.sha256(prompt.encode("utf-8")).digest()
        # Mid-range colours only: the stamp band needs black/white contrast.
        self._base[:] = np.frombuffer(digest[:3], dtype=np.uint8) // 2 + 64

    def interact(self, prompt: str, frame: int) -> None:
        self._set_prompt(prompt)

    def video_frame(self, frame: int, sent_at: float) -> av.VideoFrame:
        rgb = self._base.copy()
        stamp_frame(rgb, frame, sent_at)
        return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p", threads=1
        )


def _standin_applied_prompt(prompt: str) -> str:
    # The real service expands prompts with a VLM; the stand-in only normalises spaces.
    return " ".join(prompt.split())


try:  # the renderer lands in its own commit; see the module docstring
    from . import world as _world_mod
except ImportError:  # pragma: no cover - depends on the checkout
    _world_mod = None  # type: ignore[assignment]

try:
    from . import media as _media_mod  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # pragma: no cover - depends on the checkout
    _media_mod = None  # type: ignore[assignment]


def make_world(
    width: int, height: int, prompt: str, image: npt.NDArray[np.uint8] | None, fps: float
) -> RenderWorld:
    """A new world for one stream. CPU-bound (may resize ``image``); any thread."""
    if _world_mod is not None:
        world: RenderWorld = _world_mod.World(width, height, prompt, image=image, fps=fps)
        return world
    return _StandInWorld(width, height, prompt, image)


def prepare_scene(world: RenderWorld, prompt: str, index: int) -> Any | None:
    """Build interaction number ``index`` (1-based) of ``world`` without applying it.

    Blocking, CPU-bound (tens of ms at 1280×704): call it in an executor. Safe
    while another thread renders ``world`` (``World.prepare`` with an explicit
    index is pure). Returns an opaque scene for :func:`apply_interaction`, or
    None when the world cannot prepare scenes (the stand-in).
    """
    prepare = getattr(world, "prepare", None)
    if prepare is None:
        return None
    return prepare(prompt, index)


def apply_interaction(world: RenderWorld, prompt: str, frame: int, scene: Any | None) -> None:
    """``world.interact(prompt, frame)``, installing ``scene`` from :func:`prepare_scene`.

    Non-blocking with a scene; without one (or one that does not fit) the world
    builds the scene itself. Call it on the thread that renders ``world``,
    between two renders.
    """
    if scene is None:
        world.interact(prompt, frame)
    else:
        world.interact(prompt, frame, scene=scene)  # type: ignore[call-arg]


def applied_prompt(prompt: str) -> str:
    """The prompt as the server "applied" it (echoed in stream_started / update_acknowledged)."""
    if _world_mod is not None:
        fn = getattr(_world_mod, "applied_prompt", None)
        if fn is not None:
            return str(fn(prompt))
    return _standin_applied_prompt(prompt)


def decode_data_url(url: str) -> tuple[bytes, npt.NDArray[np.uint8]]:
    """``(file bytes, RGB picture)`` of a ``data:<mime>;base64,<...>`` URL.

    CPU-bound (base64 + image decode of up to 25 MiB): call it in an executor.
    Raises :class:`InvalidImage` with a short reason for anything unusable.
    """
    if not url.startswith("data:"):
        raise InvalidImage("input_image_base64 must be a data: URL")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidImage("input_image_base64 must be a base64 data: URL")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage("input_image_base64 is not valid base64") from exc
    if not data:
        raise InvalidImage("input_image_base64 is empty")
    try:
        if _media_mod is not None:
            rgb = _media_mod.decode_image(data)
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except Exception as exc:  # any decoder failure means "not a picture we can use"
        raise InvalidImage("input image could not be decoded") from exc
    return data, np.ascontiguousarray(rgb, dtype=np.uint8)


_IDLE_BASE: dict[tuple[int, int], npt.NDArray[np.uint8]] = {}
# One swscale context per rendering thread (several connections may render at once).
_LOCAL = threading.local()


def idle_frame(width: int, height: int, frame: int, sent_at: float) -> av.VideoFrame:
    """A dark, stamped picture shown while no stream is active (keeps the track live)."""
    base = _IDLE_BASE.get((width, height))
    if base is None:
        base = np.full((height, width, 3), 24, dtype=np.uint8)
        _IDLE_BASE[(width, height)] = base
    rgb = base.copy()
    stamp_frame(rgb, frame, sent_at)
    # threads=1: PyAV >= 17 otherwise builds a thread pool per call (PITFALLS.md).
    reformatter = getattr(_LOCAL, "reformatter", None)
    if reformatter is None:
        reformatter = _LOCAL.reformatter = av.video.reformatter.VideoReformatter()
    return reformatter.reformat(
        av.VideoFrame.from_ndarray(rgb, format="rgb24"), format="yuv420p", threads=1
    )
