"""MiniMaxAD network: blocks, encoder, bottleneck, decoder, re-parameterization, weights."""

from minimaxad.models.blocks import GRN, DilatedReparamBlock, LayerNorm2d, SEBlock, UniRepLKNetBlock
from minimaxad.models.bottleneck import Bottleneck
from minimaxad.models.decoder import Decoder
from minimaxad.models.encoder import UniRepLKNetEncoder
from minimaxad.models.minimaxad import MiniMaxAD
from minimaxad.models.registry import BACKBONES, DEFAULT_BACKBONE, BackboneSpec, get_backbone_spec, list_backbones

__all__ = [
    "GRN",
    "SEBlock",
    "DilatedReparamBlock",
    "UniRepLKNetBlock",
    "LayerNorm2d",
    "UniRepLKNetEncoder",
    "Bottleneck",
    "Decoder",
    "MiniMaxAD",
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "get_backbone_spec",
    "list_backbones",
]
