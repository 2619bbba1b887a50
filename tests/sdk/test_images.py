"""encode_image: every input kind, EXIF orientation, size limits, MIME table."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from odyssey_sync._images import (
    LANDSCAPE_SIZE,
    MAX_IMAGE_BYTES,
    PORTRAIT_SIZE,
    decode_data_url,
    detect_mime,
    encode_image,
)


def _file(fmt: str, size: tuple[int, int] = (320, 200), mode: str = "RGB", **save: object) -> bytes:
    img = Image.new(mode, size, (200, 30, 30) if mode == "RGB" else 128)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _decode(url: str) -> tuple[str, Image.Image, bytes]:
    assert url.startswith("data:")
    head, payload = url.split(",", 1)
    assert head.endswith(";base64")
    data = base64.b64decode(payload, validate=True)
    return head[5:-7], Image.open(io.BytesIO(data)), data


# --- MIME table ------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (b"\xff\xd8\xff\xe0" + b"\0" * 12, "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 8, "image/png"),
        (b"GIF87a" + b"\0" * 10, "image/gif"),
        (b"GIF89a" + b"\0" * 10, "image/gif"),
        (b"RIFF\x10\0\0\0WEBPVP8 ", "image/webp"),
        (b"\0\0\0\x18ftypheic\0\0\0\0", "image/heic"),
        (b"\0\0\0\x18ftypheix\0\0\0\0", "image/heic"),
        (b"\0\0\0\x18ftypheim\0\0\0\0", "image/heic"),
        (b"\0\0\0\x18ftypheis\0\0\0\0", "image/heic"),
        (b"\0\0\0\x18ftypmif1\0\0\0\0", "image/heif"),
        (b"\0\0\0\x18ftypmsf1\0\0\0\0", "image/heif"),
        (b"\0\0\0\x18ftypavif\0\0\0\0", "image/avif"),
        (b"\0\0\0\x18ftypavis\0\0\0\0", "image/avif"),
        (b"\0\0\0\x18ftypzzzz\0\0\0\0", "image/heif"),
        (b"BM" + b"\0" * 14, "image/bmp"),
        (b"II*\x00" + b"\0" * 12, "image/tiff"),
        (b"MM\x00*" + b"\0" * 12, "image/tiff"),
        (b"hello world, not an image", None),
        (b"RIFF\x10\0\0\0WAVEfmt ", None),
        (b"", None),
        (b"BM", None),
    ],
)
def test_detect_mime_table(head: bytes, mime: str | None) -> None:
    assert detect_mime(head) == mime


# --- inputs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"),
     ("GIF", "image/jpeg"), ("BMP", "image/jpeg"), ("TIFF", "image/jpeg")],
)
def test_bytes_resized_and_reencoded(fmt: str, mime: str) -> None:
    url = encode_image(_file(fmt), portrait=False)
    got_mime, img, _ = _decode(url)
    assert got_mime == mime
    assert img.size == LANDSCAPE_SIZE


def test_portrait_target() -> None:
    _, img, _ = _decode(encode_image(_file("PNG"), portrait=True))
    assert img.size == PORTRAIT_SIZE


def test_exact_size_passes_through_unchanged() -> None:
    data = _file("PNG", PORTRAIT_SIZE)
    _, _, sent = _decode(encode_image(data, portrait=True))
    assert sent == data


def test_cover_crop_keeps_centre() -> None:
    # left third red, middle green, right third blue; landscape→portrait keeps green
    arr = np.zeros((300, 900, 3), np.uint8)
    arr[:, :300, 0] = 255
    arr[:, 300:600, 1] = 255
    arr[:, 600:, 2] = 255
    _, img, _ = _decode(encode_image(arr, portrait=True))
    px = np.asarray(img.convert("RGB"))
    assert px.shape == (1280, 704, 3)
    r, g, b = px[640, 352]
    assert g > 200 and r < 60 and b < 60
    # the whole frame comes from the middle third (cover, not letterbox)
    assert px[:, :, 1].mean() > 200


def test_path_and_pathlike(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(_file("JPEG"))
    for arg in (str(p), p):
        mime, img, _ = _decode(encode_image(arg, portrait=False))
        assert (mime, img.size) == ("image/jpeg", LANDSCAPE_SIZE)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        encode_image(str(tmp_path / "nope.png"), portrait=True)


def test_directory_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a file"):
        encode_image(tmp_path, portrait=True)


def test_data_url_is_validated_and_resized() -> None:
    url = "data:image/png;base64," + base64.b64encode(_file("PNG")).decode()
    mime, img, _ = _decode(encode_image(url, portrait=False))
    assert (mime, img.size) == ("image/png", LANDSCAPE_SIZE)


def test_data_url_mime_comes_from_content() -> None:
    # a JPEG declared as PNG is labelled by what it really is
    url = "data:image/png;base64," + base64.b64encode(_file("JPEG")).decode()
    assert encode_image(url, portrait=False).startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("data:text/plain;base64,aGVsbG8=", "non-image MIME"),
        ("data:image/png,rawdata", "must look like"),
        ("data:image/png;base64,!!!not base64!!!", "not valid base64"),
        ("data:image/png;base64,", "empty"),
        ("data:image/png;base64," + base64.b64encode(b"garbage" * 10).decode(), "unrecognised"),
    ],
)
def test_bad_data_urls(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_image(url, portrait=True)


def test_pil_image_any_mode() -> None:
    for mode in ("RGB", "RGBA", "L", "P", "CMYK", "I;16"):
        img = Image.new(mode, (50, 40))
        mime, out, _ = _decode(encode_image(img, portrait=True))
        assert (mime, out.size) == ("image/jpeg", PORTRAIT_SIZE)


@pytest.mark.parametrize("shape", [(40, 60, 3), (40, 60, 4), (40, 60)])
def test_ndarray_shapes(shape: tuple[int, ...]) -> None:
    arr = np.full(shape, 77, np.uint8)
    mime, img, _ = _decode(encode_image(arr, portrait=False))
    assert (mime, img.size) == ("image/jpeg", LANDSCAPE_SIZE)


def test_ndarray_is_rgb_not_bgr() -> None:
    arr = np.zeros((704, 1280, 3), np.uint8)
    arr[..., 0] = 255  # pure red in RGB
    _, img, _ = _decode(encode_image(arr, portrait=False))
    r, g, b = img.convert("RGB").getpixel((640, 352))  # type: ignore[misc]
    assert r > 240 and g < 20 and b < 20


def test_non_contiguous_array() -> None:
    arr = np.zeros((80, 60, 3), np.uint8)[::2, ::-1]
    _, img, _ = _decode(encode_image(arr, portrait=True))
    assert img.size == PORTRAIT_SIZE


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((10, 10, 3), np.float32), "dtype uint8"),
        (np.zeros((10, 10, 3), np.uint16), "dtype uint8"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        (np.zeros((10, 10, 3, 1), np.uint8), "shape"),
        (np.zeros((10,), np.uint8), "shape"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
    ],
)
def test_bad_arrays(arr: np.ndarray, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=match):
        encode_image(arr, portrait=True)


@pytest.mark.parametrize("bad", [123, None, 4.5, ["a"], {"x": 1}])
def test_unsupported_types(bad: object) -> None:
    with pytest.raises(TypeError, match="image must be"):
        encode_image(bad, portrait=True)


def test_portrait_must_be_bool() -> None:
    with pytest.raises(TypeError, match="portrait"):
        encode_image(_file("PNG"), portrait="yes")  # type: ignore[arg-type]


# --- limits and corruption ----------------------------------------------------


def test_oversize_bytes_refused() -> None:
    data = b"\xff\xd8\xff" + b"\0" * MAX_IMAGE_BYTES
    with pytest.raises(ValueError, match="25 MiB"):
        encode_image(data, portrait=True)


def test_oversize_file_refused_without_reading(tmp_path: Path) -> None:
    p = tmp_path / "big.jpg"
    with p.open("wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ValueError, match="25 MiB"):
        encode_image(p, portrait=True)


def test_oversize_data_url_refused() -> None:
    url = "data:image/jpeg;base64," + "A" * ((MAX_IMAGE_BYTES // 3 + 2) * 4)
    with pytest.raises(ValueError, match="25 MiB"):
        encode_image(url, portrait=True)


def test_exactly_at_limit_is_not_refused_for_size() -> None:
    # a valid PNG padded with trailing bytes to exactly 25 MiB: decodes fine
    data = _file("PNG")
    data += b"\0" * (MAX_IMAGE_BYTES - len(data))
    _, img, _ = _decode(encode_image(data, portrait=False))
    assert img.size == LANDSCAPE_SIZE


def test_corrupt_jpeg() -> None:
    data = _file("JPEG", (400, 300))
    with pytest.raises(ValueError, match="decode"):
        encode_image(data[: len(data) // 3], portrait=True)


def test_garbage_with_image_magic() -> None:
    with pytest.raises(ValueError, match="decode"):
        encode_image(b"\x89PNG\r\n\x1a\n" + b"\x13" * 200, portrait=True)


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unrecognised image format"):
        encode_image(b"just some text that is long enough", portrait=True)


def test_heic_passes_through_unresized() -> None:
    data = b"\0\0\0\x18ftypheic" + b"\0" * 100
    url = encode_image(data, portrait=True)
    assert url == "data:image/heic;base64," + base64.b64encode(data).decode()


# --- EXIF orientation ----------------------------------------------------------


def _exif_jpeg(size: tuple[int, int], orientation: int) -> bytes:
    # wide image: left half white, right half black
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_exif_rotation_applied() -> None:
    # stored 1280×704 with "rotate 90 CW" (6): upright it is 704×1280 portrait,
    # so a portrait target needs no crop and must come out rotated, not squashed
    data = _exif_jpeg(LANDSCAPE_SIZE, 6)
    _, img, sent = _decode(encode_image(data, portrait=True))
    assert sent != data
    assert img.size == PORTRAIT_SIZE
    px = np.asarray(img.convert("L"))
    # stored left half (white) ends up on top after a 90° clockwise turn
    assert px[:600].mean() > 200 and px[700:].mean() < 50
    assert img.getexif().get(0x0112) in (None, 1)


def test_exact_size_with_rotation_is_reencoded() -> None:
    data = _exif_jpeg(PORTRAIT_SIZE, 3)  # upside down, exact size
    _, img, sent = _decode(encode_image(data, portrait=True))
    assert sent != data and img.size == PORTRAIT_SIZE
    px = np.asarray(img.convert("L"))
    # rotated 180°: the white half moves from left to right
    assert px[:, :300].mean() < 50 and px[:, 404:].mean() > 200


def test_large_rotated_jpeg_uses_reduced_decode_and_still_covers() -> None:
    # 3× the target, stored sideways: decoded at reduced scale, still upright
    # and exactly the target size (the draft box is the swapped one)
    data = _exif_jpeg((3840, 2112), 6)
    _, img, _ = _decode(encode_image(data, portrait=True))
    assert img.size == PORTRAIT_SIZE
    px = np.asarray(img.convert("L"))
    assert px[:600].mean() > 200 and px[700:].mean() < 50


def test_bad_path_strings() -> None:
    with pytest.raises(ValueError, match="invalid image path"):
        encode_image("a\x00b.png", portrait=True)
    b64 = base64.b64encode(_file("PNG") * 20).decode()
    with pytest.raises(ValueError, match=r"not found|cannot read") as info:
        encode_image(b64, portrait=True)  # base64 without the data: prefix
    assert len(str(info.value)) < 200


def test_wrapped_data_url_payload() -> None:
    payload = base64.b64encode(_file("PNG")).decode()
    wrapped = "\n".join(payload[i:i + 76] for i in range(0, len(payload), 76))
    assert encode_image("data:image/png;base64," + wrapped, portrait=True).startswith(
        "data:image/png;base64,")


# --------------------------------------------------------------------------- decode_data_url


def test_decode_data_url_returns_mime_and_bytes() -> None:
    payload = base64.b64encode(b"\x89PNG\r\n\x1a\nrest").decode()
    wrapped = "\n".join(payload[i:i + 8] for i in range(0, len(payload), 8))
    assert decode_data_url(f"data:image/PNG;name=a.png;base64,{wrapped}") == (
        "image/png", b"\x89PNG\r\n\x1a\nrest")


def test_decode_data_url_refusals() -> None:
    text = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    with pytest.raises(ValueError, match="non-image"):
        decode_data_url(text)
    assert decode_data_url(text, image_only=False) == ("text/plain", b"hello")
    with pytest.raises(ValueError, match="limit is"):
        decode_data_url("data:image/png;base64," + base64.b64encode(b"x" * 100).decode(),
                        max_bytes=10)
    with pytest.raises(ValueError, match="base64"):
        decode_data_url("data:image/png;base64,@@@@")
    with pytest.raises(ValueError, match="look like"):
        decode_data_url("data:image/png,rawbytes")
    with pytest.raises(TypeError):
        decode_data_url(b"data:image/png;base64,AAAA")  # type: ignore[arg-type]
