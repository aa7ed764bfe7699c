"""The MiniMaxAD network: frozen UniRepLKNet encoder, trainable bottleneck and decoder."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from minimaxad.models.bottleneck import Bottleneck
from minimaxad.models.decoder import Decoder
from minimaxad.models.encoder import UniRepLKNetEncoder
from minimaxad.models.registry import DEFAULT_BACKBONE, BackboneSpec, get_backbone_spec
from minimaxad.models.reparam import reparameterize_module


class MiniMaxAD(nn.Module):
    """Reverse-distillation autoencoder of MiniMaxAD (arXiv 2405.09933).

    Args:
        backbone: ``unireplknet_a|f|p|n|t`` (paper default ``n``) or ``unireplknet_micro`` (tests).
        encoder_weights: None (random encoder), a path to the authors' ImageNet checkpoint, or
            ``"hub"`` (the cache, else a download from Hugging Face). See :mod:`minimaxad.models.weights`.

    ``forward(images (N, 3, H, W))`` returns ``(encoder_features, decoder_features)``: two lists
    of three maps at 1/4, 1/8 and 1/16 of the input. The encoder is frozen and always in eval
    mode; ``model.train()`` only switches the bottleneck and decoder.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, encoder_weights: str | Path | None = None) -> None:
        super().__init__()
        self.spec: BackboneSpec = get_backbone_spec(backbone)
        self.backbone = self.spec.name
        self.encoder = UniRepLKNetEncoder(self.spec)
        self.bottleneck = Bottleneck(self.spec.dims)
        self.decoder = Decoder(self.spec)
        self.encoder_weights_id: str | None = None  # identity of the loaded ImageNet file
        self.reparameterized = False
        if encoder_weights is not None:
            self.load_encoder_weights(encoder_weights)
        self.freeze_encoder()

    # -- frozen encoder --------------------------------------------------------------------
    def freeze_encoder(self) -> None:
        """No gradients and eval mode for the encoder: its ImageNet weights and BatchNorm statistics stay."""
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "MiniMaxAD":
        """``nn.Module.train``, but the encoder stays in eval mode; returns self."""
        super().train(mode)
        self.encoder.eval()  # BatchNorm statistics of the ImageNet encoder must never move
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the bottleneck and decoder (what the optimiser updates)."""
        return [p for m in (self.bottleneck, self.decoder) for p in m.parameters()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the bottleneck and decoder only, keys prefixed ``bottleneck.`` / ``decoder.``."""
        return {
            f"{name}.{k}": v for name in ("bottleneck", "decoder") for k, v in getattr(self, name).state_dict().items()
        }

    # -- forward ---------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen encoder's three maps, without autograd.

        While the model trains, the encoder runs re-parameterized: a fused copy, rebuilt after
        every state-dict load into the encoder (directly or through the model) and every
        ``.to()`` or dtype change; the encoder is frozen, so change its weights only by loading.
        Its BatchNorms are in eval mode, so the fusion is exact algebra; the maps differ only by
        float32 rounding (about 3e-7 relative), and a batch-1 training step is 5-7% faster.
        """
        with torch.no_grad():
            return self._frozen_encoder()(images)

    def _frozen_encoder(self) -> nn.Module:
        if not self.training or self.reparameterized or torch.compiler.is_compiling():
            return self.encoder
        cached = self.__dict__.get("_fused_encoder")  # not a submodule: no state-dict keys
        if cached is None or cached[0] != self.encoder.loads:
            fused = reparameterize_module(copy.deepcopy(self.encoder)).eval()
            cached = self.__dict__["_fused_encoder"] = (self.encoder.loads, fused)
        return cached[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_fused_encoder", None)  # a cache: not pickled with the model
        return state

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_fused_encoder", None)  # device or dtype changes (loads: encoder.loads)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(N, 3, H, W)`` -> ``(encoder_features, decoder_features)``, three maps each at 1/4, 1/8, 1/16.

        The decoder's maps have the encoder's sizes exactly: when ``H`` or ``W`` is not a multiple of
        32 they are resized to them (nearest), as the authors do.
        """
        encoder_features = self.encode(images)
        decoder_features = self.decoder(self.bottleneck(encoder_features))
        # Sizes that are not multiples of 32 (MAD-Sim at 400 px) leave the decoder off by a
        # pixel or two: the authors resize its maps to the encoder's with nearest.
        decoder_features = [
            d if d.shape[-2:] == e.shape[-2:] else F.interpolate(d, size=e.shape[-2:], mode="nearest")
            for e, d in zip(encoder_features, decoder_features)
        ]
        return encoder_features, decoder_features

    # -- inference form --------------------------------------------------------------------
    def reparameterize(self) -> "MiniMaxAD":
        """Fuse every branch and BatchNorm in place for inference (idempotent); returns self."""
        reparameterize_module(self)
        self.reparameterized = True
        return self

    # -- weights ---------------------------------------------------------------------------
    def load_encoder_weights(self, source: str | Path | Mapping[str, torch.Tensor]) -> "MiniMaxAD":
        """Load the authors' UniRepLKNet ImageNet checkpoint (path, ``"hub"``, or a state dict)."""
        from minimaxad.models.weights import load_encoder_weights

        self.encoder_weights_id = load_encoder_weights(self.encoder, self.spec, source)
        self.freeze_encoder()
        return self

    def load_official_state_dict(
        self,
        encoder: Mapping[str, torch.Tensor] | None = None,
        bottleneck: Mapping[str, torch.Tensor] | None = None,
        decoder: Mapping[str, torch.Tensor] | None = None,
    ) -> "MiniMaxAD":
        """Load state dicts in the authors' key layout (training form); each part optional.

        ``bottleneck`` is what the authors' scripts save under ``'bn'``.
        """
        from minimaxad.models.weights import load_official_parts

        load_official_parts(self, encoder=encoder, bottleneck=bottleneck, decoder=decoder)
        self.freeze_encoder()
        return self

    def extra_repr(self) -> str:
        """The backbone and whether the model is re-parameterized, for ``print(model)``."""
        return f"backbone={self.backbone}, reparameterized={self.reparameterized}"
