"""Fixtures of the data-layer tests (builders live in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import MAGNETIC_TILE, make_mvtec


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    """The real magnetic-tile dataset (MVTec layout, grayscale JPEGs), read-only."""
    path = MAGNETIC_TILE.resolve()
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"real magnetic-tile dataset not found at {path} (../shared/data beside the repo)")
    return path


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    """Two categories, 3 train / 2 good / 2x2 defect images, 48x40 PNGs, MVTec masks."""
    return make_mvtec(tmp_path / "mvtec")
