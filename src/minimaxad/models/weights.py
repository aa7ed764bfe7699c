"""Encoder weights (the authors' UniRepLKNet ImageNet checkpoints) and the authors' key layout.

Our module names mirror the authors', with one difference in the encoder: their
anomaly-detection encoder also builds ``downsample_layers.3`` and ``norm3``, which its forward
never uses; ours omits them. :func:`encoder_from_official` / :func:`encoder_to_official` map
between the two layouts (the second fills the unused entries with neutral values).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from minimaxad.files import sha256_of
from minimaxad.models.registry import BackboneSpec

log = logging.getLogger(__name__)

HUB_REPOSITORY = "DingXiaoH/UniRepLKNet"
HUB_BASE_URL = "https://huggingface.co"
HUB_URL = f"{HUB_BASE_URL}/{HUB_REPOSITORY}"
HUB_URL_ENV = "MINIMAXAD_HUB_URL"
# (size in bytes, sha256) of the hub's ImageNet files, checked after a download. Not known to this
# project yet (it was written without access to the hub): until they are filled in, a download is
# checked against the Content-Length only, and its computed SHA-256 is logged and stored in every
# checkpoint trained on it (``file_identity``), so that runs tell which file they used.
IMAGENET_FILE_CHECKS: dict[str, tuple[int | None, str | None]] = {}
# Checkpoint entries the anomaly-detection encoder does not use.
UNUSED_ENCODER_PREFIXES = ("downsample_layers.3.", "norm3.", "stages.3.", "norm.", "head.")
# The per-stage output LayerNorms are not part of the ImageNet checkpoint: they stay at 1 / 0.
NOT_IN_IMAGENET_PREFIXES = ("norm0.", "norm1.", "norm2.")


class EncoderWeightsError(RuntimeError):
    """The encoder weights could not be found, read, or did not fit the backbone."""


class EncoderWeightsNotFoundError(EncoderWeightsError, FileNotFoundError):
    """An explicit encoder-weights path names no file (never replaced by a hub download)."""


def weights_cache_dir() -> Path:
    """Where ``hub`` downloads and local look-ups go: ``$MINIMAXAD_WEIGHTS_DIR`` or
    ``~/.cache/minimaxad/weights``."""
    env = os.environ.get("MINIMAXAD_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minimaxad" / "weights"


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor dict inside a checkpoint: raw, or wrapped under ``model``/``models``/
    ``state_dict``; a ``module.`` prefix (DataParallel) is removed."""
    for key in ("model", "models", "state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderWeightsError(f"{source} does not hold a state dict of tensors (nor one under 'model' or 'models')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def encoder_from_official(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Split an encoder state dict in the authors' layout (or an ImageNet checkpoint) into the
    entries our encoder uses and the unused keys."""
    used, unused = {}, []
    for key, value in state.items():
        (unused.append(key) if key.startswith(UNUSED_ENCODER_PREFIXES) else used.__setitem__(key, value))
    return used, unused


def encoder_to_official(state: Mapping[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """Our encoder state dict in the authors' layout: adds the unused ``downsample_layers.3``
    (zeros, LayerNorm at 1 / 0) and ``norm3`` (1 / 0) so their ``load_state_dict`` is strict-clean."""
    d2, d3 = spec.dims[2], spec.dims[3]
    out = dict(state)
    out["downsample_layers.3.0.weight"] = torch.zeros(d3, d2, 3, 3)
    out["downsample_layers.3.0.bias"] = torch.zeros(d3)
    out["downsample_layers.3.1.weight"] = torch.ones(d3)
    out["downsample_layers.3.1.bias"] = torch.zeros(d3)
    out["norm3.weight"] = torch.ones(d3)
    out["norm3.bias"] = torch.zeros(d3)
    return out


def _missing_weights_message(spec: BackboneSpec, detail: str) -> str:
    file = spec.imagenet_file
    return (
        f"ImageNet weights for backbone {spec.name} are not available: {detail}. "
        f"Download {file} from {HUB_URL} (file {hub_file_url(file)}) and pass its path "
        f"with --encoder-weights PATH (Python: MiniMaxAD(encoder_weights=PATH)), or place it in "
        f"{weights_cache_dir()} (set MINIMAXAD_WEIGHTS_DIR to change that folder). "
        f"'--encoder-weights none' trains with a random encoder (results not comparable to the paper)."
    )


def find_cached_weights(spec: BackboneSpec) -> Path | None:
    """The ImageNet file for ``spec`` in our cache folder or the Hugging Face cache, if present."""
    if spec.imagenet_file is None:
        return None
    local = weights_cache_dir() / spec.imagenet_file
    if local.is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(HUB_REPOSITORY, spec.imagenet_file)
    return Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None


def hub_base_url() -> str:
    """Where ``hub`` downloads from: ``$MINIMAXAD_HUB_URL`` (a mirror, or a local server in the
    tests), else Hugging Face. Files are fetched from ``<base>/<repository>/resolve/main/<file>``."""
    return os.environ.get(HUB_URL_ENV, HUB_BASE_URL).rstrip("/")


def hub_file_url(file: str) -> str:
    """The download URL of ``file`` in the authors' hub repository, under :func:`hub_base_url`."""
    return f"{hub_base_url()}/{HUB_REPOSITORY}/resolve/main/{file}"


def download_weights(spec: BackboneSpec, *, progress: bool = True, echo=None) -> Path:
    """The authors' ImageNet checkpoint of ``spec``: from the caches, else downloaded (plain HTTP,
    resumable, checked, atomic; see :mod:`minimaxad.fetch`) into :func:`weights_cache_dir`."""
    from minimaxad.fetch import DownloadError, download_file

    if spec.imagenet_file is None:
        raise EncoderWeightsError(f"backbone {spec.name} has no ImageNet checkpoint; use encoder weights 'none'")
    cached = find_cached_weights(spec)
    if cached is not None:
        return cached
    url = hub_file_url(spec.imagenet_file)
    size, sha256 = IMAGENET_FILE_CHECKS.get(spec.imagenet_file, (None, None))
    log.info("downloading the ImageNet encoder weights %s", url)
    try:
        result = download_file(
            url,
            weights_cache_dir() / spec.imagenet_file,
            size=size,
            sha256=sha256,
            progress=progress,
            timeout=30,
            echo=echo,
            description=f"ImageNet weights {spec.imagenet_file}",
        )
    except (DownloadError, OSError) as exc:  # offline, proxy, missing file, full disk: all end alike for the user
        raise EncoderWeightsError(_missing_weights_message(spec, f"download failed ({exc})")) from exc
    if sha256 is None:
        log.info(
            "downloaded %s (%d bytes, sha256 %s; no published hash to compare with)",
            result.path,
            result.size,
            result.sha256,
        )
    return result.path


HUB_SOURCES = ("hub", "imagenet", "auto")  # any case: the authors' ImageNet file, from a cache or downloaded


def resolve_weights_source(spec: BackboneSpec, source: str | Path, *, progress: bool = True) -> Path:
    """Turn ``"hub"``/``"imagenet"`` (cache, then download) or a path into an existing file.

    Any other value is a path, and only that file will do: a missing one raises
    :class:`EncoderWeightsNotFoundError` (a ``FileNotFoundError``) naming it, never a download.
    ``"none"`` (a random encoder) has no file: it raises :class:`EncoderWeightsError`; callers
    build the model without encoder weights instead.
    """
    if str(source).lower() in HUB_SOURCES:
        return download_weights(spec, progress=progress)
    if str(source).lower() == "none":
        raise EncoderWeightsError(
            f"encoder weights 'none' means a random encoder for backbone {spec.name}: there is no file to "
            f"load. Build the model without encoder weights (MiniMaxAD({spec.name!r})), or pass an "
            f"existing file or 'hub'"
        )
    path = Path(source).expanduser()
    if path.is_file():
        return path
    where = "is a folder, not a file" if path.is_dir() else "does not exist"
    if not path.is_absolute():
        where += f" (relative to the current folder {Path.cwd()})"
    hint = (
        f" ({spec.name}'s ImageNet file is {spec.imagenet_file}, from {hub_file_url(spec.imagenet_file)})"
        if spec.imagenet_file
        else ""
    )
    raise EncoderWeightsNotFoundError(
        f"--encoder-weights {str(source)!r}: {path} {where}. Pass an existing file{hint}, 'hub' (the "
        f"authors' ImageNet weights, from {weights_cache_dir()} or downloaded from {HUB_URL}) or 'none' "
        f"(a random encoder; results not comparable to the paper)"
    )


def file_identity(path: Path) -> str:
    """``name@sha256[:16]``: stored in checkpoints so a run knows which encoder it was trained on."""
    return f"{path.name}@sha256:{sha256_of(path)[:16]}"


def load_encoder_weights(
    encoder: nn.Module, spec: BackboneSpec, source: str | Path | Mapping[str, torch.Tensor]
) -> str:
    """Load an ImageNet UniRepLKNet checkpoint into ``encoder``; returns the weights' identity.

    Every encoder tensor except ``norm0..2`` must come from the file with the right shape;
    otherwise :class:`EncoderWeightsError` names the missing or mismatched keys. Unused entries
    (stage 3, ``norm``, ``head``) are logged once at debug level.
    """
    if isinstance(source, Mapping):
        obj, identity, where = dict(source), "in-memory state dict", "the given state dict"
    else:
        path = resolve_weights_source(spec, source)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EncoderWeightsError(
                f"could not read encoder weights from {path}: {exc}. Expected the authors' "
                f"{spec.imagenet_file} (a torch state dict)."
            ) from exc
        identity, where = file_identity(path), str(path)
    state, unused = encoder_from_official(unwrap_state_dict(obj, where))
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(NOT_IN_IMAGENET_PREFIXES)]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    unexpected = [k for k in state if k not in expected]
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched[:8])}")
        raise EncoderWeightsError(
            f"encoder weights in {where} do not fit backbone {spec.name}: {' and '.join(parts)}. "
            f"Is it the {spec.imagenet_file} checkpoint for this backbone?"
        )
    if unused or unexpected:
        log.debug(
            "encoder weights %s: %d unused entries ignored (%s)",
            where,
            len(unused) + len(unexpected),
            ", ".join(sorted({k.split(".")[0] for k in unused + unexpected})),
        )
    to_load = {k: state[k].to(expected[k].dtype) for k in expected if k in state}
    encoder.load_state_dict(to_load, strict=False)
    return identity


def load_official_parts(
    model: nn.Module,
    encoder: Mapping[str, torch.Tensor] | None = None,
    bottleneck: Mapping[str, torch.Tensor] | None = None,
    decoder: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Strictly load state dicts in the authors' key layout into ``model`` (training form)."""
    if getattr(model, "reparameterized", False):
        raise RuntimeError("load the authors' weights before reparameterize(): the fused model has other keys")
    parts = {"encoder": encoder, "bottleneck": bottleneck, "decoder": decoder}
    for name, state in parts.items():
        if state is None:
            continue
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if name == "encoder":
            state, _ = encoder_from_official(state)
        module: nn.Module = getattr(model, name)
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or mismatched:
            raise RuntimeError(
                f"{name} state dict does not fit backbone {model.backbone}: "
                f"missing {missing[:6]}, unexpected {unexpected[:6]}, shape mismatch {mismatched[:6]}"
            )
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def load_official_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint written by the authors' training scripts (``{'bn': ..., 'decoder': ...}``)."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping) or "decoder" not in obj or not ({"bn", "bottleneck"} & set(obj)):
        raise RuntimeError(
            f"{path} is not a checkpoint of the authors' scripts: expected keys 'bn' and 'decoder', "
            f"found {sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__}"
        )
    load_official_parts(model, bottleneck=obj.get("bn", obj.get("bottleneck")), decoder=obj["decoder"])
