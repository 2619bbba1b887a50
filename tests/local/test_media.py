"""Recordings and simulation renders: MP4 contents, stamps, atomic files, image decoding."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from odyssey_sync.local.render.media import (
    RenderedMedia,
    decode_image,
    render_recording,
    render_script,
)
from odyssey_sync.local.render.stamp import decode_stamp, stamp_region
from odyssey_sync.local.render.world import World

W, H, FPS = 320, 176, 30.0
FORMAT: dict[str, Any] = {"width": W, "height": H, "fps": FPS}  # of every render here


def _decode_all(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def _outside_stamp(width: int, height: int) -> np.ndarray:
    x, y, w, h = stamp_region(width, height)
    mask = np.ones((height, width), dtype=bool)
    mask[y : y + h, x : x + w] = False
    return mask


def test_recording_has_every_frame_stamped_in_order(tmp_path: Path) -> None:
    out = tmp_path / "rec" / "stream.mp4"  # parent created on demand
    result = render_recording(
        out,
        **FORMAT,
        prompt="A cat asleep on a couch",
        image=None,
        interactions=[(20, "The cat wakes up")],
        frame_count=40,
        stamp_origin=1000.0,
    )
    assert result == RenderedMedia(frame_count=40, duration_seconds=40 / 30, width=W, height=H)
    frames = _decode_all(out)
    assert len(frames) == 40
    world = World(W, H, "A cat asleep on a couch", fps=FPS)
    world.interact("The cat wakes up", 20)
    mask = _outside_stamp(W, H)
    for i, frame in enumerate(frames):
        assert (frame.width, frame.height) == (W, H)
        assert frame.time is not None and frame.time == pytest.approx(i / FPS, abs=1e-3)
        rgb = frame.to_ndarray(format="rgb24")
        stamp = decode_stamp(rgb, now=1000.0)
        assert stamp is not None and stamp.frame == i
        assert stamp.sent_at == pytest.approx(1000.0 + i / FPS, abs=1e-5)
        # The recording shows what the world renders (within codec loss).
        diff = np.abs(rgb.astype(np.int16) - world.render(i).astype(np.int16))
        assert diff[mask].mean() < 6, i
    assert sorted(p.name for p in out.parent.iterdir()) == ["stream.mp4"]  # no temp files


def test_mp4_metadata(tmp_path: Path) -> None:
    out = tmp_path / "a.mp4"
    render_recording(
        out,
        width=176,
        height=320,
        fps=24.0,
        prompt="p",
        image=None,
        interactions=[],
        frame_count=12,
    )
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 24
        assert container.duration is not None
        assert container.duration / 1e6 == pytest.approx(0.5, abs=0.05)
    # faststart: the index (moov) precedes the media data (mdat).
    head = out.read_bytes()
    assert 0 <= head.find(b"moov") < head.find(b"mdat")


def test_thumbnail_and_preview(tmp_path: Path) -> None:
    out, thumb, preview = tmp_path / "v.mp4", tmp_path / "t.jpg", tmp_path / "p.mp4"
    render_recording(
        out,
        width=640,
        height=352,
        fps=FPS,
        prompt="Thumbnails",
        image=None,
        interactions=[],
        frame_count=8,
        thumbnail_path=thumb,
        preview_path=preview,
    )
    with Image.open(thumb) as img:
        assert img.format == "JPEG" and img.size == (640, 352)
        first = np.asarray(img.convert("RGB"))
    assert decode_stamp(first, now=0.0) is not None  # the thumbnail is frame 0 as recorded
    small = _decode_all(preview)
    assert len(small) == 8 and (small[0].width, small[0].height) == (320, 176)


def test_image_recording_starts_with_the_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    photo = np.repeat(np.repeat(rng.integers(0, 256, (11, 20, 3), dtype=np.uint8), 16, 0), 16, 1)
    out = tmp_path / "i.mp4"
    render_recording(
        out, **FORMAT, prompt="p", image=photo, interactions=[], frame_count=3
    )
    first = _decode_all(out)[0].to_ndarray(format="rgb24")
    mask = _outside_stamp(W, H)
    assert np.abs(first.astype(np.int16) - photo.astype(np.int16))[mask].mean() < 8


def test_script_render(tmp_path: Path) -> None:
    script = [
        {"timestamp_ms": 0, "start": {"prompt": "A cat asleep on a couch"}},
        {"timestamp_ms": 500, "interact": {"prompt": "The cat wakes up"}},
        {"timestamp_ms": 1000, "end": {}},
    ]
    out = tmp_path / "job.mp4"
    result = render_script(out, **FORMAT, script=script, stamp_origin=2.0)
    assert result.frame_count == 30 and result.duration_seconds == pytest.approx(1.0)
    frames = [f.to_ndarray(format="rgb24") for f in _decode_all(out)]
    assert len(frames) == 30
    stamps = [decode_stamp(f, now=2.0) for f in frames]
    assert [s.frame for s in stamps if s is not None] == list(range(30))
    world = World(W, H, "A cat asleep on a couch", fps=FPS)
    world.interact("The cat wakes up", 15)
    mask = _outside_stamp(W, H)
    for i in (14, 15, 29):
        assert np.abs(frames[i].astype(np.int16) - world.render(i))[mask].mean() < 6, i


def test_script_with_a_start_image_data_url(tmp_path: Path) -> None:
    photo = np.zeros((H, W, 3), dtype=np.uint8)
    photo[:, : W // 2] = (250, 30, 30)
    photo[:, W // 2 :] = (30, 30, 250)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    script = [
        {"timestamp_ms": 0, "start": {"prompt": "p", "image": url}},
        {"timestamp_ms": 100, "end": {}},
    ]
    out = tmp_path / "img.mp4"
    assert render_script(out, **FORMAT, script=script).frame_count == 3
    first = _decode_all(out)[0].to_ndarray(format="rgb24")
    assert first[H - 10, 10, 0] > 200 and first[H - 10, W - 10, 2] > 200


def test_script_without_start_or_end(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="start"):
        render_script(
            tmp_path / "x.mp4", **FORMAT, script=[{"timestamp_ms": 9, "end": {}}]
        )
    with pytest.raises(ValueError, match="end"):
        render_script(
            tmp_path / "x.mp4",
            **FORMAT,
            script=[{"timestamp_ms": 0, "start": {"prompt": "p"}}],
        )
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_fail_before_writing(tmp_path: Path) -> None:
    common = {**FORMAT, "prompt": "p", "image": None}
    with pytest.raises(ValueError):
        render_recording(tmp_path / "a.mp4", interactions=[], frame_count=0, **common)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        render_recording(tmp_path / "a.mp4", interactions=["x"], frame_count=3, **common)  # type: ignore[list-item, arg-type]
    with pytest.raises(ValueError):
        render_recording(
            tmp_path / "a.mp4",
            **{**FORMAT, "fps": -1.0},
            prompt="p",
            image=None,
            interactions=[],
            frame_count=3,
        )
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_render_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = World.video_frame

    def failing(self: World, frame: int, sent_at: float | None = None) -> av.VideoFrame:
        if frame == 5:
            raise RuntimeError("boom")
        return real(self, frame, sent_at)

    monkeypatch.setattr(World, "video_frame", failing)  # the class media.py uses
    (tmp_path / "old.mp4").write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="boom"):
        render_recording(
            tmp_path / "old.mp4",
            **FORMAT,
            prompt="p",
            image=None,
            interactions=[],
            frame_count=10,
            thumbnail_path=tmp_path / "t.jpg",
            preview_path=tmp_path / "p.mp4",
        )
    # The previous file is untouched and no partial output remains.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.mp4"]
    assert (tmp_path / "old.mp4").read_bytes() == b"previous"


# -- decode_image ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_decode_image_formats(fmt: str) -> None:
    src = np.zeros((30, 40, 3), dtype=np.uint8)
    src[:, :20] = (200, 40, 40)
    buf = io.BytesIO()
    Image.fromarray(src).save(buf, format=fmt)
    img = decode_image(buf.getvalue())
    assert img.shape == (30, 40, 3) and img.dtype == np.uint8
    assert img[15, 5, 0] > 150 and img[15, 35, 0] < 60


def test_decode_image_applies_exif_orientation_and_drops_alpha() -> None:
    src = Image.new("RGBA", (40, 20), (10, 200, 10, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    src.convert("RGB").save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue()).shape == (40, 20, 3)
    buf = io.BytesIO()
    src.save(buf, format="PNG")
    assert decode_image(bytearray(buf.getvalue())).shape == (20, 40, 3)


def test_decode_image_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        decode_image(b"")
    with pytest.raises(ValueError, match="decodable"):
        decode_image(b"definitely not an image")
    with pytest.raises(ValueError):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # truncated PNG
    with pytest.raises(TypeError):
        decode_image("data:image/png;base64,AAAA")  # type: ignore[arg-type]
