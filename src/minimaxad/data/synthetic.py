"""A synthetic anomaly-detection dataset in MVTec layout, numpy only, deterministic.

Three default categories with real within-class variety:

* ``weave``  - a woven fabric texture (thread period, orientation, phase, yarn colours vary)
* ``grain``  - a wood-grain texture (ring period, warp field, fibre streaks, hue vary)
* ``washer`` - a round machined part with six holes and a notch on a background (position,
  rotation, size, brushed-metal highlight and drop shadow vary)

Every image also gets a random lighting gradient, gain, colour cast and sensor noise.
Defects: ``scratch``, ``spot``, ``hole``, ``foreign`` (fibre or chip of foreign
material), ``missing`` (missing thread / chipped-off piece / broken rim) and ``color``
(discolouration). Their strength is drawn per image; about a third are subtle (low
contrast, a few pixels), so a detector does not reach 100%.

Masks are exact: the defect is applied to the rendered image before the (identical) noise,
and the mask is every pixel whose stored 8-bit value differs from the defect-free render.
Each image has its own random stream ``(seed, category, split, index)``: changing the
counts does not change the images already there.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

__all__ = ["CATEGORIES", "DEFECT_TYPES", "generate_synthetic_dataset", "render_sample"]

CATEGORIES = ("weave", "grain", "washer")
DEFECT_TYPES = ("scratch", "spot", "hole", "foreign", "missing", "color")
_MARKER = ".minimaxad_synthetic.json"
_SPLIT_CODE = {"train": 1, "test": 2}


# --------------------------------------------------------------------------- helpers


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates, float32 (S, S)."""
    c = np.arange(size, dtype=np.float32)
    return np.meshgrid(c, c, indexing="ij")


def _upsample(small: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a (h, w) array to (size, size)."""
    h, w = small.shape
    ys = np.linspace(0, h - 1, size, dtype=np.float32)
    xs = np.linspace(0, w - 1, size, dtype=np.float32)
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = small[y0][:, x0]
    b = small[y0][:, x0 + 1]
    c = small[y0 + 1][:, x0]
    d = small[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a (cells+1)^2 grid, bilinearly upsampled."""
    return _upsample(rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32), size)


def _rotate(y: np.ndarray, x: np.ndarray, angle: float, cy: float, cx: float) -> tuple[np.ndarray, np.ndarray]:
    ca, sa = math.cos(angle), math.sin(angle)
    dy, dx = y - cy, x - cx
    return dy * ca - dx * sa, dy * sa + dx * ca


def _coverage(signed_inside: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (positive inside), 1 px ramp."""
    return np.clip(signed_inside + 0.5, 0.0, 1.0).astype(np.float32)


def _blob(size: int, cy: float, cx: float, radius: float, rng: np.random.Generator, wobble: float = 0.25) -> np.ndarray:
    """Coverage of an irregular round blob (radius modulated by a few angular harmonics)."""
    y, x = _grid(size)
    dy, dx = y - cy, x - cx
    r = np.sqrt(dy * dy + dx * dx)
    theta = np.arctan2(dy, dx)
    rad = np.full_like(r, radius)
    for k in (2, 3, 5):
        rad += radius * wobble / k * rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return _coverage(rad - r)


def _curve(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a polyline of the given width. points: (n, 2) as (y, x)."""
    y, x = _grid(size)
    best = np.full((size, size), np.inf, dtype=np.float32)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        vy, vx = y1 - y0, x1 - x0
        length2 = vy * vy + vx * vx + 1e-9
        t = np.clip(((y - y0) * vy + (x - x0) * vx) / length2, 0.0, 1.0)
        d = np.hypot(y - (y0 + t * vy), x - (x0 + t * vx))
        np.minimum(best, d, out=best)
    return _coverage(width / 2.0 - best)


def _bezier(rng: np.random.Generator, size: int, length: float, centre: tuple[float, float], bend: float) -> np.ndarray:
    """A quadratic Bezier of about ``length`` px around ``centre``: (24, 2) points (y, x)."""
    angle = rng.uniform(0, np.pi)
    half = np.array([math.sin(angle), math.cos(angle)]) * length / 2
    c = np.asarray(centre)
    p0, p2 = c - half, c + half
    normal = np.array([half[1], -half[0]]) / (np.linalg.norm(half) + 1e-9)
    p1 = c + normal * rng.uniform(-bend, bend) * length
    t = np.linspace(0, 1, 24)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _pick_point(rng: np.random.Generator, support: np.ndarray, margin: int) -> tuple[float, float]:
    """A random pixel (y, x) where ``support`` > 0.5, away from the border."""
    s = support.shape[0]
    inner = np.zeros_like(support, dtype=bool)
    inner[margin : s - margin, margin : s - margin] = True
    ys, xs = np.nonzero((support > 0.5) & inner)
    if len(ys) == 0:
        return s / 2.0, s / 2.0
    k = int(rng.integers(len(ys)))
    return float(ys[k]) + rng.uniform(-0.5, 0.5), float(xs[k]) + rng.uniform(-0.5, 0.5)


# --------------------------------------------------------------------------- categories


class _Scene:
    """A rendered defect-free image plus what the defects need to know about it."""

    def __init__(self, image: np.ndarray, support: np.ndarray, background: Optional[np.ndarray], extras: dict):
        self.image = image  # (S, S, 3) float32, lit, before noise
        self.support = support  # (S, S) float32: where the product is (1 for textures)
        self.background = background  # (S, S, 3) what a hole reveals (objects), else None
        self.extras = extras  # category-specific re-render hooks


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) multiplicative light: gradient, vignette, gain, colour cast."""
    y, x = _grid(size)
    phi = rng.uniform(0, 2 * np.pi)
    g = ((x - size / 2) * math.cos(phi) + (y - size / 2) * math.sin(phi)) / size
    r2 = ((x - size / 2) ** 2 + (y - size / 2) ** 2) / (size / 2) ** 2
    light = rng.uniform(0.85, 1.12) * (1 + rng.uniform(0.0, 0.35) * g - rng.uniform(0.0, 0.12) * r2)
    cast = 1 + rng.normal(0, 0.025, 3)
    return (light[..., None] * cast[None, None, :]).astype(np.float32)


def _weave(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    scale = size / 128.0
    period = rng.uniform(7.0, 9.0) * scale
    theta = math.radians(rng.normal(0, 4))
    v, u = _rotate(y, x, theta, size / 2, size / 2)
    u = u / period + rng.uniform(0, 2)
    v = v / period + rng.uniform(0, 2)
    base_warp = np.array([0.78, 0.70, 0.55]) * (1 + rng.normal(0, 0.04, 3))
    base_weft = np.array([0.52, 0.58, 0.70]) * (1 + rng.normal(0, 0.04, 3))
    fibre = _upsample(rng.uniform(-1, 1, (size // 2 + 1, size // 2 + 1)).astype(np.float32), size)

    def render(missing: Optional[np.ndarray] = None) -> np.ndarray:
        fu, fv = u - np.floor(u), v - np.floor(v)
        warp_h = np.sqrt(np.clip(1 - ((fu - 0.5) / 0.44) ** 2, 0, 1)) * (0.8 + 0.2 * np.sin(np.pi * fv))
        weft_h = np.sqrt(np.clip(1 - ((fv - 0.5) / 0.44) ** 2, 0, 1)) * (0.8 + 0.2 * np.sin(np.pi * fu))
        over = ((np.floor(u) + np.floor(v)) % 2) == 0
        if missing is not None:  # a missing warp thread: the weft (or the gap) shows instead
            warp_h = warp_h * (1 - missing)
            over = over & (missing < 0.5)
        h = np.where(over, warp_h, weft_h)
        col = np.where(over[..., None], base_warp, base_weft)
        shade = 0.3 + 0.7 * h + 0.06 * fibre
        return (col * shade[..., None]).astype(np.float32)

    def thread_band(rng2: np.random.Generator, length_cells: float) -> np.ndarray:
        k = np.floor(rng2.uniform(u.min() + 2, u.max() - 2))
        v0 = rng2.uniform(v.min() + 1, v.max() - 1 - length_cells)
        inside_u = (u >= k) & (u < k + 1)
        inside_v = (v >= v0) & (v < v0 + length_cells)
        return (inside_u & inside_v).astype(np.float32)

    return _Scene(render(), np.ones((size, size), np.float32), None, {"render": render, "band": thread_band})


def _grain(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    scale = size / 128.0
    theta = math.radians(rng.normal(0, 6))
    yy, xx = _rotate(y, x, theta, size / 2, size / 2)
    warp = _smooth_noise(rng, size, 4) * rng.uniform(4, 9) * scale + 0.3 * xx * rng.uniform(-0.15, 0.15)
    period = rng.uniform(9.0, 14.0) * scale
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (yy + warp) / period + rng.uniform(0, 2 * np.pi))
    rings = rings**1.6
    streak_line = rng.uniform(-1, 1, size * 2).astype(np.float32)
    idx = np.clip(((yy + warp * 0.5) * 2 + size).astype(int), 0, size * 2 - 1)
    streak = streak_line[idx] * 0.5 + _smooth_noise(rng, size, 16) * 0.5
    dark = np.array([0.42, 0.26, 0.14]) * (1 + rng.normal(0, 0.05, 3))
    light = np.array([0.80, 0.62, 0.42]) * (1 + rng.normal(0, 0.04, 3))
    t = np.clip(0.65 * rings + 0.12 * streak + 0.2, 0, 1)[..., None]
    image = (dark * t + light * (1 - t)).astype(np.float32)
    return _Scene(image, np.ones((size, size), np.float32), None, {"raw": light * 1.08})


def _washer(rng: np.random.Generator, size: int) -> _Scene:
    y, x = _grid(size)
    s = size
    cy, cx = s / 2 + rng.uniform(-0.06, 0.06) * s, s / 2 + rng.uniform(-0.06, 0.06) * s
    phi = rng.uniform(0, 2 * np.pi)
    r_out = 0.34 * s * rng.uniform(0.96, 1.04)
    r_in = 0.14 * s * rng.uniform(0.95, 1.05)
    dy, dx = y - cy, x - cx
    r = np.sqrt(dy * dy + dx * dx)
    theta = np.arctan2(dy, dx)
    body = _coverage(r_out - r) * _coverage(r - r_in)
    r_mid, r_hole = (r_out + r_in) / 2, 0.036 * s
    for k in range(6):
        a = phi + k * np.pi / 3
        hy, hx = cy + r_mid * math.sin(a), cx + r_mid * math.cos(a)
        body *= _coverage(np.sqrt((y - hy) ** 2 + (x - hx) ** 2) - r_hole)
    # A notch in the rim at angle phi + 30 deg, so the rotation is visible.
    ry, rx = _rotate(y, x, -(phi + np.pi / 6), cy, cx)
    notch = _coverage(np.minimum(0.03 * s - np.abs(ry), rx - (r_out - 0.05 * s)))
    body *= 1 - notch

    light_angle = rng.uniform(0, 2 * np.pi)
    metal = (
        0.62
        + 0.16 * np.cos(2 * (theta - light_angle))
        + 0.03 * np.sin(2 * np.pi * r / (2.2 * s / 128))
        - 0.10 * np.clip(1 - np.minimum(r_out - r, r - r_in) / (0.03 * s), 0, 1)
    )
    metal_rgb = metal[..., None] * np.array([1.0, 0.99, 0.96]) * (1 + rng.normal(0, 0.02, 3))
    bg_col = np.array([0.22, 0.28, 0.34]) * (1 + rng.normal(0, 0.05, 3))
    bg_tex = 1 + 0.05 * _smooth_noise(rng, s, 8)
    sy, sx = rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.5)
    r_sh = np.sqrt((y - cy - sy) ** 2 + (x - cx - sx) ** 2)
    shadow = np.clip((r_out + 3 - r_sh) / 6, 0, 1) * np.clip((r_sh - r_in + 3) / 6, 0, 1)
    background = (bg_col * (bg_tex * (1 - 0.45 * shadow))[..., None]).astype(np.float32)
    image = (body[..., None] * metal_rgb + (1 - body[..., None]) * background).astype(np.float32)
    return _Scene(image, body, background, {"centre": (cy, cx), "r_out": r_out, "r_in": r_in})


_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Scene]] = {
    "weave": _weave,
    "grain": _grain,
    "washer": _washer,
}


# --------------------------------------------------------------------------- defects


def _apply_defect(
    scene: _Scene,
    defect: str,
    rng: np.random.Generator,
    size: int,
    subtle_fraction: float = 0.35,
    clear_strength: tuple[float, float] = (0.25, 1.0),
) -> np.ndarray:
    """The scene's image with one defect (float32, before noise); ``subtle_fraction`` of the
    defects are drawn faint (strength 0.08-0.3), the others clear (``clear_strength``, 0.25-1.0)."""
    img = scene.image.copy()
    k = size / 128.0
    clear = rng.uniform() < 1.0 - subtle_fraction  # the same draws whatever the fraction: images stay aligned
    strength = rng.uniform(*clear_strength) if clear else rng.uniform(0.08, 0.3)
    support = scene.support
    margin = int(6 * k)
    cy, cx = _pick_point(rng, support, margin)

    if defect == "scratch":
        pts = _bezier(rng, size, rng.uniform(0.12, 0.4) * size, (cy, cx), bend=0.3)
        a = _curve(size, pts, rng.uniform(0.8, 1.8) * k) * support
        delta = (0.08 + 0.35 * strength) * (1 if rng.uniform() < 0.6 else -1)
        img = img + a[..., None] * delta
    elif defect == "spot":
        a = _blob(size, cy, cx, (1.2 + 4.0 * strength) * k, rng) * support
        stain = rng.uniform(0.05, 0.35, 3)
        mix = 0.25 + 0.6 * strength
        img = img * (1 - a[..., None] * mix) + a[..., None] * mix * stain
    elif defect == "hole":
        radius = (2.0 + 4.5 * strength) * k
        if scene.background is not None:  # through the part: the background shows
            radius = min(radius, max(1.5, (scene.extras["r_out"] - scene.extras["r_in"]) / 2 - 1))
            a = _blob(size, cy, cx, radius, rng, wobble=0.1) * support
            img = img * (1 - a[..., None]) + a[..., None] * scene.background
        else:
            a = _blob(size, cy, cx, radius, rng, wobble=0.15)
            rim = np.clip(_blob(size, cy, cx, radius + 1.2 * k, rng, wobble=0.0) - a, 0, 1)
            img = img * (1 - a[..., None]) + a[..., None] * 0.04
            img = img + rim[..., None] * 0.12 * strength
    elif defect == "foreign":
        if rng.uniform() < 0.5:  # a fibre / hair lying on the surface
            pts = _bezier(rng, size, rng.uniform(0.2, 0.5) * size, (cy, cx), bend=0.6)
            a = _curve(size, pts, rng.uniform(0.9, 1.6) * k)
        else:  # a chip of foreign material with its own speckle
            a = _blob(size, cy, cx, (2.0 + 4.0 * strength) * k, rng, wobble=0.5)
        colour = rng.uniform(0, 1, 3)
        speckle = 1 + 0.15 * rng.uniform(-1, 1, (size, size, 1))
        opacity = 0.45 + 0.55 * strength
        img = img * (1 - a[..., None] * opacity) + a[..., None] * opacity * colour * speckle
    elif defect == "missing":
        if "band" in scene.extras:  # a missing stretch of warp thread
            band = scene.extras["band"](rng, rng.uniform(1.5, 4.0))
            img = scene.extras["render"](band)
        elif scene.background is not None:  # a piece broken off the rim
            ccy, ccx = scene.extras["centre"]
            ang = rng.uniform(0, 2 * np.pi)
            reach = scene.extras["r_out"] + rng.uniform(0.0, 0.6) * (3 + 5 * strength) * k
            by, bx = ccy + reach * math.sin(ang), ccx + reach * math.cos(ang)
            a = _blob(size, by, bx, (3.0 + 5.0 * strength) * k, rng, wobble=0.35) * support
            img = img * (1 - a[..., None]) + a[..., None] * scene.background
        else:  # a chipped-off piece: bare, lighter wood without grain, dark edge
            a = _blob(size, cy, cx, (2.5 + 6.0 * strength) * k, rng, wobble=0.45)
            edge = np.clip(_blob(size, cy, cx, (3.5 + 6.0 * strength) * k, rng, wobble=0.0) - a, 0, 1)
            raw = scene.extras["raw"] * (0.9 + 0.15 * strength)
            img = img * (1 - a[..., None]) + a[..., None] * raw
            img = img * (1 - 0.25 * edge[..., None])
    elif defect == "color":
        a = _blob(size, cy, cx, (4.0 + 9.0 * strength) * k, rng, wobble=0.4) * support
        direction = rng.normal(0, 1, 3)
        direction /= np.linalg.norm(direction) + 1e-9
        delta = (0.03 + 0.12 * strength) * direction
        img = img * (1 + a[..., None] * delta / 0.6)
    else:
        raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(DEFECT_TYPES)}")
    return img.astype(np.float32)


def _quantise(img: np.ndarray, light: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(np.round((img * light + noise) * 255.0), 0, 255).astype(np.uint8)


def _rng_for(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode()), _SPLIT_CODE[split], index])


def render_sample(
    category: str,
    seed: int = 0,
    index: int = 0,
    defect: Optional[str] = None,
    image_size: int = 128,
    split: str = "test",
    subtle_fraction: float = 0.35,
    clear_strength: tuple[float, float] = (0.25, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """One image (S, S, 3) uint8 and its mask (S, S) uint8 (0/255; zeros when normal).

    The mask marks exactly the pixels whose value differs from the defect-free render.
    ``subtle_fraction``: the chance that the defect is drawn faint (0: every defect clear).
    ``clear_strength``: the range the strength (size, contrast) of a clear defect is drawn from.
    """
    if category not in _RENDERERS:
        raise ValueError(f"unknown synthetic category {category!r}; expected one of {', '.join(_RENDERERS)}")
    rng = _rng_for(seed, category, split, index)
    scene = _RENDERERS[category](rng, image_size)
    light = _lighting(rng, image_size)
    noise = rng.normal(0, rng.uniform(0.006, 0.018), (image_size, image_size, 3)).astype(np.float32)
    clean = _quantise(scene.image, light, noise)
    if defect is None:
        return clean, np.zeros((image_size, image_size), np.uint8)
    for _ in range(20):  # a defect too faint to change any pixel is drawn again
        bad = _quantise(_apply_defect(scene, defect, rng, image_size, subtle_fraction, clear_strength), light, noise)
        changed = np.any(bad != clean, axis=-1)
        if changed.sum() >= 4:
            return bad, changed.astype(np.uint8) * 255
    raise RuntimeError(f"could not draw a visible {defect!r} defect for {category} #{index}")  # pragma: no cover


def generate_synthetic_dataset(
    root: Union[str, Path],
    categories: Sequence[str] = CATEGORIES,
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_defect: int = 3,
    image_size: int = 128,
    seed: int = 0,
    defects: Sequence[str] = DEFECT_TYPES,
    overwrite: bool = False,
    subtle_fraction: float = 0.35,
    clear_strength: tuple[float, float] = (0.25, 1.0),
) -> Path:
    """Write an MVTec-layout dataset and return ``root``.

    ``<root>/<category>/train/good/000.png``, ``test/good/``, ``test/<defect>/`` and
    ``ground_truth/<defect>/000_mask.png``; ``n_test_defect`` images per defect type.
    ``subtle_fraction``: share of faint defects (a few pixels, low contrast); 0 draws every
    defect clearly visible. ``clear_strength``: the strength range of the clear defects (the
    demo draws them in the upper part).
    Readable with ``build_dataset("mvtec", root)``. A category folder that exists is
    replaced only with ``overwrite=True`` and only if this function wrote it.
    """
    root = Path(root)
    unknown = [c for c in categories if c not in _RENDERERS]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; expected some of {', '.join(_RENDERERS)}")
    bad_defects = [d for d in defects if d not in DEFECT_TYPES]
    if bad_defects:
        raise ValueError(f"unknown defects {bad_defects}; expected some of {', '.join(DEFECT_TYPES)}")
    if min(n_train, n_test_good, n_test_defect) < 0 or image_size < 32:
        raise ValueError("counts must be >= 0 and image_size >= 32")
    if not 0.0 <= subtle_fraction <= 1.0:
        raise ValueError(f"subtle_fraction must be in [0, 1], got {subtle_fraction}")
    if not 0.0 < clear_strength[0] <= clear_strength[1] <= 1.0:
        raise ValueError(f"clear_strength must be a range (low, high) with 0 < low <= high <= 1, got {clear_strength}")
    for cat in categories:
        cat_dir = root / cat
        if cat_dir.exists() and any(cat_dir.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{cat_dir} exists and is not empty; pass overwrite=True to replace it")
            if not (cat_dir / _MARKER).is_file():
                raise FileExistsError(
                    f"{cat_dir} was not written by generate_synthetic_dataset (no {_MARKER}); "
                    "refusing to delete it, choose another root"
                )
            shutil.rmtree(cat_dir)

    def save(arr: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, compress_level=1)

    for cat in categories:
        cat_dir = root / cat
        for i in range(n_train):
            save(render_sample(cat, seed, i, None, image_size, "train")[0], cat_dir / "train" / "good" / f"{i:03d}.png")
        for i in range(n_test_good):
            save(render_sample(cat, seed, i, None, image_size)[0], cat_dir / "test" / "good" / f"{i:03d}.png")
        for d in defects:
            for i in range(n_test_defect):
                # Each defect type has its own index range: counts do not shift other images.
                index = 10_000 * (1 + DEFECT_TYPES.index(d)) + i
                image, mask = render_sample(
                    cat, seed, index, d, image_size, subtle_fraction=subtle_fraction, clear_strength=clear_strength
                )
                save(image, cat_dir / "test" / d / f"{i:03d}.png")
                save(mask, cat_dir / "ground_truth" / d / f"{i:03d}_mask.png")
        params = dict(
            seed=seed,
            image_size=image_size,
            n_train=n_train,
            n_test_good=n_test_good,
            n_test_defect=n_test_defect,
            defects=list(defects),
            subtle_fraction=subtle_fraction,
            clear_strength=list(clear_strength),
        )
        (cat_dir / _MARKER).write_text(json.dumps(params, indent=1))
    return root
