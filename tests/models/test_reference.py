"""The network reproduces the authors' implementation on fixed random weights (variant F)."""

from __future__ import annotations

import pytest
import torch

from minimaxad import MiniMaxAD

BOUND = 1e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def as_float32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def reference(reference_dir):
    return torch.load(reference_dir / "model_unireplknet_f.pt", weights_only=True)


def reference_model(reference) -> MiniMaxAD:
    """Variant F with the authors' weights (stored as float16, cast to float32 as they ran)."""
    m = MiniMaxAD("unireplknet_f")
    m.load_official_state_dict(
        encoder=as_float32(reference["encoder_state"]),
        bottleneck=as_float32(reference["bottleneck_state"]),
        decoder=as_float32(reference["decoder_state"]),
    )
    return m.eval()


@pytest.fixture(scope="module")
def model(reference):
    return reference_model(reference)


def run(model, images):
    with torch.no_grad():
        enc, dec = model(images)
        bottleneck = model.bottleneck(enc)
    return enc, bottleneck, dec


def assert_outputs(outputs, reference, prefix=""):
    enc, bottleneck, dec = outputs
    for level in range(3):
        assert rel_err(enc[level], reference[f"{prefix}encoder_out"][level]) < BOUND
        assert rel_err(dec[level], reference[f"{prefix}decoder_out"][level]) < BOUND
    assert rel_err(bottleneck, reference[f"{prefix}bottleneck_out"]) < BOUND


def test_training_form_matches_authors(model, reference):
    assert_outputs(run(model, reference["input"]), reference)


def test_reparameterized_form_matches_authors(reference):
    m = reference_model(reference)
    before = run(m, reference["input"])
    assert m.reparameterize() is m
    after = run(m, reference["input"])
    assert_outputs(after, reference, prefix="deploy_")
    # and equal to our own training form within 1e-5
    for a, b in zip(after[0] + after[2] + [after[1]], before[0] + before[2] + [before[1]]):
        assert rel_err(a, b) < 1e-5
    # no BatchNorm, dilated branch or GRN beta survives
    names = [n for n, _ in m.named_modules()]
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert not any("dil_conv" in n for n in names)
    assert not any(k.endswith("act.1.beta") or k.endswith(".gamma") and "act" not in k for k in m.state_dict())


def test_wrong_weights_change_outputs(reference):
    """Sanity check of the bound: dropping one SE block's effect misses by far more than 1e-4."""
    m = MiniMaxAD("unireplknet_f")
    m.load_official_state_dict(encoder=as_float32(reference["encoder_state"]))
    m.encoder.stages[0][0].se.up.bias.data += 1.0
    enc, _, _ = run(m.eval(), reference["input"])
    assert rel_err(enc[0], reference["encoder_out"][0]) > 1e-3
