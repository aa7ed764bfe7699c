"""Registry of UniRepLKNet variants (dims, depths, kernel sizes) usable as MiniMaxAD backbones."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """Shape of a UniRepLKNet encoder; only stages 0-2 are run, stage 3's width sizes the bottleneck.

    Attributes:
        dims: channels of the four stages.
        depths: blocks in each of the four stages (stage 3's depth is unused here).
        kernel_sizes: depthwise kernel of every block of stages 0, 1, 2.
        imagenet_file: the authors' ImageNet-1k checkpoint on the hub, or None.
    """

    name: str
    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    kernel_sizes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    imagenet_file: str | None
    description: str = ""


def _lark_smak(depth2: int, pattern: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(pattern[i % len(pattern)] for i in range(depth2))


_SPECS = [
    BackboneSpec(
        "unireplknet_a",
        (40, 80, 160, 320),
        (2, 2, 6, 2),
        ((3, 3), (13, 13), (13,) * 6),
        "unireplknet_a_in1k_224_acc77.03.pth",
        "Atto, 4.4 M",
    ),
    BackboneSpec(
        "unireplknet_f",
        (48, 96, 192, 384),
        (2, 2, 6, 2),
        ((3, 3), (13, 13), (13,) * 6),
        "unireplknet_f_in1k_224_acc78.58.pth",
        "Femto, 6.2 M",
    ),
    BackboneSpec(
        "unireplknet_p",
        (64, 128, 256, 512),
        (2, 2, 6, 2),
        ((3, 3), (13, 13), (13,) * 6),
        "unireplknet_p_in1k_224_acc80.23.pth",
        "Pico, 10.7 M",
    ),
    BackboneSpec(
        "unireplknet_n",
        (80, 160, 320, 640),
        (2, 2, 8, 2),
        ((3, 3), (13, 13), (13,) * 8),
        "unireplknet_n_in1k_224_acc81.64.pth",
        "Nano, 18.3 M (the paper's default)",
    ),
    BackboneSpec(
        "unireplknet_t",
        (80, 160, 320, 640),
        (3, 3, 18, 3),
        ((3, 3, 3), (13, 13, 13), _lark_smak(18, (13, 3))),
        "unireplknet_t_in1k_224_acc83.21.pth",
        "Tiny, 31 M",
    ),
    # Not from the paper: a very small network for unit tests and quick CPU trials (no ImageNet file).
    BackboneSpec(
        "unireplknet_micro",
        (16, 32, 64, 128),
        (1, 1, 2, 1),
        ((3,), (7,), (7, 3)),
        None,
        "test-sized, random encoder only",
    ),
]

BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}
DEFAULT_BACKBONE = "unireplknet_n"


def list_backbones() -> list[str]:
    """Names accepted by ``MiniMaxAD(backbone=...)``."""
    return list(BACKBONES)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a name from :func:`list_backbones` (any case) or its letter ``a|f|p|n|t``."""
    key = name.lower()
    if key in ("a", "f", "p", "n", "t"):
        key = f"unireplknet_{key}"
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[key]
