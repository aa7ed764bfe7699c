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


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny synthetic MVTec tree: 2 categories, 12 training and 10 test images each, 64 px."""
    from minimaxad.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root / "data", categories=("weave", "washer"), n_train=12, n_test_good=4,
                                      n_test_defect=1, image_size=64, seed=3)


@pytest.fixture(scope="session")
def trained_checkpoint(synthetic_root, tmp_path_factory):
    """A unified micro model trained for a few steps with thresholds calibrated on held-out images."""
    from minimaxad.cli import main

    out = tmp_path_factory.mktemp("trained") / "run"
    code = main(["fit", "--data", str(synthetic_root), "--unified", "--output", str(out), "--backbone",
                 "unireplknet_micro", "--encoder-weights", "none", "--image-size", "64", "--batch-size", "4",
                 "--max-steps", "6", "--val-fraction", "0.25", "--quiet"])
    assert code == 0
    return out / "checkpoint.pt"
