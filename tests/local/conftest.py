"""Fixtures of the local-server tests: a small server per test and a REST caller.

``server`` is a quiet 320×176 @ 10 fps server on a free port in the test's own
``tmp_path`` (never the user's data directory), stopped and joined after the
test. Options can be changed per module or test with
``@pytest.mark.server_options(capacity=3, ...)``. The fault switches belong to
the server, so every test starts with none set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from odyssey_sync.local import LocalOdyssey
from tests.local.helpers import Api, local_server


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server_options(**options): LocalOdyssey options of the `server` fixture")


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalOdyssey]:
    """A running small server for this test (options from ``server_options`` markers)."""
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("server_options"))):
        options.update(marker.kwargs)
    with local_server(tmp_path, **options) as srv:
        yield srv


@pytest.fixture
def api(server: LocalOdyssey) -> Iterator[Api]:
    """REST calls to ``server`` as its primary API key."""
    with Api(server) as client:
        yield client
