"""The synthetic world: determinism, prompt dependence, interactions, image start."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from odyssey_sync.local.render.stamp import FrameStamp, decode_stamp, stamp_region
from odyssey_sync.local.render.world import World, applied_prompt

W, H = 320, 176


def _outside_stamp(width: int, height: int) -> np.ndarray:
    x, y, w, h = stamp_region(width, height)
    mask = np.ones((height, width), dtype=bool)
    mask[y : y + h, x : x + w] = False
    return mask


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _photo(width: int, height: int, seed: int = 1) -> np.ndarray:
    """A smooth, photo-like test picture (gradients and blobs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), dtype=np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6)
        img[..., c] = 128 + 100 * np.sin(fx * x / width * 6.28 + ph) * np.cos(
            fy * y / height * 3.14
        )
    return np.clip(img, 0, 255).astype(np.uint8)


# -- determinism ----------------------------------------------------------------------


def test_same_inputs_give_identical_pixels() -> None:
    a = World(W, H, "A red fox in a snowy forest")
    b = World(W, H, "A red fox in a snowy forest")
    for world in (a, b):
        world.interact("The fox starts to run", 20)
        world.interact("Night falls", 40)
    for frame in (0, 1, 19, 20, 21, 39, 40, 90, 1000):
        assert np.array_equal(a.render(frame), b.render(frame)), frame


def test_frame_is_a_pure_function_of_its_number() -> None:
    world = World(W, H, "A harbour at dawn")
    first = world.render(5).copy()
    world.render(300)
    world.render(6)
    assert np.array_equal(world.render(5), first)
    # Interactions later than the frame do not change it, whenever they are added.
    world.interact("Boats leave", 50)
    assert np.array_equal(world.render(5), first)


def test_prepared_scenes_give_the_same_frames() -> None:
    """prepare() off-thread + interact(scene=) == interact() building the scene itself."""
    import concurrent.futures

    image = _photo(W, H)
    for img in (None, image):
        plain = World(W, H, "a harbour", image=img)
        plain.interact("boats leave", 5)
        plain.interact("boats leave", 9)  # same prompt again: a different scene
        plain.interact("night falls", 9)

        world = World(W, H, "a harbour", image=img)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-prepare") as pool:
            scenes = [pool.submit(world.prepare, p, i).result()
                      for i, p in enumerate(["boats leave", "boats leave", "night falls"], 1)]
        assert [(s.index, s.prompt) for s in scenes] == [
            (1, "boats leave"), (2, "boats leave"), (3, "night falls")]
        world.render(3)  # rendering between prepare and install changes nothing
        for scene, frame in zip(scenes, (5, 9, 9), strict=True):
            world.interact(scene.prompt, frame, scene=scene)
        assert world.interactions == plain.interactions
        for frame in (0, 4, 5, 8, 9, 12):
            assert np.array_equal(world.render(frame), plain.render(frame)), frame
        vf_a, vf_b = world.video_frame(12, 1.0), plain.video_frame(12, 1.0)
        assert np.array_equal(vf_a.to_ndarray(), vf_b.to_ndarray())


def test_a_scene_that_does_not_fit_is_ignored() -> None:
    reference = World(W, H, "a harbour")
    reference.interact("gulls", 4)
    expected = reference.render(6).copy()
    other = World(W, H, "a harbour")
    wrong = [
        other.prepare("gulls", 1),             # another world's scene
        reference.prepare("gulls", 2),         # wrong interaction number
        reference.prepare("pelicans", 1),      # wrong prompt
    ]
    for scene in wrong:
        world = World(W, H, "a harbour")
        world.interact("gulls", 4, scene=scene)
        assert np.array_equal(world.render(6), expected)
    assert other.prepare("gulls").index == 1  # default: the next interaction
    with pytest.raises(TypeError):
        other.interact("gulls", 4, scene="not a scene")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        other.prepare("gulls", 0)
    with pytest.raises(TypeError):
        other.prepare(None)  # type: ignore[arg-type]


def test_interactions_added_out_of_order() -> None:
    ordered = World(W, H, "p")
    ordered.interact("one", 10)
    ordered.interact("two", 20)
    shuffled = World(W, H, "p")
    shuffled.interact("two", 20)
    shuffled.interact("one", 10)
    assert ordered.interactions == shuffled.interactions == [(10, "one"), (20, "two")]
    for frame in (0, 10, 15, 20, 25):
        assert np.array_equal(ordered.render(frame), shuffled.render(frame))


def test_render_returns_the_full_frame_in_rgb() -> None:
    img = World(W, H, "x").render(0)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8


# -- what the picture shows ---------------------------------------------------------------


def test_different_prompts_give_clearly_different_pictures() -> None:
    prompts = ["A cat asleep on a couch", "A cat asleep on a couch!", "Mars at noon", "x"]
    frames = [World(W, H, p).render(0).copy() for p in prompts]
    for i in range(len(frames)):
        for j in range(i + 1, len(frames)):
            assert _mad(frames[i], frames[j]) > 15, (prompts[i], prompts[j])


def test_consecutive_frames_move() -> None:
    world = World(W, H, "A train crossing a valley")
    previous = world.render(0).copy()
    for frame in range(1, 10):
        current = world.render(frame).copy()
        assert not np.array_equal(current, previous)
        # Motion, not a cut: consecutive frames stay similar.
        assert _mad(current, previous) < 25
        previous = current


def test_prompt_is_captioned_at_the_bottom() -> None:
    a = World(W, H, "Caption one").render(0).copy()
    b = World(W, H, "Caption two").render(0).copy()
    band = slice(H - H // 10, H)
    # The caption strip is dark apart from the text.
    assert a[band].mean() < 100 and b[band].mean() < 100
    assert not np.array_equal(a[band], b[band])


def test_interaction_changes_the_picture_from_its_frame_on() -> None:
    plain = World(W, H, "A quiet lake")
    changed = World(W, H, "A quiet lake")
    changed.interact("A storm rolls in", 30)
    for frame in (0, 15, 29):
        assert np.array_equal(plain.render(frame), changed.render(frame)), frame
    for frame in (30, 31, 60):
        assert _mad(plain.render(frame).copy(), changed.render(frame)) > 15, frame


def test_each_interaction_changes_the_scene_even_with_the_same_prompt() -> None:
    world = World(W, H, "A quiet lake")
    world.interact("Again", 10)
    world.interact("Again", 20)
    at19 = world.render(19).copy()
    assert _mad(world.render(20), at19) > 15


@pytest.mark.parametrize(("width", "height"), [(176, 320), (704, 1280), (1280, 704), (160, 96)])
def test_sizes_and_orientations(width: int, height: int) -> None:
    world = World(width, height, "Portrait or landscape", fps=24)
    assert world.render(3).shape == (height, width, 3)


def test_fps_sets_the_speed_of_motion() -> None:
    # One second of motion at 30 fps equals one second at 15 fps.
    fast = World(W, H, "Same world", fps=30)
    slow = World(W, H, "Same world", fps=15)
    assert np.array_equal(fast.render(30), slow.render(15))


# -- image to video ------------------------------------------------------------------------


def test_frame_zero_is_the_input_image() -> None:
    photo = _photo(W, H)
    world = World(W, H, "Make it move", image=photo)
    first = world.render(0)
    assert np.array_equal(first, photo)  # same size: nothing to resample
    later = world.render(45)
    assert _mad(later, photo) > 3  # it evolves: pans, objects enter


def test_input_image_of_another_size_is_resized_and_cropped() -> None:
    big = _photo(960, 704, seed=2)  # taller aspect than 320×176: cover, crop top and bottom
    world = World(W, H, "p", image=big)
    scaled = Image.fromarray(big).resize((320, 235), Image.Resampling.LANCZOS)
    top = (235 - H) // 2
    expected = np.asarray(scaled.crop((0, top, W, top + H)))
    assert _mad(world.render(0), expected) < 2


def test_rgba_and_grey_images() -> None:
    photo = _photo(W, H)
    rgba = np.concatenate([photo, np.full((H, W, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(World(W, H, "p", image=rgba).render(0), photo)
    grey = photo[..., 1].copy()
    assert np.array_equal(World(W, H, "p", image=grey).render(0), np.stack([grey] * 3, axis=2))


def test_interaction_on_an_image_world_regrades_it() -> None:
    photo = _photo(W, H)
    world = World(W, H, "p", image=photo)
    world.interact("Sunset colours", 1)
    assert _mad(world.render(1), photo) > 15


# -- video frames ---------------------------------------------------------------------------


def test_video_frame_is_stamped_yuv420p() -> None:
    world = World(W, H, "Stamped")
    vf = world.video_frame(42, sent_at=1234.5)
    assert isinstance(vf, av.VideoFrame)
    assert (vf.width, vf.height, vf.format.name) == (W, H, "yuv420p")
    rgb = vf.to_ndarray(format="rgb24")
    assert decode_stamp(rgb, now=1234.6) == FrameStamp(42, 1234.5)
    # Outside the stamp the picture is the rendered frame (up to colour conversion).
    mask = _outside_stamp(W, H)
    assert _mad(rgb[mask], World(W, H, "Stamped").render(42)[mask]) < 3


def test_video_frame_default_send_time_is_now() -> None:
    import time

    before = time.monotonic()
    vf = World(160, 96, "now").video_frame(0)
    stamp = decode_stamp(vf.to_ndarray(format="rgb24"))
    assert stamp is not None and stamp.frame == 0
    assert before - 1e-6 <= stamp.sent_at <= time.monotonic()


# -- arguments and applied_prompt ----------------------------------------------------------------


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        World(321, 176, "odd width")
    with pytest.raises(ValueError):
        World(W, 0, "zero height")
    with pytest.raises(ValueError, match="too small"):
        World(96, 64, "too small for a stamp")
    with pytest.raises(TypeError):
        World(320.0, 176, "float width")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        World(W, H, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        World(W, H, "p", fps=0)
    with pytest.raises(ValueError):
        World(W, H, "p", fps=float("nan"))
    with pytest.raises(TypeError):
        World(W, H, "p", image=np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError):
        World(W, H, "p", image=np.zeros((10, 10, 2), np.uint8))
    world = World(W, H, "p")
    with pytest.raises(ValueError):
        world.render(-1)
    with pytest.raises(TypeError):
        world.render(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        world.interact("p", -5)
    with pytest.raises(TypeError):
        world.interact(b"bytes", 5)  # type: ignore[arg-type]


def test_repr_is_short() -> None:
    text = repr(World(W, H, "x" * 500))
    assert len(text) < 200 and "320x176" in text


def test_applied_prompt() -> None:
    a = applied_prompt("  A cat on a mat ")
    assert a.startswith("A cat on a mat, ") and a == applied_prompt("A cat on a mat")
    assert applied_prompt("")  # still a non-empty description
    styles = {applied_prompt(f"prompt {i}").split(", ", 1)[1] for i in range(50)}
    assert len(styles) > 3  # the decoration depends on the prompt
    with pytest.raises(TypeError):
        applied_prompt(3)  # type: ignore[arg-type]
