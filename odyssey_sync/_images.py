"""Image input → ``data:<mime>;base64,…`` URL for image-to-video (PROTOCOL §7).

One entry point, :func:`encode_image`, used by ``start_stream(image=…)`` and by
simulation scripts (``start.image``). It is stricter than the official client
(PROTOCOL §15.26): data URLs are validated like any other input, EXIF
orientation is applied, NumPy arrays are checked, and a format we cannot
identify is refused instead of being labelled ``image/jpeg``.

Pure CPU work on the caller's thread; no network, no threads.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "LANDSCAPE_SIZE",
    "MAX_IMAGE_BYTES",
    "PORTRAIT_SIZE",
    "decode_data_url",
    "detect_mime",
    "encode_image",
    "target_size",
]

#: Largest accepted image, in bytes of the encoded file (25 MiB, PROTOCOL §2.2).
MAX_IMAGE_BYTES = 25 * 1024 * 1024
#: Frame size of a landscape stream (width, height).
LANDSCAPE_SIZE = (1280, 704)
#: Frame size of a portrait stream (width, height).
PORTRAIT_SIZE = (704, 1280)

#: JPEG re-encode quality on Pillow's scale (PROTOCOL §2.2).
_JPEG_QUALITY = 90
#: Formats we re-encode in kind; everything else Pillow decodes becomes JPEG
#: (GIF/BMP/TIFF/AVIF stills are smaller and universally accepted as JPEG).
_KEEP_FORMAT = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "MPO": "JPEG"}
#: Formats documented as accepted by the service that Pillow may be unable to
#: decode here (no libheif): sent unresized, the server resizes them itself.
_OPAQUE_MIMES = {"image/heic", "image/heif"}

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[^;,]*)*?);base64,", re.I)


def target_size(portrait: bool) -> tuple[int, int]:
    """The (width, height) an image is fitted to for a portrait/landscape stream."""
    return PORTRAIT_SIZE if portrait else LANDSCAPE_SIZE


def detect_mime(data: bytes) -> str | None:
    """MIME type of an image file from its magic bytes, or ``None`` if unknown.

    The table of PROTOCOL §7 plus TIFF. Unlike the official client, unknown
    data gives ``None`` rather than a guessed ``image/jpeg``.
    """
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"heim", b"heis"):
            return "image/heic"
        if brand in (b"avif", b"avis"):
            return "image/avif"
        # mif1/msf1 and any other ISO-BMFF image brand: HEIF container.
        return "image/heif"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head.startswith(b"BM") and len(head) >= 14:
        return "image/bmp"
    return None


def encode_image(image: Any, *, portrait: bool) -> str:
    """Turn an image input into the data URL sent to the streamer.

    Blocking (CPU only, milliseconds for typical photos), runs on the calling
    thread, no timeout needed.

    Accepted inputs:

    * ``str`` or ``os.PathLike`` — a file path, or a string starting with
      ``data:`` holding a base64 data URL (``data:image/png;base64,…``);
    * ``bytes`` / ``bytearray`` / ``memoryview`` — an encoded image file;
    * ``PIL.Image.Image``;
    * ``numpy.ndarray`` of dtype ``uint8``: H×W×3 **RGB**, H×W×4 RGBA (alpha
      dropped) or H×W greyscale.

    Every input is decoded with Pillow, turned upright per its EXIF
    orientation, scaled with Lanczos to *cover* the target (704×1280 portrait,
    1280×704 landscape) and centre-cropped. Files already exactly the target
    size and upright are sent byte for byte. Re-encoding keeps JPEG (quality
    90, optimized), PNG and WebP; other formats, PIL images and arrays become
    JPEG. HEIC/HEIF files, which this Pillow cannot decode, are sent unresized
    after the size and type checks (the service resizes them).

    Returns:
        ``"data:<mime>;base64,<payload>"`` with the MIME type taken from the
        magic bytes of what is sent.

    Raises:
        TypeError: ``image`` is none of the kinds above, or ``portrait`` is not a bool.
        ValueError: missing file, more than 25 MiB, an unknown or corrupt image,
            a malformed data URL, or an array of the wrong dtype/shape.
    """
    if not isinstance(portrait, bool):
        raise TypeError(f"portrait must be a bool, not {type(portrait).__name__}")
    size = target_size(portrait)
    if isinstance(image, str) and image[:5].lower() == "data:":
        return _encode_bytes(decode_data_url(image)[1], size)
    if isinstance(image, (str, os.PathLike)):
        return _encode_bytes(_read_file(Path(image)), size)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _encode_bytes(bytes(image), size)
    if isinstance(image, Image.Image):
        return _encode_pil(image, size)
    if isinstance(image, np.ndarray):
        return _encode_pil(_array_to_pil(image), size)
    raise TypeError(
        "image must be a file path, a data URL, bytes, a PIL.Image.Image or a "
        f"numpy.ndarray, not {type(image).__name__}"
    )


# --------------------------------------------------------------------------
# inputs


def _read_file(path: Path) -> bytes:
    try:
        # stat first so a huge file is refused without reading it into memory
        length = path.stat().st_size
        if not path.is_file():
            raise ValueError(f"image path is not a file: {_short(path)}")
        if length > MAX_IMAGE_BYTES:
            raise ValueError(_too_big(length))
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"image file not found: {_short(path)}") from None
    except OSError as exc:
        raise ValueError(f"cannot read image file {_short(path)}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        if str(exc).startswith(("image ", "image is")):
            raise
        # e.g. "embedded null byte": not a usable path at all
        raise ValueError(f"invalid image path {_short(path)}: {exc}") from exc


def _short(path: Path) -> str:
    """A path for an error message; long strings (often base64 passed by mistake) cut."""
    text = str(path)
    return repr(text) if len(text) <= 120 else repr(text[:60] + "…" + text[-20:])


def decode_data_url(
    url: str, *, max_bytes: int = MAX_IMAGE_BYTES, image_only: bool = True
) -> tuple[str, bytes]:
    """``data:<mime>[;params];base64,<payload>`` → ``(mime, bytes)``: the package's one decoder.

    Pure, caller's thread. Whitespace inside the payload (MIME-style line
    wrapping) is ignored; anything else that is not base64 is refused. The
    size is checked on the encoded length first, so an absurdly large string
    is refused before anything is decoded.

    Args:
        max_bytes: largest decoded size accepted (default 25 MiB, the image limit).
        image_only: refuse a MIME type outside ``image/*``.

    Raises:
        TypeError: ``url`` is not a str.
        ValueError: not a base64 data URL, a non-image MIME type (with
            ``image_only``), invalid base64, empty, or over ``max_bytes``.
    """
    if not isinstance(url, str):
        raise TypeError(f"data URL must be a str, not {type(url).__name__}")
    match = _DATA_URL.match(url)
    if match is None:
        raise ValueError("image data URL must look like 'data:image/<type>;base64,<data>'")
    mime = match.group("mime").lower()
    if image_only and not mime.startswith("image/"):
        raise ValueError(f"image data URL has a non-image MIME type {match.group('mime')!r}")
    payload = url[match.end():]
    # base64 grows data by 4/3: refuse before decoding anything absurdly large
    compact = "".join(payload.split())
    if len(compact) > (max_bytes // 3 + 1) * 4 + 4:
        raise ValueError(_too_big(len(compact) * 3 // 4, max_bytes))
    try:
        # line breaks inside the payload are common (MIME-style wrapping)
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("image data URL payload is not valid base64") from exc
    if not data:
        raise ValueError("image data URL is empty")
    if len(data) > max_bytes:
        raise ValueError(_too_big(len(data), max_bytes))
    return mime, data


def _array_to_pil(array: np.ndarray[Any, Any]) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(
            f"image array must have dtype uint8, not {array.dtype} "
            "(scale floats to 0–255 and use .astype(numpy.uint8))"
        )
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[2] == 3:
        mode = "RGB"
    elif array.ndim == 3 and array.shape[2] == 4:
        mode = "RGBA"
    else:
        raise ValueError(
            f"image array must have shape (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey, "
            f"not {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image array is empty (shape {array.shape})")
    # fromarray needs C-contiguous memory (slices and transposes are not)
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


# --------------------------------------------------------------------------
# pipeline


def _encode_bytes(data: bytes, size: tuple[int, int]) -> str:
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(_too_big(len(data)))
    mime = detect_mime(data)
    if mime is None:
        raise ValueError(
            "unrecognised image format "
            "(accepted: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC, HEIF, AVIF)"
        )
    try:
        img = _open(data, size)
    except UnidentifiedImageError as exc:
        if mime in _OPAQUE_MIMES:
            return _data_url(data, mime)
        raise ValueError(f"cannot decode image ({mime}): unsupported or corrupt data") from exc
    upright = ImageOps.exif_transpose(img)
    if upright.size == size and _orientation(img) in (None, 1):
        # Already right: send the original bytes, no generation loss.
        return _data_url(data, mime)
    fitted = _fit(upright, size)
    fmt = _KEEP_FORMAT.get(img.format or "", "JPEG")
    return _finish(_save(fitted, fmt))


def _encode_pil(img: Image.Image, size: tuple[int, int]) -> str:
    try:
        img.load()
        upright = ImageOps.exif_transpose(img)
    except Exception as exc:  # a lazily opened image whose file is gone or corrupt
        raise ValueError(f"cannot read PIL image: {exc}") from exc
    if upright.width == 0 or upright.height == 0:
        raise ValueError("PIL image is empty")
    return _finish(_save(_fit(upright, size), "JPEG"))


def _open(data: bytes, size: tuple[int, int]) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # a bomb-sized image is an error here, not a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG":
                _draft(img, size)
            img.load()  # decode now so corrupt data fails here, not in resize
    except UnidentifiedImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"image has too many pixels to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(f"cannot decode image: corrupt or truncated data ({exc})") from exc
    return img


def _draft(img: Image.Image, size: tuple[int, int]) -> None:
    """Let libjpeg decode a big photo at 1/2, 1/4 or 1/8 scale (DCT scaling).

    A 12-megapixel JPEG then decodes about 3× faster; the requested size still
    *covers* the target, so the Lanczos pass that follows sees enough pixels.
    """
    tw, th = size
    if _orientation(img) in (5, 6, 7, 8):  # stored sideways: fit the swapped box
        tw, th = th, tw
    w, h = img.size
    scale = max(tw / w, th / h)
    if scale < 0.5:
        img.draft(img.mode, (math.ceil(w * scale), math.ceil(h * scale)))


def _orientation(img: Image.Image) -> int | None:
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # unreadable EXIF: treat as absent, exif_transpose did the same
        return None
    return value if isinstance(value, int) else None


def _fit(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover ``size`` (Lanczos) and centre-crop; keep RGB(A)/L modes."""
    if img.mode not in ("RGB", "RGBA", "L"):
        img = img.convert("RGBA" if _has_alpha(img) else "RGB")
    if img.size == size:
        return img
    return ImageOps.fit(img, size, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        img.save(buf, "JPEG", quality=_JPEG_QUALITY, optimize=True)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=_JPEG_QUALITY)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def _finish(data: bytes) -> str:
    mime = detect_mime(data)
    if mime is None:  # cannot happen for formats we write; never mislabel
        raise ValueError("internal error: re-encoded image has an unknown format")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(_too_big(len(data)))
    return _data_url(data, mime)


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _too_big(length: int, limit: int = MAX_IMAGE_BYTES) -> str:
    return (
        f"image is {length / 1048576:.1f} MiB; the limit is {limit / 1048576:g} MiB "
        f"({limit} bytes)"
    )
