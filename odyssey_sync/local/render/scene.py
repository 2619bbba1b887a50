"""Scenes of the synthetic world: everything a prompt fixes, built once per scene.

A scene is the background tile (sky, mountains, hills, fields; or the input
picture, panned), the moving objects and the caption band, in RGB and as
yuv420p planes, so that :class:`~odyssey_sync.local.render.world.World` can
compose a frame with a handful of slice copies. :class:`SceneBuilder` builds
one from a seed (the base prompt, the interaction's number and its prompt);
building costs 15–40 ms at 1280×704 whatever the prompt: the caption draws
at most the characters that can fit the frame's width, so a long prompt
costs no more than a short one.

Everything here is pure and safe on any thread.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

__all__ = ["Scene", "SceneBuilder", "SceneData", "Sprite", "digest", "fit_image"]

RGBArray = npt.NDArray[np.uint8]
Plane = npt.NDArray[np.uint8]


def digest(*parts: str) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


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
class Sprite:
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
class SceneData:
    tile: RGBArray  # H × (period + W) × 3: the background, repeated so any window is a slice
    tile_yuv: tuple[Plane, Plane, Plane]
    period: int  # even
    bands: list[tuple[int, int, float]]  # (row0, row1 — both even, pixels per frame)
    sprites: list[Sprite]
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

    def __init__(self, owner: object, index: int, prompt: str, data: SceneData) -> None:
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
    # The cost must be bounded by the frame's width, not by the prompt's length:
    # no glyph of a font of 8 px or more is narrower than 2 px, so at most
    # limit/2 characters can show (whitespace runs collapse to one space first).
    words = " ".join(text[: 4 * width].split())
    shown = words[: max(1, limit // 2)]
    if shown != words or draw.textlength(shown, font=font) > limit:
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


def fit_image(image: np.ndarray, width: int, height: int) -> RGBArray:
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



@dataclass(frozen=True)
class SceneBuilder:
    """Builds the scenes of one world (its size, fps, start prompt and picture are fixed)."""

    width: int
    height: int
    fps: float
    prompt: str
    image: RGBArray | None
    caption_h: int

    def build(self, index: int, current: str) -> SceneData:
        """Scene number ``index`` (0: the start prompt) showing ``current``.

        Pure: reads only the builder's fixed options, so safe on any thread.
        """
        seed = digest("scene", self.prompt, str(index), current)
        rng = np.random.default_rng(int.from_bytes(seed[:16], "big"))
        hue = seed[16] / 256.0
        if self.image is None:
            tile, period, bands, accent = self._landscape(rng, hue)
        else:
            tile, period, bands, accent = self._image_scene(rng, hue, index)
        sprites = self._sprites(rng, hue, from_edge=self.image is not None and index == 0)
        caption: RGBArray | None = None
        if self.image is None or index > 0:
            # With an input image, frame 0 must be the image itself: the start
            # prompt is not captioned, interactions are.
            caption = _caption(current, self.width, self.caption_h, accent)
        # The tile repeats with `period`: convert one period and repeat the planes
        # (halves the conversion, the slow part of a scene change).
        once = _yuv420(np.ascontiguousarray(tile[:, :period]))
        extra = tile.shape[1] - period
        tile_yuv = (
            np.concatenate([once[0], once[0][:, :extra]], axis=1),
            np.concatenate([once[1], once[1][:, : extra // 2]], axis=1),
            np.concatenate([once[2], once[2][:, : extra // 2]], axis=1),
        )
        return SceneData(
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
        ground_end = h - self.caption_h
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
        assert self.image is not None
        img = self.image
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

    def _sprites(self, rng: np.random.Generator, hue: float, *, from_edge: bool) -> list[Sprite]:
        w, h = self.width, self.height
        sprites: list[Sprite] = []
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
            y_max = max(y_min + 1, h - self.caption_h - size * 1.2)
            y0 = float(rng.uniform(y_min, y_max))
            sprites.append(
                Sprite(
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
