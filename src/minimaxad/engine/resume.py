"""What ``--resume`` checks before it continues a run: the same settings, the same data.

A resumed run is meant to end with the weights an uninterrupted run would have had. That only
holds when nothing that shapes training changed in between: a setting (learning rate, loss,
validation split...), the training files (one added, removed or edited), or the encoder's
weights. Every difference is listed in the refusal, so the user can fix the command line or
start a new ``--output`` folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

from minimaxad.engine.config import RunConfig
from minimaxad.files import sha256_of

# settings that do not change what is trained (how long, where, how fast, what is evaluated):
# they may differ when resuming; every other RunConfig field must be the same
FREE_WHEN_RESUMING = frozenset(
    {
        "max_steps",  # to go on further than an earlier --max-steps
        "data",  # the folder may move: its files are compared instead (data_fingerprint)
        "encoder_weights",  # the file may move: its identity (name and hash) is compared instead
        "device",
        "workers",
        "cache",
        "channels_last",
        "max_nonfinite_steps",
        "test_domains",
        "top_ratio",
        "val_max_images",
        "image_fpr",
        "pixel_fpr",
        "evaluate",
        "bootstrap",
        "checkpoint_every",
        "logger",
        "preset",
    }
)


class ResumeError(RuntimeError):
    """``--resume`` would not continue the run that was started (other settings or data)."""


def training_settings(config: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues."""
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    names = [f.name for f in dataclasses.fields(RunConfig)]
    return {k: _plain(values.get(k)) for k in names if k not in FREE_WHEN_RESUMING}


def data_fingerprint(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The training files in training order (relative to their common folder) and one SHA-256
    over their names and contents: any file added, removed, renamed, re-ordered or edited
    changes it. Reads every file once (about a second for a few hundred photos)."""
    paths = [str(p) for p in paths]
    root = os.path.commonpath(paths) if paths else ""
    if len(paths) == 1:
        root = os.path.dirname(root)
    relative = [os.path.relpath(p, root) if root else p for p in paths]
    total = hashlib.sha256()
    for name, path in zip(relative, paths):
        total.update(f"{name}\0{sha256_of(path)}\n".encode("utf-8", "surrogateescape"))
    return {"count": len(paths), "sha256": total.hexdigest(), "files": relative}


def resume_differences(
    state: dict[str, Any], config: RunConfig, data: dict[str, Any] | None = None, encoder_identity: str | None = None
) -> list[str]:
    """Each difference between the run saved in ``state`` (a resumable checkpoint) and the one
    about to start, as ``"name: saved -> now"``."""
    saved, now = training_settings(state.get("config") or {}), training_settings(config)
    differences = [
        f"{k}: {saved[k]!r} -> {now[k]!r}" for k in now if k in (state.get("config") or {}) and saved[k] != now[k]
    ]
    recorded = (state.get("training_state") or {}).get("data")
    if data is not None and recorded is not None and recorded["sha256"] != data["sha256"]:
        differences.append(_describe_data_change(recorded, data))
    saved_encoder = (state.get("encoder_weights") or {}).get("identity")
    if saved_encoder and encoder_identity and saved_encoder.split("@")[-1] != encoder_identity.split("@")[-1]:
        differences.append(f"encoder weights: {saved_encoder} -> {encoder_identity}")
    return differences


def check_resume_compatible(
    state: dict[str, Any], config: RunConfig, data: dict[str, Any] | None = None, encoder_identity: str | None = None
) -> None:
    """Raise :class:`ResumeError` listing every difference (see :func:`resume_differences`)."""
    if state.get("training_state") is None:
        raise ResumeError(f"{state.get('path')} holds no training state to resume from")
    differences = resume_differences(state, config, data, encoder_identity)
    if differences:
        raise ResumeError(
            f"cannot --resume {state.get('path')}: the run was started with other settings or data "
            f"({'; '.join(differences)}). Use the same options and data, or a new --output folder"
        )


def _describe_data_change(recorded: dict[str, Any], data: dict[str, Any]) -> str:
    before, after = recorded.get("files") or [], data.get("files") or []
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    parts = [f"{recorded['count']} -> {data['count']} files"]
    if added:
        parts.append(f"added {len(added)} (e.g. {', '.join(added[:3])})")
    if removed:
        parts.append(f"removed {len(removed)} (e.g. {', '.join(removed[:3])})")
    if not added and not removed:
        parts.append("the same names, but some file's content or the order changed")
    return f"training data: {', '.join(parts)}; sha256 {recorded['sha256'][:12]} -> {data['sha256'][:12]}"


def _plain(value: Any) -> Any:
    """Tuples as lists (a configuration read back from JSON has lists), recursively."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
