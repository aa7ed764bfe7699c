"""Shared test fixtures: the read-only reference data in ../shared beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
REFERENCE_DIR = SHARED_DIR / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference fixtures not found at {REFERENCE_DIR} (the ../shared folder beside the repo)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def magnetic_tile_dir() -> Path:
    path = SHARED_DIR / "data" / "magnetic_tile"
    if not path.is_dir():
        pytest.skip(f"real magnetic-tile photos not found at {path}")
    return path
