"""The demo end to end against the embedded server (short run)."""

from __future__ import annotations

from pathlib import Path

import av
import pytest
from PIL import Image

from odyssey_sync.demo import run_demo

pytestmark = pytest.mark.e2e


def test_demo_writes_video_and_contact_sheet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ODYSSEY_API_URL", raising=False)
    monkeypatch.delenv("ODYSSEY_API_KEY", raising=False)
    rc = run_demo(api_url=None, api_key=None, out_dir=tmp_path, prompt="a quiet harbour",
                  seconds=2.0, portrait=False)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "interact →" in out and "frames: received" in out
    with av.open(str(tmp_path / "demo.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) > 10 and (frames[0].width, frames[0].height) == (640, 352)
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.width > 0


def test_demo_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        run_demo(api_url=None, api_key=None, out_dir=tmp_path, prompt=" ", seconds=1,
                 portrait=True)
    with pytest.raises(ValueError):
        run_demo(api_url=None, api_key=None, out_dir=tmp_path, prompt="x", seconds=0,
                 portrait=True)


def test_demo_reports_failure_without_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = run_demo(api_url="http://127.0.0.1:9", api_key="ody_secret_demo_key", out_dir=tmp_path,
                  prompt="x", seconds=1, portrait=True)
    out = capsys.readouterr().out
    assert rc == 1 and "demo failed" in out and "ody_secret_demo_key" not in out
