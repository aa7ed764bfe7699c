"""``--precision bf16`` on CPUs: autocast where bfloat16 is native, a warning and fp32 elsewhere."""

from __future__ import annotations

import pytest
import torch

from minimaxad.engine import trainer
from minimaxad.engine.trainer import autocast_context, cpu_supports_bf16

CPU = torch.device("cpu")


def product_dtype(precision: str) -> torch.dtype:
    with autocast_context(CPU, precision):
        return (torch.randn(8, 8) @ torch.randn(8, 8)).dtype


def test_fp32_is_a_no_op_and_fp16_stays_cuda_only():
    assert product_dtype("fp32") == torch.float32
    assert product_dtype("fp16") == torch.float32


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no AVX-512 BF16 or AMX")
def test_bf16_autocasts_products_on_a_bf16_cpu():
    assert product_dtype("bf16") == torch.bfloat16


def test_bf16_falls_back_to_fp32_with_a_warning_elsewhere(monkeypatch):
    monkeypatch.setattr(trainer, "cpu_supports_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no AVX-512 BF16 or AMX"):
        assert product_dtype("bf16") == torch.float32
