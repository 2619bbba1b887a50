"""Fixtures of the SDK tests: one small live-video server per test module.

``server`` is a module-scoped :class:`~odyssey_sync.local.LocalOdyssey` at
320×176 @ 15 fps with four streamer slots, recordings off, its data in a
temporary directory, warmed up by one stream (so first-use costs never land
in a test). A module changes its options with
``pytestmark = pytest.mark.server_options(fps=..., stream_limit=...)``;
``server_options(warm_up=False)`` skips the warm-up. Every test that uses it
starts and ends with no fault switch set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from odyssey_sync.local import LocalOdyssey
from tests.support import warm_up

DEFAULTS: dict[str, Any] = {"size": (320, 176), "fps": 15, "capacity": 4, "recordings": False}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server_options(**options): LocalOdyssey options of the module's `server`")


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalOdyssey]:
    options = dict(DEFAULTS)
    for marker in reversed(list(request.node.iter_markers("server_options"))):
        options.update(marker.kwargs)
    warm = options.pop("warm_up", True)
    with LocalOdyssey(data_dir=tmp_path_factory.mktemp("server"), **options) as srv:
        if warm:
            warm_up(srv)
        yield srv


@pytest.fixture(autouse=True)
def clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fault switches off before and after each test of a module that uses ``server``."""
    if "server" not in request.fixturenames:
        yield
        return
    srv: LocalOdyssey = request.getfixturevalue("server")
    srv.faults.clear()
    yield
    srv.faults.clear()
