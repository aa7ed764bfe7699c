"""Our ``fit --preset aebad`` against the authors' ``evaluate()`` on the very same trained weights.

    python benchmarks/compare_aebad_with_authors.py --authors-code ../shared/authors_code
    python benchmarks/compare_aebad_with_authors.py --authors-code DIR --data AeBAD_ROOT --steps 20

1. Trains our model with the ``aebad`` preset (random encoder, a few steps) on an AeBAD-S tree:
   by default a small generated one of non-square photos whose defects partly lie in the border
   that the centre crop removes (so the relabelling rule matters); ``--data`` takes a real one.
2. Loads the trained weights into the authors' own model classes (their model files, imported
   through ../shared/tools/authors_shim.py) and runs their ``evaluate()`` from utils/eval.py,
   imported as it is (cv2 and matplotlib, used only by its plotting helpers, are stubbed;
   pandas 2 (their ``DataFrame._append``) and scikit-image are needed: ``pip install minimaxad[authors]``). Their test loader
   is their ``AeBADDataset`` test transform restated with PIL (torchvision is not installed
   here): ``Resize((s, s))`` -> ``CenterCrop(c)`` -> ``ToTensor`` -> ``Normalize`` for images,
   the same without ``Normalize`` for masks, an empty cropped mask relabelling the image normal,
   else ``mask / max``; batch 1, their order (defect types sorted).
3. Prints, per domain, I-AUROC / P-AUROC / AUPRO of both and their differences, and also the
   common path's numbers (what the ``aebad`` preset reported before its protocol was its
   script's), to show what the protocol changes.

The authors round each metric to 3 decimals in ``evaluate()``; the comparison shadows their
``round`` to compare the full values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO.parent / "shared" / "tools" / "authors_shim.py"
DOMAINS = ("same", "background", "illumination", "view")
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def import_authors(authors_code: Path):
    """Their model modules and utils/eval.py (``evaluate``)."""
    if not (authors_code / "utils" / "eval.py").is_file():
        raise SystemExit(f"--authors-code {authors_code}: no utils/eval.py; give a checkout of WangFengJiee/MiniMaxAD")
    if not SHIM.is_file():
        raise SystemExit(f"{SHIM} not found: it lets the authors' model files import without timm")
    for name in ("pandas", "skimage"):
        try:
            __import__(name)
        except ImportError:
            raise SystemExit(f"their compute_pro needs {name}: pip install 'minimaxad[authors]'") from None
    sys.path[:0] = [str(SHIM.parent), str(authors_code)]
    import authors_shim

    authors_shim.install()
    for stub in ("cv2", "matplotlib", "matplotlib.pyplot"):  # only their plotting helpers use these
        sys.modules.setdefault(stub, types.ModuleType(stub))
    from models import de_unireplknet, unireplknet
    from utils import eval as their_eval

    # their evaluate() rounds each metric to 3 decimals; shadowing round() in their module keeps
    # the full values, so the comparison is not limited to 5e-4
    their_eval.round = lambda value, ndigits=None: float(value)
    warnings.filterwarnings("ignore", category=FutureWarning, module="utils.eval")  # pandas, in their compute_pro
    return unireplknet, de_unireplknet, their_eval


def make_tree(root: Path, seed: int = 0) -> Path:
    """AeBAD_S/{train/good/<sub>, test/<good|ablation>/<domain>, ground_truth/ablation/<domain>}:
    160 x 120 photos (non-square), smooth textures with darker blobs as defects; every third
    defect lies in the left border, which Resize(256) + CenterCrop(224) removes."""
    rng = np.random.default_rng(seed)
    s = root / "AeBAD_S"

    def photo(defect: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        h, w = 120, 160
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = [
            110 + 60 * np.sin(x / rng.uniform(6, 12) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(6, 12))
            for _ in range(3)
        ]
        image = np.stack(base, -1) + rng.normal(0, 6, (h, w, 3))
        mask = np.zeros((h, w), np.uint8)
        if defect is not None:
            x0, y0, x1, y1 = defect
            mask[y0:y1, x0:x1] = 255
            image[mask > 0] = image[mask > 0] * 0.35 + 20
        return np.clip(image, 0, 255).astype(np.uint8), mask

    for sub in ("a", "b"):
        for i in range(6):
            (s / "train" / "good" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(None)[0]).save(s / "train" / "good" / sub / f"{i}.png")
    for domain in DOMAINS:
        for i in range(3):
            (s / "test" / "good" / domain).mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(None)[0]).save(s / "test" / "good" / domain / f"g{i}.png")
        for i in range(4):
            if i % 3 == 2:
                box = (0, 40, 6, 70)  # in the 1/16 border that the crop drops
            else:
                x0, y0 = int(rng.integers(30, 110)), int(rng.integers(20, 80))
                box = (x0, y0, x0 + int(rng.integers(8, 25)), y0 + int(rng.integers(8, 25)))
            image, mask = photo(box)
            for folder, array in (("test", image), ("ground_truth", mask)):
                (s / folder / "ablation" / domain).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(s / folder / "ablation" / domain / f"{domain}_{i}.png")
    return root


def their_test_items(root: Path, domain: str, resize: int, crop: int):
    """(img (1, 3, c, c), gt (1, 1, c, c), label (1,), path) in their dataset's order."""
    s = root / "AeBAD_S" if (root / "AeBAD_S").is_dir() else root
    top = int(round((resize - crop) / 2.0))
    for defect in sorted(d.name for d in (s / "test").iterdir() if d.is_dir()):
        for path in sorted((s / "test" / defect / domain).glob("*.png")):
            image = Image.open(path).convert("RGB").resize((resize, resize), Image.BILINEAR)
            array = np.asarray(image, np.float32)[top : top + crop, top : top + crop] / 255.0
            img = torch.from_numpy(((array - MEAN) / STD).transpose(2, 0, 1).copy())[None]
            label = int(defect != "good")
            gt = torch.zeros(1, 1, crop, crop)
            if label:
                mask = Image.open(s / "ground_truth" / defect / domain / path.name).resize(
                    (resize, resize), Image.BILINEAR
                )
                m = torch.from_numpy(np.asarray(mask, np.float32)[top : top + crop, top : top + crop] / 255.0)
                if m.max() == 0:
                    label = 0  # their "avoid erasing the abnormal mask via center crop" relabelling
                else:
                    gt = (m / m.max())[None, None]
            yield img, gt, torch.tensor([label]), str(path)


def load_into_authors(checkpoint: dict, unireplknet, de_unireplknet):
    from minimaxad.models import get_backbone_spec
    from minimaxad.models.weights import encoder_to_official

    name = checkpoint["backbone"]
    encoder, bn = getattr(unireplknet, name)()
    decoder = getattr(de_unireplknet, f"de_{name}")()
    state = checkpoint["state"]
    bn.load_state_dict({k[len("bottleneck.") :]: v for k, v in state.items() if k.startswith("bottleneck.")})
    decoder.load_state_dict({k[len("decoder.") :]: v for k, v in state.items() if k.startswith("decoder.")})
    if checkpoint["encoder_state"] is None:
        raise SystemExit("the run used ImageNet encoder weights; this comparison trains with a random encoder")
    missing, unexpected = encoder.load_state_dict(
        encoder_to_official(checkpoint["encoder_state"], get_backbone_spec(name)), strict=False
    )
    if unexpected or any(not k.startswith(("stages.3", "downsample_layers.3", "head", "norm.")) for k in missing):
        raise SystemExit(f"their encoder did not take our weights: missing {missing}, unexpected {unexpected}")
    return encoder.eval(), bn.eval(), decoder.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--authors-code",
        type=Path,
        default=Path(os.environ.get("MINIMAXAD_AUTHORS_CODE", REPO.parent / "shared" / "authors_code")),
        help="a checkout of WangFengJiee/MiniMaxAD (default $MINIMAXAD_AUTHORS_CODE or ../shared/authors_code)",
    )
    parser.add_argument("--data", type=Path, help="an AeBAD-S root (default: a generated tree in --output)")
    parser.add_argument("--output", type=Path, default=Path("runs/compare-aebad"))
    parser.add_argument("--backbone", default="unireplknet_f")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=111)
    parser.add_argument("--reuse", action="store_true", help="keep the run already in --output (no training)")
    args = parser.parse_args()
    if not args.authors_code.is_dir():
        print(f"skipped: the authors' code is not at {args.authors_code} (give --authors-code DIR)")
        return
    unireplknet, de_unireplknet, their_eval = import_authors(args.authors_code)

    from minimaxad.cli import main as cli
    from minimaxad.engine.checkpoint import read_checkpoint

    args.output.mkdir(parents=True, exist_ok=True)
    root = args.data or make_tree(args.output / "AeBAD")
    run = args.output / "run"
    common = [
        "--data",
        str(root),
        "--backbone",
        args.backbone,
        "--encoder-weights",
        "none",
        "--image-size",
        str(args.image_size),
        "--crop-size",
        str(args.crop_size),
        "--batch-size",
        "4",
        "--max-steps",
        str(args.steps),
        "--seed",
        str(args.seed),
        "--quiet",
    ]
    if not (args.reuse and (run / "checkpoint.pt").is_file()):
        assert cli(["fit", "--preset", "aebad", *common, "--output", str(run)]) == 0
    # ours: `test` by the protocol stored in the checkpoint (the preset's), then by the common path
    assert cli(["test", "--checkpoint", str(run), "--output", str(args.output / "ours"), "--quiet"]) == 0
    assert (
        cli(
            [
                "test",
                "--checkpoint",
                str(run),
                "--protocol",
                "single",
                "--output",
                str(args.output / "common"),
                "--quiet",
            ]
        )
        == 0
    )
    ours = json.loads((args.output / "ours" / "metrics.json").read_text())["categories"]
    common_path = json.loads((args.output / "common" / "metrics.json").read_text())["categories"]

    encoder, bn, decoder = load_into_authors(read_checkpoint(run / "checkpoint.pt"), unireplknet, de_unireplknet)
    print(f"\n{'domain':<13} {'':<7} {'I-AUROC':>8} {'P-AUROC':>8} {'AUPRO':>8}")
    worst = 0.0
    for domain in DOMAINS:
        items = list(their_test_items(Path(root), domain, args.image_size, args.crop_size))
        p_auroc, i_auroc, aupro = their_eval.evaluate(encoder, bn, decoder, items, "cpu", is_bool=False)
        theirs = {"i_auroc": i_auroc, "p_auroc": p_auroc, "aupro": aupro}
        mine = ours[domain]
        diff = {k: abs(mine[k] - theirs[k]) for k in theirs}
        worst = max(worst, *diff.values())
        for label, row in (("ours", mine), ("theirs", theirs), ("|diff|", diff), ("common", common_path[domain])):
            fmt = "{:>8.1e}" if label == "|diff|" else "{:>8.4f}"
            print(
                f"{domain if label == 'ours' else '':<13} {label:<7} "
                + " ".join(fmt.format(row[k]) for k in ("i_auroc", "p_auroc", "aupro"))
            )
    print(f"\nlargest difference ours vs theirs: {worst:.1e}")


if __name__ == "__main__":
    main()
