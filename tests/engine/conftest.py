from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny synthetic MVTec tree: 2 categories, 12 training and 10 test images each, 64 px."""
    from minimaxad.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root / "data", categories=("weave", "washer"), n_train=12, n_test_good=4,
                                      n_test_defect=1, image_size=64, seed=3)


TINY = ["--backbone", "unireplknet_micro", "--encoder-weights", "none", "--image-size", "64",
        "--batch-size", "4", "--quiet"]
