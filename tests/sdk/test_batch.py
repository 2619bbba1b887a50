"""simulate_batch: many simulation scripts within the queue limit, parallel downloads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from odyssey_sync._batch import load_scripts, read_script, simulate_batch
from odyssey_sync.client import Odyssey
from odyssey_sync.local import LocalOdyssey
from tests.support import ActiveJobWatcher, warm_up_simulations
from tests.support import simulation_script as script

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOdyssey]:
    with LocalOdyssey(size=(320, 176), fps=10, job_delay=0.3,
                      data_dir=tmp_path_factory.mktemp("batch")) as srv:
        warm_up_simulations(srv)
        yield srv


def test_twelve_scripts_under_a_queue_limit_of_ten(server: LocalOdyssey, tmp_path: Path) -> None:
    scripts_dir = tmp_path / "scripts"
    scripts_dir.mkdir()
    for i in range(12):
        (scripts_dir / f"scene{i:02d}.json").write_text(json.dumps(script(f"scene {i}")))
    out = tmp_path / "videos"
    with Odyssey(server.api_key, api_url=server.url) as client, Odyssey(
        server.api_key, api_url=server.url
    ) as watching, ActiveJobWatcher(watching) as watcher:
        result = simulate_batch(client, scripts_dir, download=out, parallel=3, max_queued=10,
                                poll_interval=0.1, timeout=120, progress=False)
    assert result.ok, result.failed
    assert [item.name for item in result.items] == [f"scene{i:02d}" for i in range(12)]
    assert result.peak_queued == 10  # the limit was used, never passed
    assert 1 <= watcher.peak <= 10
    videos = sorted(p.name for p in out.iterdir())
    assert videos == [f"scene{i:02d}.mp4" for i in range(12)]  # no temp files left
    for item in result.items:
        assert item.videos[0].stat().st_size > 1000
        assert item.videos[0].read_bytes()[4:8] == b"ftyp"


def test_a_refused_script_does_not_stop_the_batch(server: LocalOdyssey, tmp_path: Path) -> None:
    specs = {"fine": script("a calm sea"),
             "several": {"scripts": [script("left"), script("right")]},
             "bad url": {"script_url": "https://127.0.0.1:9/missing.json"}}
    with Odyssey(server.api_key, api_url=server.url) as client:
        result = simulate_batch(client, specs, download=tmp_path, poll_interval=0.1,
                                timeout=120, progress=False)
    by_name = {item.name: item for item in result.items}
    assert by_name["fine"].status == "completed" and len(by_name["fine"].videos) == 1
    assert [p.name for p in by_name["several"].videos] == ["several-0.mp4", "several-1.mp4"]
    assert by_name["bad url"].status != "completed" and by_name["bad url"].error
    assert not result.ok and result.failed == [by_name["bad url"]]


def test_bad_scripts_raise_before_any_request(tmp_path: Path) -> None:
    client = Odyssey("ody_test", api_url="http://127.0.0.1:9")  # nothing listens there
    try:
        with pytest.raises(ValueError, match="'two'"):
            simulate_batch(client, {"one": script("ok"), "two": [{"timestamp_ms": 0}]})
        with pytest.raises(ValueError, match="parallel"):
            simulate_batch(client, {"one": script("ok")}, parallel=0)
        with pytest.raises(ValueError, match=r"no \*\.json"):
            simulate_batch(client, tmp_path)
        (tmp_path / "broken.json").write_text("{not json")
        with pytest.raises(ValueError, match="not valid JSON"):
            load_scripts(tmp_path)
    finally:
        client.close()
    (tmp_path / "broken.json").write_text(json.dumps([script("a"), script("b")]))
    assert set(read_script(tmp_path / "broken.json")) == {"scripts"}
