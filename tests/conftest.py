"""Every test's caches (latency tables, depth costs) live in one temporary folder per session, never
the user's ``~/.cache/hwprune``; a test that needs its own sets ``HWPRUNE_CACHE`` itself."""

import pytest


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hwprune-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(session_cache, monkeypatch):
    monkeypatch.setenv("HWPRUNE_CACHE", str(session_cache))
