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
(:mod:`odyssey_sync.local.stamp`) there. Band offsets and object positions are
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
import colorsys
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from .stamp import stamp_region, stamp_yuv420

__all__ = ["Scene", "World", "applied_prompt"]

RGBArray = npt.NDArray[np.uint8]
Plane = npt.NDArray[np.uint8]

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


def _digest(*parts: str) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def applied_prompt(prompt: str) -> str:
    """The deterministic "expanded" prompt the local server reports as ``applied_prompt``.

    Non-blocking, pure. Returns ``prompt`` (stripped) followed by a style
    phrase chosen by a stable hash of the prompt. Raises ``TypeError`` for a
    non-str prompt.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be str, not {type(prompt).__name__}")
    text = prompt.strip()
    style = _STYLES[_digest("style", text)[0] % len(_STYLES)]
    return f"{text}, {style}" if text else style


def _hsv(h: float, s: float, v: float) -> npt.NDArray[np.float32]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array([r * 255.0, g * 255.0, b * 255.0], dtype=np.float32)


def _periodic(rng: np.random.Generator, x: npt.NDArray[np.float32], terms: int) -> Any:
    """A smooth random curve in [-1, 1] with period len(x) (integer harmonics only)."""
    period = float(x.size)
    acc = np.zeros_like(x)
    total = 0.0
    for _ in range(terms):
        k = int(rng.integers(1, 9))
        amp = float(rng.uniform(0.3, 1.0)) / k
        phase = float(rng.uniform(0.0, 2.0 * math.pi))
        acc += amp * np.sin(2.0 * math.pi * k * x / period + phase)
        total += amp
    return acc / max(total, 1e-6)


def _yuv420(rgb: RGBArray) -> tuple[Plane, Plane, Plane]:
    """BT.601 limited-range yuv420p planes of an even-sized RGB picture (swscale).

    Used once per scene on the precomputed pictures, so that frames can be
    composed directly in the encoder's format.
    """
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    planes = frame.reformat(format="yuv420p").to_ndarray()
    h, w = rgb.shape[:2]
    flat = planes.reshape(-1)
    y = flat[: h * w].reshape(h, w).copy()
    u = flat[h * w : h * w * 5 // 4].reshape(h // 2, w // 2).copy()
    v = flat[h * w * 5 // 4 :].reshape(h // 2, w // 2).copy()
    return y, u, v


@dataclass
class _Sprite:
    rgb: RGBArray  # h×w×3 (h, w even)
    mask: npt.NDArray[np.bool_]  # h×w×1
    yuv: tuple[Plane, Plane, Plane]  # the same picture as yuv420p planes
    mask_y: npt.NDArray[np.bool_]  # h×w
    mask_uv: npt.NDArray[np.bool_]  # (h/2)×(w/2): chroma sites mostly covered
    x0: float  # position at frame 0 along the wrap-around track
    y0: float
    vx: float  # pixels per frame
    bob_amp: float
    bob_period: float  # frames
    bob_phase: float


@dataclass
class _Scene:
    tile: RGBArray  # H × (period + W) × 3: the background, repeated so any window is a slice
    tile_yuv: tuple[Plane, Plane, Plane]
    period: int  # even
    bands: list[tuple[int, int, float]]  # (row0, row1 — both even, pixels per frame)
    sprites: list[_Sprite]
    caption: RGBArray | None  # ch × W × 3, drawn at the bottom
    caption_yuv: tuple[Plane, Plane, Plane] | None


class Scene:
    """A prepared interaction scene: the result of :meth:`World.prepare`.

    Immutable once built (its arrays are only ever read), so it may be built on
    one thread and installed with :meth:`World.interact` on another. Valid
    only for the world that prepared it, as interaction number ``index`` with
    prompt ``prompt``.
    """

    __slots__ = ("_data", "_owner", "index", "prompt")

    def __init__(self, owner: object, index: int, prompt: str, data: _Scene) -> None:
        self._owner = owner
        self._data = data
        #: 1-based number of the interaction this scene belongs to
        self.index = index
        self.prompt = prompt

    def __repr__(self) -> str:
        return f"Scene(index={self.index}, prompt={self.prompt[:40]!r})"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: bitmap font
        return ImageFont.load_default()


def _caption(text: str, width: int, height: int, bg: npt.NDArray[np.float32]) -> RGBArray:
    """The prompt written on a dark strip; rendered once per scene."""
    back = tuple(int(c) for c in np.clip(bg * 0.25, 0, 255))
    img = Image.new("RGB", (width, height), back)
    draw = ImageDraw.Draw(img)
    font = _font(max(8, int(height * 0.62)))
    margin = max(4, height // 3)
    limit = width - 2 * margin
    shown = " ".join(text.split())
    if draw.textlength(shown, font=font) > limit:
        # Longest prefix that fits with an ellipsis (binary search: prompts may be long).
        lo, hi = 0, len(shown)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if draw.textlength(shown[:mid] + "…", font=font) <= limit:
                lo = mid
            else:
                hi = mid - 1
        shown = shown[:lo].rstrip() + "…"
    top, bottom = font.getbbox("Ag")[1], font.getbbox("Ag")[3]
    y = (height - (bottom - top)) // 2 - top
    draw.text((margin, y), shown, fill=(235, 235, 225), font=font)
    out: RGBArray = np.array(img, dtype=np.uint8)
    return out


def _shape_sprite(
    rng: np.random.Generator, size: int, colour: npt.NDArray[np.float32]
) -> tuple[RGBArray, npt.NDArray[np.bool_]]:
    kind = int(rng.integers(0, 5))
    mask_img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_img)
    s = size - 1
    if kind == 0:
        draw.ellipse((0, 0, s, s), fill=255)
    elif kind == 1:
        draw.polygon([(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)], fill=255)
    elif kind == 2:
        draw.rounded_rectangle((0, 0, s, s), radius=max(1, size // 5), fill=255)
    elif kind == 3:
        draw.polygon([(s / 2, 0), (s, s), (0, s)], fill=255)
    else:
        draw.ellipse((0, 0, s, s), fill=255)
        inner = size // 4
        draw.ellipse((inner, inner, s - inner, s - inner), fill=0)
    mask = np.asarray(mask_img) > 127
    # A vertical light-to-dark shade and a darker rim make the objects read as
    # solid things and give the codec edges to track.
    shade = np.linspace(1.25, 0.7, size, dtype=np.float32)[:, None, None]
    rgb = np.clip(colour[None, None, :] * shade, 0, 255).repeat(size, axis=1)
    rim = mask & ~(
        np.pad(mask, 2, constant_values=False)[4:, 2:-2]
        & np.pad(mask, 2, constant_values=False)[:-4, 2:-2]
        & np.pad(mask, 2, constant_values=False)[2:-2, 4:]
        & np.pad(mask, 2, constant_values=False)[2:-2, :-4]
    )
    rgb[rim] *= 0.45
    return rgb.astype(np.uint8), mask[:, :, None]


def _fit_image(image: np.ndarray, width: int, height: int) -> RGBArray:
    """Resize-and-crop (cover) an RGB(A)/grey image to exactly width×height."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy.ndarray, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8, not {image.dtype}")
    if image.ndim == 2:
        pil = Image.fromarray(image, "L").convert("RGB")
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        pil = Image.fromarray(np.ascontiguousarray(image[:, :, :3]), "RGB")
    else:
        raise ValueError(f"image must be H×W, H×W×3 or H×W×4, got shape {image.shape}")
    if pil.width < 1 or pil.height < 1:
        raise ValueError("image is empty")
    scale = max(width / pil.width, height / pil.height)
    w = max(width, round(pil.width * scale))
    h = max(height, round(pil.height * scale))
    pil = pil.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    pil = pil.crop((left, top, left + width, top + height))
    out: RGBArray = np.array(pil, dtype=np.uint8)
    return out


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
        self._image = None if image is None else _fit_image(image, width, height)
        self._interactions: list[tuple[int, str]] = []  # sorted by frame, stable
        self._frames: list[int] = []
        self._scenes: dict[int, _Scene] = {}
        self._buf: RGBArray = np.zeros((height, width, 3), dtype=np.uint8)
        self._caption_h = max(10, round(height * 0.07)) // 2 * 2
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
        return Scene(self._token, int(index), prompt, self._build_scene(int(index), prompt))

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
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise TypeError(f"frame must be int, not {type(frame).__name__}")
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        frame = int(frame)
        scene = self._scene(bisect.bisect_right(self._frames, frame))
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
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise TypeError(f"frame must be int, not {type(frame).__name__}")
        if frame < 0:
            raise ValueError(f"frame must be >= 0, got {frame}")
        frame = int(frame)
        scene = self._scene(bisect.bisect_right(self._frames, frame))
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

    def _band_offsets(self, scene: _Scene, frame: int) -> list[tuple[int, int, int]]:
        """(row0, row1, x offset into the tile) of every band at ``frame``."""
        # floor() keeps the motion continuous across interactions and identical for
        # every renderer of the same frame number; even offsets keep the 2×2 chroma
        # sites of the tile aligned with the frame's.
        return [
            (row0, row1, (math.floor(frame * speed) % scene.period) & ~1)
            for row0, row1, speed in scene.bands
        ]

    def _sprite_box(
        self, sprite: _Sprite, frame: int
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

    def _scene(self, index: int) -> _Scene:
        scene = self._scenes.get(index)
        if scene is None:
            current = self.prompt if index == 0 else self._interactions[index - 1][1]
            scene = self._build_scene(index, current)
            self._cache(index, scene)
        return scene

    def _cache(self, index: int, scene: _Scene) -> None:
        if index not in self._scenes and len(self._scenes) >= _MAX_CACHED_SCENES:
            self._scenes.pop(next(iter(self._scenes)))
        self._scenes[index] = scene

    def _build_scene(self, index: int, current: str) -> _Scene:
        """Scene number ``index`` (0: the start prompt) showing ``current``.

        Pure apart from reading what __init__ fixed (size, fps, prompt, image,
        caption height): safe on any thread (see :meth:`prepare`).
        """
        seed = _digest("scene", self.prompt, str(index), current)
        rng = np.random.default_rng(int.from_bytes(seed[:16], "big"))
        hue = seed[16] / 256.0
        if self._image is None:
            tile, period, bands, accent = self._landscape(rng, hue)
        else:
            tile, period, bands, accent = self._image_scene(rng, hue, index)
        sprites = self._sprites(rng, hue, from_edge=self._image is not None and index == 0)
        caption: RGBArray | None = None
        if self._image is None or index > 0:
            # With an input image, frame 0 must be the image itself: the start
            # prompt is not captioned, interactions are.
            caption = _caption(current, self.width, self._caption_h, accent)
        # The tile repeats with `period`: convert one period and repeat the planes
        # (halves the conversion, the slow part of a scene change).
        once = _yuv420(np.ascontiguousarray(tile[:, :period]))
        extra = tile.shape[1] - period
        tile_yuv = (
            np.concatenate([once[0], once[0][:, :extra]], axis=1),
            np.concatenate([once[1], once[1][:, : extra // 2]], axis=1),
            np.concatenate([once[2], once[2][:, : extra // 2]], axis=1),
        )
        return _Scene(
            tile=tile,
            tile_yuv=tile_yuv,
            period=period,
            bands=bands,
            sprites=sprites,
            caption=caption,
            caption_yuv=None if caption is None else _yuv420(caption),
        )

    def _landscape(
        self, rng: np.random.Generator, hue: float
    ) -> tuple[RGBArray, int, list[tuple[int, int, float]], npt.NDArray[np.float32]]:
        w, h = self.width, self.height
        ground_end = h - self._caption_h
        horizon = int(h * rng.uniform(0.38, 0.5)) & ~1  # band edges on chroma rows
        hills_end = min(ground_end - 4, horizon + int(h * rng.uniform(0.12, 0.2))) & ~1
        period = w
        x = np.arange(period, dtype=np.float32)
        sat = float(rng.uniform(0.35, 0.8))
        night = rng.uniform() < 0.25
        sky_top = _hsv(hue + 0.55, sat, 0.25 if night else 0.85)
        sky_low = _hsv(hue + 0.5, sat * 0.5, 0.45 if night else 1.0)
        mountain = _hsv(hue + 0.65, sat * 0.6, 0.4 if night else 0.55)
        hills = _hsv(hue + 0.25, sat, 0.35 if night else 0.6)
        ground = _hsv(hue + 0.1, sat, 0.3 if night else 0.5)
        tile = np.empty((h, period, 3), dtype=np.float32)

        # Far band: sky gradient with a mountain silhouette whose foot covers the
        # band's last rows, so the next band never shows sky behind it.
        t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
        sky = sky_top * (1 - t) + sky_low * t  # horizon × 1 × 3: one colour per row
        ys = np.arange(horizon, dtype=np.float32)[:, None]
        ridge = horizon * (0.55 + 0.3 * _periodic(rng, x, 5))
        cloud = _periodic(rng, x, 4)
        cloud_row = horizon * rng.uniform(0.15, 0.35)
        clouds = (np.abs(ys - cloud_row) < horizon * 0.06 * np.maximum(cloud, 0) * 2) & (
            cloud > 0.15
        )
        shade = 0.8 + 0.2 * (ys / max(horizon, 1))
        mount = ys >= ridge[None, :]
        # Broadcast per-row colours through np.where rather than materialising
        # full-size colour planes: scene changes happen while streaming.
        tile[:horizon] = np.where(
            mount[:, :, None],
            mountain[None, None, :] * shade[:, :, None],
            np.where(clouds[:, :, None], sky * 0.4 + 255 * 0.6, sky),
        )

        # Middle band: hills in front of the mountains' foot colour.
        hh = hills_end - horizon
        ys2 = np.arange(hh, dtype=np.float32)[:, None]
        hill_top = hh * (0.35 + 0.3 * _periodic(rng, x, 4))
        hill = ys2 >= hill_top[None, :]
        hill_rows = hills[None, None, :] * (0.85 + 0.3 * ys2 / max(hh, 1))[:, :, None]
        tile[horizon:hills_end] = np.where(hill[:, :, None], hill_rows, mountain * 1.0)

        # Near band: fields with furrows; split into strips that scroll faster
        # towards the viewer (perspective).
        gh = ground_end - hills_end
        stripes = 0.75 + 0.25 * np.sign(np.sin(2 * math.pi * int(rng.integers(6, 16)) * x / period))
        texture = 0.9 + 0.1 * _periodic(rng, x, 6)
        depth = np.linspace(0.85, 1.15, max(gh, 1), dtype=np.float32)[:gh, None]
        field = (stripes * texture)[None, :] * depth
        tile[hills_end:ground_end] = ground[None, None, :] * field[:, :, None]
        tile[ground_end:] = 0  # caption band, covered every frame

        direction = 1.0 if rng.uniform() < 0.5 else -1.0
        base = direction * w / self.fps  # pixels per frame for "one width per second"
        bands = [(0, horizon, base * 0.02), (horizon, hills_end, base * 0.06)]
        strips = 4
        for i in range(strips):
            r0 = (hills_end + gh * i // strips) & ~1
            r1 = ground_end if i == strips - 1 else (hills_end + gh * (i + 1) // strips) & ~1
            if r1 > r0:
                bands.append((r0, r1, base * (0.1 + 0.06 * i)))
        if ground_end < h:
            bands.append((ground_end, h, 0.0))
        full = np.clip(tile, 0, 255, out=tile).astype(np.uint8)
        return np.concatenate([full, full], axis=1), period, bands, sky_top

    def _image_scene(
        self, rng: np.random.Generator, hue: float, index: int
    ) -> tuple[RGBArray, int, list[tuple[int, int, float]], npt.NDArray[np.float32]]:
        assert self._image is not None
        img = self._image
        if index > 0:
            # Interactions colour-grade the picture towards the new prompt's hue.
            tint = _hsv(hue, 0.8, 1.0)
            strength = float(rng.uniform(0.3, 0.45))
            # 8.8 fixed point: ≈ 4× faster than float32 on a full frame.
            keep = round((1 - strength) * 256)
            add = np.round(tint * strength * 256).astype(np.uint16)
            img = ((img.astype(np.uint16) * keep + add) >> 8).astype(np.uint8)
        # Image, mirror, image: panning across the seam stays continuous.
        tile = np.concatenate([img, img[:, ::-1], img], axis=1)
        speed = (1.0 if rng.uniform() < 0.5 else -1.0) * self.width * 0.03 / self.fps
        accent = img[::8, ::8].reshape(-1, 3).mean(axis=0).astype(np.float32)  # a sample will do
        return tile, 2 * self.width, [(0, self.height, speed)], accent

    def _sprites(self, rng: np.random.Generator, hue: float, *, from_edge: bool) -> list[_Sprite]:
        w, h = self.width, self.height
        sprites: list[_Sprite] = []
        count = int(rng.integers(3, 7))
        for _ in range(count):
            size = max(6, int(min(w, h) * rng.uniform(0.07, 0.16))) & ~1
            colour = _hsv(hue + 0.15 + 0.7 * float(rng.uniform()), 0.85, 0.95)
            rgb, mask = _shape_sprite(rng, size, colour)
            mask_y = mask[:, :, 0]
            cover = mask_y.reshape(size // 2, 2, size // 2, 2).sum(axis=(1, 3))
            speed = float(rng.uniform(0.05, 0.25)) * w / self.fps
            if rng.uniform() < 0.5:
                speed = -speed
            # from_edge: every object starts just outside the frame, so frame 0 of
            # an image-to-video stream is the untouched image.
            x0 = 0.0 if from_edge else float(rng.uniform(0, w + size))
            y_min = h * 0.08
            y_max = max(y_min + 1, h - self._caption_h - size * 1.2)
            y0 = float(rng.uniform(y_min, y_max))
            sprites.append(
                _Sprite(
                    rgb=rgb,
                    mask=mask,
                    yuv=_yuv420(rgb),
                    mask_y=mask_y,
                    mask_uv=cover >= 2,
                    x0=x0,
                    y0=y0,
                    vx=speed,
                    bob_amp=float(rng.uniform(0.0, 0.05)) * h,
                    bob_period=float(rng.uniform(1.0, 3.0)) * self.fps,
                    bob_phase=float(rng.uniform(0, 2 * math.pi)),
                )
            )
        return sprites
