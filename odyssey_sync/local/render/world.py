"""The local server's world: a deterministic synthetic renderer driven by prompts.

The real service turns a prompt into video with a world model; the local
server fakes that with a cheap, fully deterministic picture that still
behaves like the real thing in every way a client can observe:

* it is **prompt-driven**: the palette, the horizon, the mountain and hill
  silhouettes, the ground texture and the moving objects are all derived from
  a SHA-256 of the prompt (never Python's salted ``hash()``), and the prompt is
  written in a caption band at the bottom;
* it **moves**: the landscape scrolls with parallax (far mountains slowly,
  the ground fast), objects drift across and bob, so every frame differs and
  the codec has real work to do;
* each **interaction** swaps in a new scene (new colours, objects and caption,
  seeded by the base prompt, the interaction's index and its prompt) from its
  frame on, while the camera motion continues seamlessly;
* an **input image** (image-to-video) is resized and cropped to the frame and
  becomes the starting picture: frame 0 *is* the image; the camera then pans
  across it, objects enter from the edges, and interactions colour-grade it.

A frame is a pure function of (size, fps, prompt, image, the interactions
whose frame is ≤ the frame number, frame number), so a recording can be
rendered afterwards from a stream's event log and match what was streamed.

Cost: everything that depends only on the prompt (background tile, sprites,
caption text) is built once per scene, in RGB and as yuv420p planes; a frame
is a handful of NumPy slice copies plus small sprite blits.
:meth:`World.render` composes the RGB picture; :meth:`World.video_frame`
composes the same picture straight into the planes of a new yuv420p
``av.VideoFrame`` (no per-frame colour conversion) and draws the stamp
(:mod:`odyssey_sync.local.render.stamp`) there. Band offsets and object positions are
even, so both compositions agree pixel for pixel in luma and differ only in
how chroma is rounded at object edges. Measured figures are in
the README (The world, frame stamps and recordings).

Thread-safety: a :class:`World` is used by one thread at a time (the
streamer applies interactions between two renders on its render thread),
except :meth:`World.prepare` with an explicit ``index``, which reads only
what construction fixed and may run on any thread at any time: the streamer
builds the next scene in an executor while frames keep rendering, then
installs it in well under a millisecond.
"""


from __future__ import annotations

import bisect
import math
import threading

import av
import numpy as np
import numpy.typing as npt

from .scene import Scene, SceneBuilder, SceneData, Sprite, digest, fit_image
from .stamp import stamp_frame, stamp_region, stamp_yuv420

__all__ = ["Scene", "World", "applied_prompt", "idle_frame"]

RGBArray = npt.NDArray[np.uint8]


# Phrases appended by applied_prompt(): the real service expands prompts with a
# language model; ours picks one stable decoration per prompt.
_STYLES = (
    "cinematic lighting, slow camera drift",
    "soft morning light, gentle parallax",
    "golden hour, wide establishing shot",
    "overcast sky, handheld documentary feel",
    "vivid colours, smooth tracking shot",
    "dusk, long shadows, steady dolly move",
    "crisp winter air, high-key light",
    "dreamlike haze, floating camera",
)

_MAX_CACHED_SCENES = 6


def applied_prompt(prompt: str) -> str:
    """The deterministic "expanded" prompt the local server reports as ``applied_prompt``.

    Non-blocking, pure. Returns ``prompt`` (stripped) followed by a style
    phrase chosen by a stable hash of the prompt. Raises ``TypeError`` for a
    non-str prompt.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
    text = prompt.strip()
    style = _STYLES[digest("style", text)[0] % len(_STYLES)]
    return f"{text}, {style}" if text else style


class World:
    """A deterministic synthetic world of one stream.

    Not thread-safe: one streamer (or recording renderer) owns an instance
    and calls it from one thread at a time — except :meth:`prepare` with an
    explicit index, which any thread may call at any time. Nothing here
    blocks on I/O; building a scene (construction, :meth:`interact` without
    a prepared scene, :meth:`prepare`) takes 15–40 ms at 1280×704, composing
    a frame ≈ 0.2 ms (the streamer's budget is 4 ms).

    ``width``×``height`` must be even (yuv420p) and large enough for the
    stamp (at least 160×96). ``image`` is an optional H'×W'×3 (or ×4, or
    greyscale) uint8 RGB start picture of any size; it is resized and
    cropped to cover the frame. ``fps`` sets how far things move per frame.

    Raises ``TypeError`` for wrongly typed arguments and ``ValueError`` for
    odd/too-small sizes or a non-positive fps.
    """

    def __init__(
        self,
        width: int,
        height: int,
        prompt: str,
        image: np.ndarray | None = None,
        *,
        fps: float = 30.0,
    ) -> None:
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be int, not {type(value).__name__}")
            if value <= 0 or value % 2:
                raise ValueError(f"{name} must be a positive even number, got {value}")
        stamp_region(width, height)  # raises ValueError when the stamp cannot fit
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)):
            raise TypeError(f"fps must be a number, not {type(fps).__name__}")
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be positive and finite, got {fps}")
        self.width = width
        self.height = height
        self.fps = float(fps)
        self.prompt = prompt
        self._image = None if image is None else fit_image(image, width, height)
        self._interactions: list[tuple[int, str]] = []  # sorted by frame, stable
        self._frames: list[int] = []
        self._scenes: dict[int, SceneData] = {}
        self._buf: RGBArray = np.zeros((height, width, 3), dtype=np.uint8)
        self._caption_h = max(10, round(height * 0.07)) // 2 * 2
        self._builder = SceneBuilder(width, height, self.fps, prompt, self._image,
                                     self._caption_h)
        # Identifies scenes prepared by this instance (see Scene); never compared
        # by value, so a scene of another world with equal options is rebuilt.
        self._token = object()
        self._scene(0)

    def __repr__(self) -> str:
        return (
            f"World({self.width}x{self.height}@{self.fps:g}, prompt={self.prompt[:40]!r}, "
            f"image={self._image is not None}, interactions={len(self._interactions)})"
        )

    @property
    def interactions(self) -> list[tuple[int, str]]:
        """The interactions applied so far as ``(frame, prompt)``, in frame order (a copy)."""
        return list(self._interactions)

    # -- public API ----------------------------------------------------------

    def prepare(self, prompt: str, index: int | None = None) -> Scene:
        """Build the scene of an interaction without applying it; for :meth:`interact`.

        Blocking, CPU-bound (15–40 ms at 1280×704, ≈ 5 ms at 320×176): meant
        for an executor thread. ``index`` is the 1-based number the interaction
        will have (the scene's seed depends on it); None means the next one,
        ``len(self.interactions) + 1``, which reads the interaction list: pass
        an explicit ``index`` when :meth:`interact` may run concurrently. With
        an explicit ``index`` this is thread-safe and pure: it reads only what
        construction fixed, touches no shared mutable state, and returns a new
        immutable :class:`Scene`. Raises ``TypeError``/``ValueError`` for a
        non-str prompt or an index that is not an int ≥ 1.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
        if index is None:
            index = len(self._interactions) + 1
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be int, not {type(index).__name__}")
        if index < 1:
            raise ValueError(f"index must be >= 1, got {index}")
        return Scene(self._token, int(index), prompt, self._builder.build(int(index), prompt))

    def interact(self, prompt: str, frame: int, scene: Scene | None = None) -> None:
        """Change the scene to ``prompt`` from frame number ``frame`` on.

        Non-blocking with a matching prepared ``scene`` (installs it: a few µs).
        Without one it builds the new scene here (15–40 ms at 1280×704) rather
        than inside the first render that shows it. A ``scene`` from
        :meth:`prepare` is used only if it was prepared by this world for this
        prompt and for the number this interaction gets (the interactions so
        far plus one, i.e. when it is appended in frame order); otherwise it is
        ignored and the scene is built, so the pictures are the same either
        way. Frames before ``frame`` are unaffected. Interactions at the same
        frame apply in call order (the last wins). Raises
        ``TypeError``/``ValueError`` for a non-str prompt, a negative/non-int
        frame, or a ``scene`` that is not a :class:`Scene`.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise TypeError(f"frame must be int, not {type(frame).__name__}")
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        if scene is not None and not isinstance(scene, Scene):
            raise TypeError(f"scene must be a Scene or None, not {type(scene).__name__}")
        index = bisect.bisect_right(self._frames, int(frame))
        self._frames.insert(index, int(frame))
        self._interactions.insert(index, (int(frame), prompt))
        if index != len(self._frames) - 1:
            # Inserted out of order: the scene numbering of later entries moved.
            self._scenes.clear()
        elif (
            scene is not None
            and scene._owner is self._token
            and scene.index == index + 1
            and scene.prompt == prompt
        ):
            self._cache(index + 1, scene._data)
            return
        self._scene(index + 1)

    def render(self, frame: int) -> RGBArray:
        """The unstamped H×W×3 uint8 RGB picture of frame number ``frame``.

        Non-blocking (≈ 0.3 ms at 1280×704). Returns a view of an internal
        buffer, valid until the next :meth:`render`/:meth:`video_frame`; copy
        it to keep it. Deterministic: a pure function of the size, fps,
        prompt, image, the interactions at frames ≤ ``frame``, and ``frame``.
        Raises ``ValueError`` for a negative frame.
        """
        frame, scene = self._frame_and_scene(frame)
        out, width = self._buf, self.width
        for row0, row1, off in self._band_offsets(scene, frame):
            np.copyto(out[row0:row1], scene.tile[row0:row1, off : off + width])
        for sprite in scene.sprites:
            box = self._sprite_box(sprite, frame)
            if box is not None:
                x0, y0, x1, y1, sx, sy = box
                np.copyto(
                    out[y0:y1, x0:x1],
                    sprite.rgb[sy : sy + y1 - y0, sx : sx + x1 - x0],
                    where=sprite.mask[sy : sy + y1 - y0, sx : sx + x1 - x0],
                )
        if scene.caption is not None:
            out[self.height - scene.caption.shape[0] :] = scene.caption
        return out

    def video_frame(self, frame: int, sent_at: float | None = None) -> av.VideoFrame:
        """Frame ``frame`` rendered, stamped with ``(frame, sent_at)`` and converted to yuv420p.

        This is the streamer's per-frame call (≈ 0.15 ms at 1280×704). Non-blocking;
        ``sent_at`` defaults to ``time.monotonic()`` now. The caller sets
        ``pts``/``time_base``. Returns a new ``av.VideoFrame`` (untagged, i.e.
        BT.601 limited range, as decoders assume) that shows what
        :meth:`render` shows, up to chroma rounding at object edges, plus the
        stamp. Raises like :meth:`render`.
        """
        frame, scene = self._frame_and_scene(frame)
        # Compose straight into the new frame's planes, in the encoder's format:
        # an RGB render plus a swscale conversion costs ≈ 20× more CPU, and the
        # server shares two cores with the encoder and the client.
        out = av.VideoFrame(self.width, self.height, "yuv420p")
        planes = [
            np.frombuffer(memoryview(p), dtype=np.uint8).reshape(p.height, p.line_size)[
                :, : p.width
            ]
            for p in out.planes
        ]
        for row0, row1, off in self._band_offsets(scene, frame):
            for k, (plane, tile) in enumerate(zip(planes, scene.tile_yuv, strict=True)):
                s = 1 if k == 0 else 2
                np.copyto(
                    plane[row0 // s : row1 // s],
                    tile[row0 // s : row1 // s, off // s : (off + self.width) // s],
                )
        for sprite in scene.sprites:
            box = self._sprite_box(sprite, frame)
            if box is None:
                continue
            x0, y0, x1, y1, sx, sy = box
            for k, (plane, pic) in enumerate(zip(planes, sprite.yuv, strict=True)):
                s = 1 if k == 0 else 2
                mask = sprite.mask_y if k == 0 else sprite.mask_uv
                src = slice(sy // s, (sy + y1 - y0) // s), slice(sx // s, (sx + x1 - x0) // s)
                np.copyto(plane[y0 // s : y1 // s, x0 // s : x1 // s], pic[src], where=mask[src])
        if scene.caption_yuv is not None:
            for plane, pic in zip(planes, scene.caption_yuv, strict=True):
                plane[plane.shape[0] - pic.shape[0] :] = pic
        stamp_yuv420(planes[0], planes[1], planes[2], frame, sent_at)
        return out

    def _band_offsets(self, scene: SceneData, frame: int) -> list[tuple[int, int, int]]:
        """(row0, row1, x offset into the tile) of every band at ``frame``."""
        # floor() keeps the motion continuous across interactions and identical for
        # every renderer of the same frame number; even offsets keep the 2×2 chroma
        # sites of the tile aligned with the frame's.
        return [
            (row0, row1, (math.floor(frame * speed) % scene.period) & ~1)
            for row0, row1, speed in scene.bands
        ]

    def _sprite_box(
        self, sprite: Sprite, frame: int
    ) -> tuple[int, int, int, int, int, int] | None:
        """Visible part of a sprite: frame box x0, y0, x1, y1 and source corner sx, sy.

        All even, so the same box serves the RGB picture and the chroma planes.
        """
        sh, sw = sprite.mask_y.shape
        track = self.width + sw
        x = math.floor((sprite.x0 + sprite.vx * frame) % track) - sw
        bob = math.sin(2 * math.pi * frame / sprite.bob_period + sprite.bob_phase)
        y = math.floor(sprite.y0 + sprite.bob_amp * bob)
        x, y = x & ~1, y & ~1
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + sw, self.width), min(y + sh, self.height - self._caption_h)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1, x0 - x, y0 - y

    # -- scenes --------------------------------------------------------------

    def _frame_and_scene(self, frame: int) -> tuple[int, SceneData]:
        """*frame* checked (an int >= 0, else TypeError/ValueError) and the scene it shows."""
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise TypeError(f"frame must be int, not {type(frame).__name__}")
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        frame = int(frame)
        return frame, self._scene(bisect.bisect_right(self._frames, frame))

    def _scene(self, index: int) -> SceneData:
        scene = self._scenes.get(index)
        if scene is None:
            current = self.prompt if index == 0 else self._interactions[index - 1][1]
            scene = self._builder.build(index, current)
            self._cache(index, scene)
        return scene

    def _cache(self, index: int, scene: SceneData) -> None:
        if index not in self._scenes and len(self._scenes) >= _MAX_CACHED_SCENES:
            self._scenes.pop(next(iter(self._scenes)))
        self._scenes[index] = scene


_IDLE_BASE: dict[tuple[int, int], RGBArray] = {}
# One swscale context per rendering thread (several connections may render at once).
_LOCAL = threading.local()


def idle_frame(width: int, height: int, frame: int, sent_at: float) -> av.VideoFrame:
    """A dark, stamped yuv420p picture shown while no stream is active (keeps a track live).

    Non-blocking (≈ 1 ms at 320×176), any thread.
    """
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
