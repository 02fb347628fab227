"""Every test's caches (latency tables, depth costs) live in one temporary folder per session, never
the user's ``~/.cache/hwprune``; a test that needs its own sets ``HWPRUNE_CACHE`` itself. Every test under
``tests/e2e`` is marked ``e2e``."""

from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hwprune-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(session_cache, monkeypatch):
    monkeypatch.setenv("HWPRUNE_CACHE", str(session_cache))
