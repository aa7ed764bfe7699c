"""Self-describing, atomically written checkpoints that are safe to open.

A checkpoint is a ``torch.save`` dict of tensors and plain values, read back with
``torch.load(weights_only=True)``: no code from the file ever runs. It holds the trainable
bottleneck + decoder (and the encoder only when it was randomly initialised: an ImageNet encoder
comes from its own file, identified by name and hash), the run configuration, image size,
thresholds, and for resumable checkpoints the optimiser, scheduler and RNG states.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minimaxad import __version__
from minimaxad.files import create_temporary_beside
from minimaxad.models import MiniMaxAD
from minimaxad.tiling import Tiling

FORMAT = "minimaxad-checkpoint"
FORMAT_VERSION = 1
TEMP_SUFFIX = ".tmp"  # ".NAME.<random>.tmp": a write in progress, renamed to NAME once complete
# where a Lightning checkpoint (anomalib's Engine, minimaxad.integrations.anomalib) carries ours
LIGHTNING_KEY = "minimaxad_checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, not ours, or does not fit the model."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, folder gone); the previous one is intact."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``: at every
    instant ``path`` is either the previous complete file or the new complete one. A failed
    write (disk full...) removes its temporary file and says that the previous file is intact.
    A new file's mode follows the umask (0644 under umask 022), not mkstemp's fixed 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary_beside(path, suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)  # the rename itself survives a power cut
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(exc)  # torch.save can wrap the OSError of a failed write in a RuntimeError
        if cause is None:
            raise
        previous = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        raise CheckpointWriteError(
            cause.errno,
            f"could not write the checkpoint {path} "
            f"({cause.strerror or cause}); {previous}. Free some space (or fix "
            f"the folder) and run again with --resume",
        ) from exc


def _os_error_in(exc: BaseException | None) -> OSError | None:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files of checkpoint writes that a killed process left in ``folder`` or its
    sub-folders (never a checkpoint itself: those are only ever complete). Returns them."""
    removed = []
    for name in ("last.pt", "checkpoint.pt"):
        for tmp in Path(folder).rglob(f".{name}.*{TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def rng_state() -> dict[str, Any]:
    """The torch, Python, NumPy (and CUDA) random states, as tensors and plain values only.

    Python's state is kept as its ``repr`` and NumPy's keys as an int64 tensor, so that
    ``torch.load(weights_only=True)`` reads them back.
    """
    state = {"torch": torch.get_rng_state(), "python": repr(random.getstate())}
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state["numpy"] = {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the random generators back to a :func:`rng_state` (CUDA's only where CUDA is available)."""
    import ast

    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(ast.literal_eval(state["python"])))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def build_checkpoint(
    model: MiniMaxAD,
    config: dict[str, Any],
    *,
    categories: list[str],
    thresholds: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``test``/``predict`` need, plus ``training_state`` for ``--resume``."""
    random_encoder = model.encoder_weights_id is None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "minimaxad_version": __version__,
        "backbone": model.backbone,
        "image_size": int(config["image_size"]),
        "crop_size": config.get("crop_size"),
        "top_ratio": float(config.get("top_ratio", 0.01)),
        # how photos are cut into tiles (None: whole photos at image_size): predict/serve/export follow it
        "tiling": tiling_settings(config),
        "encoder_weights": {
            "identity": model.encoder_weights_id,
            "source": None if random_encoder else str(config.get("encoder_weights")),
        },
        "config": config,
        "categories": list(categories),
        "thresholds": thresholds or {},
        "state": {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()},
        "encoder_state": (
            {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()} if random_encoder else None
        ),
        "training_state": training_state,
    }


def tiling_settings(config: dict[str, Any]) -> dict[str, Any] | None:
    """The :class:`~minimaxad.tiling.Tiling` of a run's configuration as plain data (None without tiling)."""
    if config.get("tile_size") is None:
        return None
    return Tiling(
        config["tile_size"],
        config.get("tile_stride"),
        config.get("resize_long_side"),
        config["image_size"],
        config.get("tile_blend", "mean"),
    ).to_dict()


def checkpoint_tiling(state: dict[str, Any]) -> Tiling | None:
    """The tiling a checkpoint (or an exported file's metadata) was trained with, or None."""
    return Tiling.from_dict(state.get("tiling"))


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (:func:`atomic_torch_save`); returns ``path``."""
    atomic_torch_save(checkpoint, Path(path))
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint without executing anything from it."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoint.pt"
        if not candidate.is_file():
            raise CheckpointError(f"no checkpoint.pt in {path}; pass the checkpoint file itself")
        path = candidate
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    obj = _load_plain_data(path)
    if isinstance(obj, dict) and "state_dict" in obj and obj.get("format") != FORMAT:
        obj = _from_lightning(obj, path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        if isinstance(obj, dict) and "decoder" in obj and ("bn" in obj or "bottleneck" in obj):
            raise CheckpointError(
                f"{path} is a checkpoint of the authors' scripts; import it with "
                f"minimaxad.models.weights.load_official_checkpoint(model, path)"
            )
        raise CheckpointError(f"{path} is not a minimaxad checkpoint (no '{FORMAT}' marker)")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer minimaxad ({obj.get('minimaxad_version')}); upgrade to read it"
        )
    obj["path"] = str(path)
    return obj


def _from_lightning(obj: dict[str, Any], path: Path) -> Any:
    """The minimaxad checkpoint inside a Lightning one (saved by the anomalib integration)."""
    inner = obj.get(LIGHTNING_KEY)
    if isinstance(inner, dict):
        return inner
    if "pytorch-lightning_version" in obj:
        raise CheckpointError(
            f"{path} is a Lightning checkpoint without a minimaxad model in it (no '{LIGHTNING_KEY}' entry); "
            f"minimaxad reads the checkpoints of models trained with minimaxad.integrations.anomalib.MiniMaxAD"
        )
    return obj


def _load_plain_data(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain values only, so a file holding code
    (a pickle of arbitrary objects) is refused, never run. Each way a file can be wrong gets
    its own message naming the file."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): it was never completely written; "
            f"use another checkpoint, or train again"
        )
    with open(path, "rb") as handle:
        head = handle.read(4)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # the safe unpickler met a function or class: code
            raise CheckpointError(
                f"checkpoint {path} holds Python objects that are not tensors or plain values; it was refused "
                f"without running anything (loading it could run code). It is not a minimaxad checkpoint: "
                f"only load such files from people you trust, and not with minimaxad"
            ) from exc
        raise CheckpointError(_corrupt_message(path, size, head, exc)) from exc
    except Exception as exc:
        raise CheckpointError(_corrupt_message(path, size, head, exc)) from exc


def _corrupt_message(path: Path, size: int, head: bytes, exc: BaseException) -> str:
    if head.startswith(b"PK"):
        what = "a zip archive that is not a complete torch checkpoint (truncated, or another kind of zip file)"
    elif head[:1] == b"\x80":
        what = (
            "a bare Python pickle, not a torch checkpoint; it was not unpickled (a pickle can run code), only checked"
        )
    else:
        what = "not a torch checkpoint, or truncated"
    return (
        f"checkpoint {path} is unreadable or corrupt ({size} bytes, {what}; {type(exc).__name__}: "
        f"{str(exc)[:160]}); it may be truncated, or not a minimaxad checkpoint"
    )


def load_model_state(model: MiniMaxAD, checkpoint: dict[str, Any]) -> MiniMaxAD:
    """Load the trainable parts (and a stored random encoder) into ``model``, strictly."""
    if checkpoint["backbone"] != model.backbone:
        raise CheckpointError(
            f"checkpoint {checkpoint.get('path')} is for backbone {checkpoint['backbone']}, "
            f"the model is {model.backbone}"
        )
    expected = model.trainable_state_dict()
    state = checkpoint["state"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint {checkpoint.get('path')} does not fit {model.backbone}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {mismatched[:5]}"
        )
    for name in ("bottleneck", "decoder"):
        prefix = f"{name}."
        getattr(model, name).load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    if checkpoint.get("encoder_state") is not None:
        try:
            model.encoder.load_state_dict(checkpoint["encoder_state"])
        except RuntimeError as exc:
            raise CheckpointError(f"stored encoder of {checkpoint.get('path')} does not fit: {exc}") from exc
    return model


def model_from_checkpoint(
    checkpoint: dict[str, Any] | str | Path, encoder_weights: str | Path | None = None
) -> MiniMaxAD:
    """Rebuild the trained model: backbone from the file, encoder from its ImageNet file (the one
    recorded, or ``encoder_weights``) or from the checkpoint when it was random."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    model = MiniMaxAD(checkpoint["backbone"])
    info = checkpoint.get("encoder_weights") or {}
    if checkpoint.get("encoder_state") is None:
        source = encoder_weights or info.get("source") or "hub"
        if (
            not encoder_weights  # a path the user gives now is used as given (missing: an error)
            and source
            and Path(str(source)).name
            and not Path(str(source)).exists()
            and str(source) not in ("hub", "imagenet")
        ):
            source = "hub"  # the recorded path moved: fall back to the cache / hub
        model.load_encoder_weights(source)
        recorded = info.get("identity")
        if recorded and model.encoder_weights_id and recorded.split("@")[-1] != model.encoder_weights_id.split("@")[-1]:
            raise CheckpointError(
                f"encoder weights differ from the ones {checkpoint.get('path')} was trained with: "
                f"recorded {recorded}, found {model.encoder_weights_id}"
            )
    load_model_state(model, checkpoint)
    return model.eval()
