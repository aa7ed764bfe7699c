"""Python API for inspection programs: load a checkpoint once, predict on batches of images.

from minimaxad.inference.predict import Predictor
predictor = Predictor.from_checkpoint("runs/bottle/checkpoint.pt")
result = predictor.predict([pil_image, "photo.png", numpy_array])
result.scores, result.normalized_scores, result.is_anomalous, result.maps
"""

from __future__ import annotations

import csv
import functools
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from minimaxad.data.io import BadImageError, DatasetError, is_image_file, load_image
from minimaxad.data.tiles import PhotoTiler, upright_size
from minimaxad.data.transforms import Transform
from minimaxad.engine.checkpoint import checkpoint_tiling, model_from_checkpoint, read_checkpoint
from minimaxad.engine.thresholds import Thresholds, near_threshold, thresholds_for
from minimaxad.files import atomic_write, check_writable_folder, inside, safe_name, unique_names
from minimaxad.inference.backends import Backend, create_backend, int8_backend_from_checkpoint, load_backend
from minimaxad.inference.export import read_metadata
from minimaxad.inference.quantize import INT8_BACKEND, INT8_RECHECK_MARGIN, float32_reference_path
from minimaxad.models import MiniMaxAD
from minimaxad.reporting.heatmaps import defect_mask, heatmap_overlay
from minimaxad.tiling import TiledPhoto, Tiling, run_tiled


@dataclass
class Prediction:
    """Results for a batch, in input order. Maps are at the network's input size, or, for a tiled
    model, at each photo's (resized) resolution: then ``maps`` is a list of ``(H_i, W_i)`` arrays."""

    scores: np.ndarray  # (N,) raw anomaly scores
    maps: np.ndarray | list[np.ndarray]  # (N, H, W) float32 anomaly maps, or one (H_i, W_i) per photo
    thresholds: Thresholds  # the rule the decisions were made with
    sizes: list[tuple[int, int]]  # (width, height) of each original image
    rechecked: np.ndarray | None = None  # (N,) bool: re-scored in float32 (near the threshold)
    normalized_scores: np.ndarray = field(init=False)  # (N,) in [0, 1], 0.5 at the image threshold
    is_anomalous: np.ndarray = field(init=False)  # (N,) bool: score >= image threshold
    decisions: list[str] = field(init=False)  # "anomalous", "normal", or "unknown" without a threshold
    defect_masks: np.ndarray | list[np.ndarray] | None = field(init=False)  # map >= pixel threshold, as maps

    def __post_init__(self) -> None:
        self.normalized_scores = self.thresholds.normalize(self.scores)
        self.is_anomalous = self.thresholds.is_anomalous(self.scores)
        self.decisions = self.thresholds.decisions(self.scores)
        if isinstance(self.maps, list):  # tiled photos of different sizes: one mask per map
            masks = [self.thresholds.defect_masks(m) for m in self.maps]
            self.defect_masks = None if self.thresholds.pixel.value is None else masks
        else:
            self.defect_masks = self.thresholds.defect_masks(self.maps)

    @property
    def image_threshold(self) -> float | None:
        """The image threshold the decisions were made with (None: none was defined)."""
        return self.thresholds.image.value

    @property
    def pixel_threshold(self) -> float | None:
        """The pixel threshold of the defect masks (None: none was defined)."""
        return self.thresholds.pixel.value

    def __len__(self) -> int:
        return len(self.scores)


class Predictor:
    """A trained model with its preprocessing and decision thresholds, ready for inference.

    Threshold precedence: ``image_threshold`` > ``false_positive_rate`` (re-calibrated on the
    normal scores stored in the checkpoint) > the calibrated threshold in the checkpoint.
    """

    def __init__(
        self,
        model: MiniMaxAD | None,
        *,
        image_size: int,
        crop_size: int | None = None,
        top_ratio: float = 0.01,
        calibration: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        image_threshold: float | None = None,
        false_positive_rate: float | None = None,
        pixel_threshold: float | None = None,
        pixel_false_positive_rate: float | None = None,
        backend: str | Backend = "fused",
        recheck_margin: float | None = None,
        float32_backend: Backend | None = None,
        categories: Sequence[str] | None = None,
        tiling: Tiling | None = None,
        white_level: float | None = None,
    ) -> None:
        self.transform = Transform(image_size, crop_size)
        # photos of more than 8 bits are read as the model's training photos were (None: full range)
        self.white_level = white_level
        size = self.transform.output_size[0]
        self.tiling = tiling
        if tiling is not None:
            if tiling.image_size != size or crop_size is not None:
                raise ValueError(f"tiles go to the network at {tiling.image_size} px but the model takes {size} px")
            self.tiler = PhotoTiler(tiling, tuple(self.transform.mean), tuple(self.transform.std))
        if isinstance(backend, Backend):
            self.backend = backend
        else:
            if model is None:
                raise ValueError("a Predictor needs a model, or a ready Backend as backend=")
            # a tiled model's network gives unsmoothed tile maps: the photo's map is stitched, then smoothed
            self.backend = create_backend(
                backend, model, image_size=size, top_ratio=top_ratio, device=device, smooth=tiling is None
            )
        self.model = model
        self.device = self.backend.device
        # Reduced precision moves scores by ~0.1%: images that close to the threshold are
        # scored again in float32, so decisions stay those of the float32 model.
        default_margin = RECHECK_MARGINS.get(self.backend.name, RECHECK_MARGIN)
        reduced = self.backend.name in REDUCED_PRECISION_BACKENDS
        self.recheck_margin = (default_margin if reduced else 0.0) if recheck_margin is None else recheck_margin
        self._float32_backend = float32_backend
        self.top_ratio = top_ratio
        self.calibration = calibration or {}
        self.overrides = dict(
            image_threshold=image_threshold,
            false_positive_rate=false_positive_rate,
            pixel_threshold=pixel_threshold,
            pixel_false_positive_rate=pixel_false_positive_rate,
        )
        # the categories the model was trained on (its own thresholds or not); else those calibrated
        self._categories = sorted(categories or self.calibration.get("per_category") or {})
        self.thresholds = self.thresholds_for(None)

    @property
    def categories(self) -> list[str]:
        """The categories of a unified model (each decides with its own thresholds where it has them);
        empty for a single-category model."""
        return self._categories if len(self._categories) > 1 or self.calibration.get("per_category") else []

    def thresholds_for(self, category: str | None = None) -> Thresholds:
        """The thresholds in force for ``category``: its own when calibrated, else the model's (see
        :func:`minimaxad.engine.thresholds.thresholds_for`); an unknown category is a ValueError."""
        return thresholds_for(self.calibration, category, known_categories=self.categories, **self.overrides)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        *,
        device: str | torch.device = "auto",
        encoder_weights: str | Path | None = None,
        reparameterize: bool = True,
        backend: str = "fused",
        trust: bool = False,
        tiling: TilingOverrides | None = None,
        **threshold_overrides: Any,
    ) -> "Predictor":
        """Load once: the model, transform and thresholds, on ``backend`` (see
        :data:`minimaxad.inference.backends.BACKENDS`; ``fused`` = re-parameterized PyTorch by default).
        Photos are tiled as the model was trained (the checkpoint's tiling); ``tiling`` changes
        some of its settings (:class:`TilingOverrides`, e.g. a smaller stride for overlapping tiles).

        ``checkpoint`` may also be an exported file (``.onnx``, OpenVINO ``.xml``, TorchScript) with
        its ``.json`` beside it: see :meth:`from_exported` (TorchScript needs ``trust=True``).
        """
        if is_exported_model(checkpoint):
            return cls.from_exported(
                checkpoint,
                device=device,
                trust=trust,
                backend=None if backend in ("fused", None) else backend,
                tiling=tiling,
                **threshold_overrides,
            )
        state = read_checkpoint(checkpoint)
        model = model_from_checkpoint(state, encoder_weights=encoder_weights)
        if backend == "fused" and not reparameterize:
            backend = "eager"
        if backend != "eager":
            model.reparameterize()
        if backend == INT8_BACKEND:  # quantized now, calibrated on the checkpoint's own normal training images
            stored = (tiling or TilingOverrides()).apply(checkpoint_tiling(state), state["image_size"])
            backend = int8_backend_from_checkpoint(state, model, tiling=stored)
        return cls(
            model,
            image_size=state["image_size"],
            crop_size=state.get("crop_size"),
            top_ratio=state.get("top_ratio", 0.01),
            calibration=state.get("thresholds"),
            device=device,
            backend=backend,
            categories=state.get("categories"),
            tiling=(tiling or TilingOverrides()).apply(checkpoint_tiling(state), state["image_size"]),
            white_level=(state.get("config") or {}).get("white_level"),
            **threshold_overrides,
        )

    @classmethod
    def from_exported(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        backend: str | None = None,
        trust: bool = False,
        tiling: TilingOverrides | None = None,
        **threshold_overrides: Any,
    ) -> "Predictor":
        """A Predictor over a file written by ``minimaxad export``: ``.onnx`` runs in ONNX Runtime
        (or ``backend="openvino"``/``"openvino-bf16"``), ``.xml`` in OpenVINO, a TorchScript file
        in PyTorch (only with ``trust=True``: TorchScript runs the code stored in the file).
        Preprocessing and thresholds come from ``<file>.json``."""
        meta = read_metadata(Path(path))
        stored = checkpoint_tiling(meta)
        tiled = (tiling or TilingOverrides()).apply(stored, meta["image_size"])
        if tiled is not None and stored is None:
            raise ValueError(
                f"{path} was exported without tiling (its graph smooths whole-photo maps); export the "
                "checkpoint again with --tile-size to run it on tiles"
            )
        device = "cpu" if str(device) == "auto" else device
        int8 = meta.get("format") == INT8_BACKEND
        if int8 and backend not in (None, INT8_BACKEND):
            raise ValueError(f"{path} is an INT8 file: run it with --backend openvino-int8 (or no --backend)")
        if not int8 and backend == INT8_BACKEND:
            raise ValueError(f"{path} is not an INT8 file: write one with 'minimaxad export --format openvino-int8'")
        runner = load_backend(path, INT8_BACKEND if int8 else backend, device=device, trust=trust)
        float32 = None
        if int8:  # the float32 graph it was quantized from, written beside it, for re-checks
            float32 = load_backend(float32_reference_path(Path(path)), "openvino", device=device)
        elif runner.name in REDUCED_PRECISION_BACKENDS:  # the same file in float32, for re-checks
            float32 = load_backend(
                path, "openvino" if runner.name == "openvino-bf16" else None, device=device, trust=trust
            )
        return cls(
            None,
            image_size=meta["image_size"],
            crop_size=meta.get("crop_size"),
            top_ratio=meta.get("top_ratio", 0.01),
            calibration=meta.get("thresholds"),
            backend=runner,
            float32_backend=float32,
            categories=meta.get("categories"),
            tiling=tiled,
            white_level=meta.get("white_level"),
            **threshold_overrides,
        )

    @property
    def image_threshold(self) -> float | None:
        """The image-score threshold in force (calibrated, or set by the user), or None."""
        return self.thresholds.image.value

    @property
    def pixel_threshold(self) -> float | None:
        """The pixel threshold of the defect masks in force, or None."""
        return self.thresholds.pixel.value

    def decode(self, image: Any) -> Image.Image:
        """A path, PIL image or array -> the upright 8-bit RGB photo, read as the model's training
        photos were (:func:`~minimaxad.data.io.load_image` with the model's white level)."""
        return load_image(image, self.white_level)

    def preprocess(self, images: Sequence[Any]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Paths, PIL images or arrays -> a normalised batch and the original (W, H) sizes."""
        pil = [self.decode(image) for image in images]
        return torch.stack([self.transform(p) for p in pil]), [p.size for p in pil]

    def predict(self, images: Sequence[Any], batch_size: int = 16, category: str | None = None) -> Prediction:
        """Scores, decisions and maps for ``images`` (any mix of paths, PIL images, arrays).

        ``category``: for a unified model, decide with that category's calibrated thresholds.
        """
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            images = [images]
        thresholds = self.thresholds_for(category)
        if self.tiling is not None:
            photos = [self.decode(image) for image in images]
            maps_list, scores_arr, near = self.run_photos(photos, [thresholds.image.value] * len(photos), batch_size)
            return Prediction(scores_arr, maps_list, thresholds, [p.size for p in photos], near)
        scores, maps, sizes, rechecked = [], [], [], []
        for start in range(0, len(images), batch_size):
            batch, batch_sizes = self.preprocess(images[start : start + batch_size])
            batch_maps, batch_scores, near = self.run(batch, [thresholds.image.value] * len(batch))
            maps.append(batch_maps)
            scores.append(batch_scores)
            rechecked.append(near)
            sizes.extend(batch_sizes)
        return Prediction(np.concatenate(scores), np.concatenate(maps), thresholds, sizes, np.concatenate(rechecked))

    def run(self, batch: torch.Tensor, thresholds: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Maps ``(B, S, S)`` and scores ``(B,)`` of a normalised batch, as float32 numpy arrays, and
        which images were re-scored in float32: on a reduced-precision backend, each image whose
        score lies within ``recheck_margin`` of its own threshold (``thresholds``, one per image),
        so that its decision is the float32 model's."""
        maps, scores = self.backend(batch)
        maps = maps.float().cpu().numpy()
        scores = scores.float().cpu().numpy()
        near = near_threshold(scores, thresholds, self.recheck_margin)
        if near.any():
            exact_maps, exact_scores = self.float32_backend()(batch[torch.from_numpy(near)])
            maps[near] = exact_maps.float().cpu().numpy()
            scores[near] = exact_scores.float().cpu().numpy()
        return maps, scores, near

    def run_photos(
        self, photos: Sequence[TiledPhoto | Image.Image], thresholds: Sequence[float | None], batch_size: int = 16
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """:meth:`run` for a tiled model: each photo's stitched map ``(H, W)`` at its (resized)
        resolution, the scores, and which photos were re-scored in float32. ``photos`` are already
        cut (:class:`~minimaxad.tiling.TiledPhoto`) or PIL images, cut one at a time as the batches
        reach them (a photo's float tiles take 4 times its decoded size). ``batch_size`` counts tiles."""
        results = list(self._tiled(photos, self.backend, batch_size))
        maps = [r.map.float().cpu().numpy() for r in results]
        scores = np.asarray([r.score for r in results], dtype=np.float32)
        near = near_threshold(scores, thresholds, self.recheck_margin)
        if near.any():
            again = [photos[i] for i in np.flatnonzero(near)]
            for i, exact in zip(np.flatnonzero(near), self._tiled(again, self.float32_backend(), batch_size)):
                maps[i], scores[i] = exact.map.float().cpu().numpy(), exact.score
        return maps, scores, near

    def _tiled(self, photos: Sequence[TiledPhoto | Image.Image], backend: Backend, batch_size: int):
        assert self.tiling is not None
        cut = (p if isinstance(p, TiledPhoto) else self.tiler.cut(p) for p in photos)  # lazily: memory
        return run_tiled(
            cut,
            lambda tiles: backend(tiles)[0],
            batch_size=batch_size,
            top_ratio=self.top_ratio,
            blend=self.tiling.blend,
        )

    def float32_backend(self) -> Backend:
        """The float32 form of this predictor's model (made on first use), for re-checks."""
        if self._float32_backend is None:
            if self.model is None:
                raise ValueError(
                    "no float32 model to re-check reduced-precision scores with; "
                    "pass float32_backend= or recheck_margin=0"
                )
            self._float32_backend = create_backend(
                "fused",
                self.model,
                image_size=self.transform.output_size[0],
                top_ratio=self.top_ratio,
                device=self.device,
                smooth=self.tiling is None,
            )
        return self._float32_backend


@dataclass(frozen=True)
class TilingOverrides:
    """Tiling settings given at inference time (``--tile-size``, ``--tile-stride``,
    ``--resize-long-side``): they replace the model's own; None keeps the model's value."""

    tile_size: int | None = None
    tile_stride: int | None = None
    resize_long_side: int | None = None

    def apply(self, stored: Tiling | None, image_size: int) -> Tiling | None:
        """The tiling in force: ``stored`` (the model's, None for a whole-photo model) with these
        settings replacing its own; a whole-photo model is tiled only when ``tile_size`` is given."""
        if self.tile_size is None and stored is None:
            if self.tile_stride is not None or self.resize_long_side is not None:
                raise ValueError(
                    "this model scores whole photos: --tile-stride and --resize-long-side need --tile-size"
                )
            return None
        base = stored.to_dict() if stored is not None else {"tile_size": self.tile_size, "image_size": image_size}
        if self.tile_size is not None and self.tile_size != base["tile_size"]:
            base["tile_stride"] = None  # a stride was for the old tile size
        given = {k: v for k, v in vars(self).items() if v is not None}
        return Tiling(**{**base, **given, "image_size": image_size})


REDUCED_PRECISION_BACKENDS = ("bf16", "fp16", "openvino-bf16", INT8_BACKEND)
RECHECK_MARGIN = 0.01  # relative distance to the image threshold re-scored in float32
# INT8 moves scores more than bfloat16: its own margin (see minimaxad.inference.quantize)
RECHECK_MARGINS = {INT8_BACKEND: INT8_RECHECK_MARGIN}


def is_exported_model(path: str | Path) -> bool:
    """A file written by ``minimaxad export`` (it has its ``<file>.json`` beside it)."""
    path = Path(path)
    return path.is_file() and (path.suffix.lower() in (".onnx", ".xml") or Path(str(path) + ".json").is_file())


# -- folders of photos -> files -------------------------------------------------------------------
def collect_inputs(
    inputs: Sequence[Path], exclude: Path | None = None
) -> tuple[list[Path], list[str], list[tuple[str, str]]]:
    """Image files given directly or found (recursively) in folders, sorted; a unique, safe
    output name for each; and the inputs that do not exist.

    A file's name is its path inside the given folder (or the last parts of the path given),
    each part made safe (:func:`~minimaxad.files.safe_name`: no separators, leading dots,
    device names) and joined with ``__``, then shortened to the last parts that keep all names
    distinct. Files inside ``exclude`` (the output folder) are not inputs.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    files: list[Path] = []
    parts: list[list[str]] = []
    missing: list[tuple[str, str]] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and is_image_file(p) and not (excluded is not None and excluded in p.resolve().parents)
            )
            files.extend(found)
            parts.extend(_name_parts(p.relative_to(item)) for p in found)
        elif item.is_file():
            files.append(item)
            parts.append(_name_parts(item)[-4:])  # shortened below when unique
        else:
            missing.append((str(item), "no such file or folder"))
    names = [safe_name(name) for name in _shortest_unique(parts)]
    # the same name twice (a.png and a.jpg, or two inputs): number the later ones
    return files, unique_names(names), missing


def _name_parts(path: Path) -> list[str]:
    """The path's components without its anchor (``/``, ``C:\\``) and suffix, each made safe."""
    parts = path.with_suffix("").parts
    if path.anchor:  # "/" would become a part of the name (and then the start of an absolute path)
        parts = parts[1:]
    return [safe_name(part) for part in parts] or ["_"]


def _shortest_unique(parts: list[list[str]]) -> list[str]:
    """Each name as few of its last parts (joined with ``__``) as keep all names distinct."""
    full = ["__".join(p) for p in parts]
    for depth in range(1, max((len(p) for p in parts), default=1)):
        short = ["__".join(p[-depth:]) for p in parts]
        if len(set(short)) == len(set(full)):
            return short
    return full


@dataclass
class PredictionFiles:
    """Where ``predict`` writes: every path made from a safe name and checked to lie inside
    ``output`` (:func:`~minimaxad.files.inside`)."""

    output: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    rechecked: list[str] = field(default_factory=list)
    report_items: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.output = check_writable_folder(Path(self.output), "--output folder")
        for folder in ("heatmaps", "masks"):
            inside(self.output, folder).mkdir(exist_ok=True)

    def path(self, *parts: str) -> Path:
        """``output / parts...``, refused if it would lie outside ``output``."""
        return inside(self.output, *parts)

    def write_tables(self, summary: dict[str, Any]) -> None:
        """Write ``scores.csv`` and ``scores.json`` (the rows and ``summary``) atomically."""
        fields = ["path", "name", "score", "normalized_score", "decision", "width", "height", "heatmap", "mask"]
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path("scores.csv"), table.getvalue())
        atomic_write(self.path("scores.json"), json.dumps(summary, indent=2) + "\n")


@dataclass
class MapStyle:
    """How maps become pictures: the colour range of the heatmaps and the mask threshold."""

    pixel_threshold: float | None
    low: float | None  # a low quantile of normal pixels: the colour scale's bottom
    alpha: float

    @classmethod
    def of(cls, predictor: Predictor, category: str | None, alpha: float) -> "MapStyle":
        """How to paint ``category``'s maps: its pixel threshold, and the low end of the colour scale from
        the normal images' pixel quantiles."""
        thresholds = predictor.thresholds_for(category)
        own = predictor.calibration.get("per_category") or {}
        calibration = own[thresholds.calibrated_for] if thresholds.calibrated_for else predictor.calibration
        quantiles = calibration.get("normal_pixel_quantiles")
        return cls(thresholds.pixel.value, float(quantiles[10]) if quantiles else None, alpha)

    def heatmap(self, photo: Image.Image, amap: np.ndarray) -> Image.Image:
        """``amap`` over ``photo``, coloured from the normal pixels' level to 1.5 x the pixel threshold."""
        hi = self.pixel_threshold * 1.5 if self.pixel_threshold is not None else float(amap.max())
        lo = self.low if self.low is not None else float(amap.min())
        return heatmap_overlay(photo, amap, vmin=lo, vmax=max(hi, lo + 1e-6), alpha=self.alpha)

    def mask(self, photo: Image.Image, amap: np.ndarray) -> Image.Image:
        """The defect mask of ``amap`` at the pixel threshold, at ``photo``'s size (empty without one)."""
        threshold = self.pixel_threshold if self.pixel_threshold is not None else float("inf")
        return defect_mask(amap, threshold, size=photo.size)


def predict_paths(
    checkpoint: Path,
    inputs: Sequence[Path],
    output: Path,
    *,
    batch_size: int = 16,
    device: str = "auto",
    encoder_weights: str | None = None,
    image_threshold: float | None = None,
    false_positive_rate: float | None = None,
    pixel_threshold: float | None = None,
    alpha: float = 0.5,
    write_report: bool = False,
    progress: bool = True,
    category: str | None = None,
    backend: str = "fused",
    recheck_margin: float | None = None,
    trust_torchscript: bool = False,
    tiling: TilingOverrides | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score every image; write ``heatmaps/NAME.png`` (overlay at the photo's size),
    ``masks/NAME.png`` (binary defect mask at the photo's size), ``scores.csv`` and
    ``scores.json``, all inside ``output``. Unreadable files are skipped, reported, and listed
    at the end."""
    files_out = PredictionFiles(Path(output))  # a folder that cannot be written fails before any work
    predictor = Predictor.from_checkpoint(
        checkpoint,
        device=device,
        encoder_weights=encoder_weights,
        image_threshold=image_threshold,
        false_positive_rate=false_positive_rate,
        pixel_threshold=pixel_threshold,
        backend=backend,
        recheck_margin=recheck_margin,
        trust=trust_torchscript,
        tiling=tiling,
    )
    files, names, failed = collect_inputs(inputs, exclude=files_out.output)
    style = MapStyle.of(predictor, category, alpha)
    # a tiled model's batches count tiles: photos are read a batch of tiles at a time (bounded memory)
    weight = None if predictor.tiling is None else functools.partial(_tile_count, predictor.tiling)
    for chunk in _chunks(list(zip(files, names)), batch_size, progress, weight):
        photos, readable = _read_photos(predictor, chunk, failed)
        if photos:
            tiles_per_batch = len(photos) if predictor.tiling is None else batch_size
            result = predictor.predict(photos, batch_size=tiles_per_batch, category=category)
            for i, (path, name) in enumerate(readable):
                _write_one(files_out, style, result, i, path, name, photos[i], write_report)
    thresholds = predictor.thresholds_for(category)
    summary = _summary(checkpoint, predictor, category, thresholds, files_out, failed)
    files_out.write_tables(summary)
    if write_report and files_out.report_items:
        _write_html(files_out, thresholds)
    _echo_results(echo, files_out, thresholds, failed)
    return {"predicted": len(files_out.rows), "failed": failed, "output": str(files_out.output), "rows": files_out.rows}


Named = tuple[Path, str]  # an input file and its output name


def _tile_count(tiling: Tiling, file: Named) -> int:
    try:
        return tiling.count(*upright_size(str(file[0])))
    except (OSError, ValueError):  # unreadable: reported when the chunk is read
        return 1


def _chunks(
    files: list[Named], batch_size: int, progress: bool, weight: Callable[[Named], int] | None = None
) -> Iterator[list[Named]]:
    """``files`` in batches of ``batch_size`` files, or of about ``batch_size`` units of
    ``weight`` (a tiled model's tiles; at least one file a batch), with a progress bar."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="predict", unit="img", dynamic_ncols=True)
    try:
        start = 0
        while start < len(files):
            stop = min(len(files), start + batch_size)
            if weight is not None:
                stop, total = start + 1, weight(files[start])
                while stop < len(files) and total + (next_weight := weight(files[stop])) <= batch_size:
                    total, stop = total + next_weight, stop + 1
            chunk = files[start:stop]
            start = stop
            yield chunk
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def _read_photos(
    predictor: Predictor, chunk: list[Named], failed: list[tuple[str, str]]
) -> tuple[list[Image.Image], list[Named]]:
    """The decodable photos of ``chunk``; the others go to ``failed`` with the reason."""
    photos, readable = [], []
    for path, name in chunk:
        try:
            photos.append(predictor.decode(path))
            readable.append((path, name))
        except (BadImageError, DatasetError, OSError) as exc:
            failed.append((str(path), str(exc).split(". ")[0]))
    return photos, readable


def _write_one(
    files_out: PredictionFiles,
    style: MapStyle,
    result: Prediction,
    i: int,
    path: Path,
    name: str,
    photo: Image.Image,
    keep_for_report: bool,
) -> None:
    """Heatmap and mask of image ``i`` of ``result``, and its row of the tables."""
    amap = result.maps[i]
    style.heatmap(photo, amap).save(files_out.path("heatmaps", f"{name}.png"))
    style.mask(photo, amap).save(files_out.path("masks", f"{name}.png"))
    if result.rechecked is not None and result.rechecked[i]:
        files_out.rechecked.append(name)
    files_out.rows.append(
        {
            "path": str(path),
            "name": name,
            "score": float(result.scores[i]),
            "normalized_score": float(result.normalized_scores[i]),
            "decision": result.decisions[i],
            "width": photo.size[0],
            "height": photo.size[1],
            "heatmap": f"heatmaps/{name}.png",
            "mask": f"masks/{name}.png",
        }
    )
    if keep_for_report:
        from minimaxad.reporting.html import ReportItem

        files_out.report_items.append(
            ReportItem(
                path=str(path),
                category="predict",
                label=-1,
                score=float(result.scores[i]),
                anomaly_map=amap,
                image=None,  # the report reads the photo again at thumbnail size: none is kept in memory
            )
        )


def _summary(
    checkpoint: Path,
    predictor: Predictor,
    category: str | None,
    thresholds: Thresholds,
    files_out: PredictionFiles,
    failed: list[tuple[str, str]],
) -> dict[str, Any]:
    return {
        "checkpoint": str(checkpoint),
        "backend": predictor.backend.name,
        "category": category,
        "image_threshold": thresholds.image.value,
        "image_threshold_note": thresholds.image.note,
        "pixel_threshold": thresholds.pixel.value,
        "pixel_threshold_note": thresholds.pixel.note,
        "predictions": files_out.rows,
        "rechecked_in_float32": files_out.rechecked,
        "failed": [{"path": p, "error": e} for p, e in failed],
    }


def _write_html(files_out: PredictionFiles, thresholds: Thresholds) -> None:
    from minimaxad.reporting.html import write_report as render

    render(
        files_out.path("report.html"),
        metrics=None,
        items=files_out.report_items,
        image_threshold=thresholds.image.value,
        pixel_threshold=thresholds.pixel.value,
        threshold_notes={"image": thresholds.image.note, "pixel": thresholds.pixel.note},
        title="minimaxad predictions",
    )


def _echo_results(
    echo: Callable[[str], None], files_out: PredictionFiles, thresholds: Thresholds, failed: list[tuple[str, str]]
) -> None:
    rows = files_out.rows
    anomalous = sum(r["decision"] == "anomalous" for r in rows)
    echo(
        f"predicted {len(rows)} image(s): {anomalous} anomalous, {len(rows) - anomalous} normal "
        f"(image threshold {thresholds.image.value}: {thresholds.image.note}); "
        f"results in {files_out.output}"
    )
    if failed:
        echo(f"{len(failed)} input(s) could not be read and were skipped:")
        for path, error in failed:
            echo(f"  {path}: {error}")
