"""Shared test fixtures: the read-only reference data in ../shared beside the repository."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
REFERENCE_DIR = SHARED_DIR / "reference"
# The authors' code (WangFengJiee/MiniMaxAD) to compare against, when present on this machine.
AUTHORS_CODE_ENV = "MINIMAXAD_AUTHORS_CODE"
DEFAULT_AUTHORS_CODE = SHARED_DIR / "authors_code"


def authors_code_dir() -> Path | None:
    """``$MINIMAXAD_AUTHORS_CODE`` or ../shared/authors_code, if it holds the authors' model files."""
    path = Path(os.environ.get(AUTHORS_CODE_ENV, DEFAULT_AUTHORS_CODE))
    return path if (path / "models" / "unireplknet.py").is_file() else None


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference fixtures not found at {REFERENCE_DIR} (the ../shared folder beside the repo)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def authors_models():
    """The authors' model files (``unireplknet``: encoder + bottleneck, ``de_unireplknet``: decoder),
    imported without timm through ../shared/tools/authors_shim.py; skipped when either is absent."""
    code, shim = authors_code_dir(), SHARED_DIR / "tools" / "authors_shim.py"
    if code is None or not shim.is_file():
        pytest.skip(
            f"the authors' code is not here (set {AUTHORS_CODE_ENV} to a checkout of "
            f"WangFengJiee/MiniMaxAD, default {DEFAULT_AUTHORS_CODE}) or {shim} is missing"
        )
    for folder in (str(shim.parent), str(code)):
        if folder not in sys.path:
            sys.path.append(folder)  # last: nothing of ours or installed is shadowed
    import authors_shim

    authors_shim.install()
    with contextlib.redirect_stdout(io.StringIO()):  # their constructors print their settings
        import models.de_unireplknet as de_unireplknet
        import models.unireplknet as unireplknet
    return SimpleNamespace(unireplknet=unireplknet, de_unireplknet=de_unireplknet, path=code)


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
    return generate_synthetic_dataset(
        root / "data", categories=("weave", "washer"), n_train=12, n_test_good=4, n_test_defect=1, image_size=64, seed=3
    )


@pytest.fixture(scope="session")
def trained_checkpoint(synthetic_root, tmp_path_factory):
    """A unified micro model trained for a few steps with thresholds calibrated on held-out images."""
    from minimaxad.cli import main

    out = tmp_path_factory.mktemp("trained") / "run"
    code = main(
        [
            "fit",
            "--data",
            str(synthetic_root),
            "--unified",
            "--output",
            str(out),
            "--backbone",
            "unireplknet_micro",
            "--encoder-weights",
            "none",
            "--image-size",
            "64",
            "--batch-size",
            "4",
            "--max-steps",
            "6",
            "--val-fraction",
            "0.25",
            "--quiet",
        ]
    )
    assert code == 0
    return out / "checkpoint.pt"


@pytest.fixture(autouse=True)
def no_weights_from_the_internet(monkeypatch):
    """Tests never download: the hub points at a closed local port unless a test serves one."""
    if "MINIMAXAD_HUB_URL" not in os.environ:
        monkeypatch.setenv("MINIMAXAD_HUB_URL", "http://127.0.0.1:9")


@contextlib.contextmanager
def one_torch_thread():
    """Tiny runs on shared cores: one PyTorch thread is many times faster than two threads
    that wait for each other (measured 90 s -> 5 s for three 6-step fits under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """One PyTorch thread for a test (see :func:`one_torch_thread`)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def single_thread_module():
    """One PyTorch thread for a whole module, e.g. a model trained once by a module fixture."""
    with one_torch_thread():
        yield
