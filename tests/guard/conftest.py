"""Fixtures for the guard tests."""

from __future__ import annotations

import pytest
from guard_fakes import HashEmbedder


@pytest.fixture
def hash_embedder():
    return HashEmbedder()
