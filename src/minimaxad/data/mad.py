"""MAD (Multi-pose Anomaly Detection, LEGO toys): MAD-Sim and MAD-Real.

Layout (``root`` is ``MAD-Sim``/``MAD-Real``, or their parent with ``subset=``)::

    <root>/<toy>/train/good/*.png          (MAD-Sim also has transforms.json: ignored)
    <root>/<toy>/test/<good | Burrs | Missing | Stains>/*.png
    <root>/<toy>/ground_truth/<defect>/<name>_mask.png   (or <name>.png)
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from minimaxad.data.base import Record
from minimaxad.data.io import DatasetError
from minimaxad.data.mvtec import category_dirs, mvtec_like_records

__all__ = ["list_records", "list_categories", "resolve_root"]

EXPECTED = (
    "<root>/<toy>/train/good/*.png, <root>/<toy>/test/<good|defect>/*.png and "
    "<root>/<toy>/ground_truth/<defect>/<name>_mask.png (root = the MAD-Sim or MAD-Real folder)"
)
_SUBSETS = {
    "sim": ("MAD-Sim", "MAD_Sim", "MAD_sim", "mad_sim"),
    "real": ("MAD-Real", "MAD_Real", "MAD_real", "mad_real"),
}


def resolve_root(root: Path, subset: Optional[str] = None) -> Path:
    """The MAD-Sim/MAD-Real folder: ``root`` itself, or its sub-folder chosen by ``subset``."""
    root = Path(root).expanduser()
    if subset is not None and subset not in _SUBSETS:
        raise ValueError(f"mad: subset={subset!r}; expected 'sim' or 'real'")
    present = {key: root / name for key, names in _SUBSETS.items() for name in names if (root / name).is_dir()}
    if not present:
        return root
    if subset is None:
        if len(present) > 1:
            raise DatasetError(
                f"mad: {root} holds both MAD-Sim and MAD-Real; pass subset='sim' or 'real', "
                "or point root at one of them"
            )
        return next(iter(present.values()))
    if subset not in present:
        raise DatasetError(f"mad: no MAD-{subset.capitalize()} folder in {root}; found {sorted(present)}")
    return present[subset]


def list_categories(root: Path, subset: Optional[str] = None) -> list[str]:
    """Category names of MAD-Sim or MAD-Real (``subset``; see :func:`resolve_root`)."""
    return sorted(category_dirs(resolve_root(root, subset), "mad", EXPECTED))


def list_records(
    root: Path,
    split: str,
    categories: Optional[Iterable[str]] = None,
    subset: Optional[str] = None,
    allow_missing_masks: bool = False,
) -> list[Record]:
    """MAD-Sim / MAD-Real records (one category per toy)."""
    return mvtec_like_records(resolve_root(root, subset), split, categories, "mad", EXPECTED, allow_missing_masks)
