"""The random encoder (``--encoder-weights none``) is initialised as the authors' encoder.

Their UniRepLKNet leaves its truncated-normal init commented out, so convs and linears keep
PyTorch's defaults. We check (1) the rule on every layer, (2) fixed values that the authors' code
gives under seed 111 (variant F), and (3) when their code is on this machine, that one seed gives
their whole initial network (encoder, bottleneck, decoder) bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from torch import nn

from minimaxad.models import MiniMaxAD
from minimaxad.models.blocks import GRN, LayerNorm2d, UniRepLKNetBlock

# (first element, sum, std) of encoder tensors in the authors' unireplknet_f() right after
# torch.manual_seed(111); the bottleneck and decoder come after it in the same random stream.
AUTHORS_F_SEED_111 = {
    "encoder.downsample_layers.0.0.weight": (8.29713643e-02, 5.70840682e-01, 1.08737612e-01),
    "encoder.downsample_layers.0.0.bias": (-3.34923319e-03, -3.68824053e-01, 1.06587913e-01),
    "encoder.downsample_layers.2.0.weight": (3.53532843e-03, -5.14698646e00, 1.96495455e-02),
    "encoder.stages.0.1.dwconv.weight": (-8.19154233e-02, 6.41050888e00, 1.89309802e-01),
    "encoder.stages.2.5.dwconv.lk_origin.weight": (5.10511883e-02, 1.18689303e01, 4.43213369e-02),
    "encoder.stages.2.5.dwconv.dil_conv_k7_2.weight": (-1.50808785e-02, -1.52387276e01, 8.25301531e-02),
    "encoder.stages.1.0.se.up.bias": (1.80514574e-01, 1.66958883e00, 1.23912919e-01),
    "encoder.stages.1.1.pwconv1.1.weight": (1.56875607e-02, -1.44434579e01, 5.89302806e-02),
    "encoder.stages.2.3.pwconv2.0.weight": (-5.62615041e-03, 9.49332865e00, 2.08710805e-02),
    "bottleneck.conv4.weight": (3.74657027e-02, -4.98174317e01, 2.40508704e-02),
    "bottleneck.stages.0.1.pwconv1.1.weight": (-4.44195420e-02, 1.25590255e01, 2.94494798e-02),
    "decoder.upsample_layers.0.0.weight": (-3.51470001e-02, -3.78740904e00, 2.08280044e-02),
    "decoder.stages.2.0.dwconv.lk_origin.weight": (-9.88884736e-03, -8.73091211e-01, 7.84071206e-03),
}


@pytest.fixture(scope="module")
def model_f_seed_111() -> MiniMaxAD:
    torch.manual_seed(111)
    return MiniMaxAD("unireplknet_f")


def fan_in(weight: torch.Tensor) -> int:
    return weight.shape[1] * math.prod(weight.shape[2:])


def test_every_encoder_layer_has_pytorch_default_init(model_f_seed_111):
    """Kaiming-uniform (a = sqrt 5) weights and biases in +-1/sqrt(fan_in), norms at 1/0, GRN 0,
    layer scale 1e-6 - not the truncated normal (std 0.02, zero bias) of UniRepLKNet's own init."""
    layers = {nn.Conv2d: 0, nn.Linear: 0, LayerNorm2d: 0, nn.BatchNorm2d: 0, GRN: 0, UniRepLKNetBlock: 0}
    for name, module in model_f_seed_111.encoder.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w = module.weight.detach().double()
            bound = 1 / math.sqrt(fan_in(w))
            assert w.abs().max() <= bound, name
            if w.numel() >= 2000:  # uniform on [-b, b]: std b / sqrt 3, max close to b
                assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name
                assert w.abs().max() >= 0.99 * bound, name
            if module.bias is not None:
                b = module.bias.detach().double()
                assert b.abs().max() <= bound and b.abs().min() > 0 and b.std() > 0.3 * bound, name
        elif isinstance(module, (LayerNorm2d, nn.BatchNorm2d)):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
            if isinstance(module, nn.BatchNorm2d):
                assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean)), name
                assert torch.equal(module.running_var, torch.ones_like(module.running_var)), name
        elif isinstance(module, GRN):
            assert not module.gamma.any() and not module.beta.any(), name
        elif isinstance(module, UniRepLKNetBlock):
            assert torch.equal(module.gamma, torch.full_like(module.gamma, 1e-6)), name
        else:
            continue
        layers[next(kind for kind in layers if isinstance(module, kind))] += 1
    # variant F: 2 stem + 2 downsampling convs, each with a LayerNorm, and norm0..2; per block a
    # dwconv (+ 5 dilated branches when kernel 13), SE down/up, 2 linears; 10 blocks, 8 of kernel 13
    assert layers == {
        nn.Conv2d: 4 + 10 * 3 + 8 * 5,
        nn.Linear: 20,
        LayerNorm2d: 4 + 3,
        nn.BatchNorm2d: 10 * 2 + 8 * 6,
        GRN: 10,
        UniRepLKNetBlock: 10,
    }


def test_seed_111_gives_the_authors_initial_weights(model_f_seed_111):
    state = {
        f"{part}.{k}": v
        for part in ("encoder", "bottleneck", "decoder")
        for k, v in getattr(model_f_seed_111, part).state_dict().items()
    }
    for name, (first, total, std) in AUTHORS_F_SEED_111.items():
        t = state[name].double()
        assert t.flatten()[0].item() == pytest.approx(first, rel=1e-6, abs=1e-12), name
        assert t.sum().item() == pytest.approx(total, rel=1e-6, abs=1e-6), name
        assert t.std().item() == pytest.approx(std, rel=1e-6), name


@pytest.mark.parametrize("variant", ["f", "t"])
def test_one_seed_gives_the_authors_whole_network_bit_for_bit(authors_models, variant):
    torch.manual_seed(111)
    with contextlib.redirect_stdout(io.StringIO()):
        encoder, bottleneck = getattr(authors_models.unireplknet, f"unireplknet_{variant}")()
        decoder = getattr(authors_models.de_unireplknet, f"de_unireplknet_{variant}")()
    after_theirs = torch.rand(4)
    torch.manual_seed(111)
    ours = MiniMaxAD(f"unireplknet_{variant}")
    assert torch.equal(torch.rand(4), after_theirs)  # the random stream is left where theirs is
    for part, theirs in (("encoder", encoder), ("bottleneck", bottleneck), ("decoder", decoder)):
        mine, reference = getattr(ours, part).state_dict(), theirs.state_dict()
        unused = {k for k in reference if k.startswith(("downsample_layers.3.", "norm3."))}
        assert set(mine) == set(reference) - unused, part
        for key, value in mine.items():
            assert torch.equal(value, reference[key]), f"{part}.{key}"
