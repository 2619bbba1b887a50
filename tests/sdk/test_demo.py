"""The demo: a short run against the embedded server, its contact sheet, its refusals."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from PIL import Image

from odyssey_sync import OdysseyConnectionError, OdysseyError
from odyssey_sync.demo import DEMO_INTERACTIONS, STAMP_EXPLANATION, choose_tiles, run_demo
from odyssey_sync.local.render.stamp import decode_stamp


@pytest.fixture(autouse=True)
def no_api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ODYSSEY_API_URL", raising=False)
    monkeypatch.delenv("ODYSSEY_API_KEY", raising=False)


@pytest.mark.e2e
def test_demo_writes_the_stream_and_a_sheet_over_all_of_it(tmp_path: Path) -> None:
    said: list[str] = []
    report = run_demo(api_url=None, api_key=None, out_dir=tmp_path, prompt="a quiet harbour",
                      seconds=2.0, portrait=False, say=said.append)
    text = "\n".join(said)
    assert "interact →" in text and "frames: received" in text
    assert f"data directory: {report.data_dir}" in text and "temporary" in text
    assert "frame stamp" in text and report.notes == [STAMP_EXPLANATION]
    assert report.interactions and len(report.interactions) == len(DEMO_INTERACTIONS)
    assert report.latency_ms_p50 is not None

    with av.open(str(tmp_path / "demo.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == report.frames_written > 10
    assert frames[0].shape[:2] == (352, 640)
    # The video is the stream alone: not the idle picture the server sends
    # before and after it (numbered on its own), so the stamps' frame numbers
    # start near 0 and only go up.
    stamps = [decode_stamp(f) for f in frames]
    numbers = [s.frame for s in stamps if s is not None]
    assert len(numbers) > 0.9 * len(frames)
    assert numbers[0] <= 2 and numbers == sorted(set(numbers)), numbers

    times, acks = report.contact_sheet_seconds, report.interaction_seconds
    assert times[0] == 0.0 and len(times) >= 12
    assert times[-1] > 1.5  # reaches the end of the 2 s stream
    for start, stop in zip(acks, [*acks[1:], float("inf")], strict=True):
        assert any(start <= t < stop for t in times), (start, times)
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.width == 4 * 320 and sheet.height == 176 * ((len(times) + 3) // 4)


def test_choose_tiles_spreads_evenly_and_covers_every_interaction() -> None:
    times = [i * 0.1 for i in range(81)]  # 0.0 .. 8.0 s
    chosen = choose_tiles(times, [2.0, 4.0, 6.0], count=12)
    picked = [times[k] for k in chosen]
    assert picked[0] == 0.0 and picked[-1] == pytest.approx(8.0)
    assert len(picked) == 12
    # Even samples already cover each interaction's span: nothing added.
    chosen = choose_tiles(times, [2.0, 7.95], count=4)
    assert [round(times[k], 1) for k in chosen] == [0.0, 2.7, 5.3, 8.0]
    # A short span between two even samples gets its own first tile.
    chosen = choose_tiles(times, [1.0, 1.2], count=4)
    assert [round(times[k], 1) for k in chosen] == [0.0, 1.0, 2.7, 5.3, 8.0]
    assert choose_tiles([], [1.0]) == []


def test_demo_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prompt"):
        run_demo(api_url=None, api_key=None, out_dir=tmp_path, prompt=" ", seconds=1,
                 portrait=True)
    with pytest.raises(ValueError, match="seconds"):
        run_demo(api_url=None, api_key=None, out_dir=tmp_path, prompt="x", seconds=0,
                 portrait=True)


def test_demo_refuses_a_url_without_a_key(tmp_path: Path) -> None:
    said: list[str] = []
    with pytest.raises(ValueError, match="no API key"):
        run_demo(api_url="http://127.0.0.1:9", api_key=None, out_dir=tmp_path, prompt="x",
                 seconds=1, portrait=True, say=said.append)
    assert said == []  # no embedded server was started instead


def test_demo_failure_carries_no_secret(tmp_path: Path) -> None:
    with pytest.raises(OdysseyError) as info:
        run_demo(api_url="http://127.0.0.1:9", api_key="ody_secret_demo_key", out_dir=tmp_path,
                 prompt="x", seconds=1, portrait=True, say=lambda _: None)
    assert isinstance(info.value, OdysseyConnectionError) or "127.0.0.1:9" in str(info.value)
    assert "ody_secret_demo_key" not in str(info.value)
    assert not (tmp_path / "demo.mp4").exists()
