"""Task tests write their generated pools (ListOps, Pathfinder) into a temporary cache, never the user's."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _task_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LIGHTFORMER_CACHE", str(tmp_path_factory.mktemp("lightformer-cache")))
    yield
    mp.undo()
