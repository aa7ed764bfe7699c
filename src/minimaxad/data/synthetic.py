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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

__all__ = [
    "CATEGORIES",
    "DEFECT_TYPES",
    "generate_highres_dataset",
    "generate_synthetic_dataset",
    "render_highres_sample",
    "render_sample",
]

CATEGORIES = ("weave", "grain", "washer")
DEFECT_TYPES = ("scratch", "spot", "hole", "foreign", "missing", "color")
_MARKER = ".minimaxad_synthetic.json"
_SPLIT_CODE = {"train": 1, "test": 2}
Size = Union[int, Tuple[int, int]]  # a square side, or (height, width)
Window = Tuple[slice, slice]  # (rows, columns) of a small defect's neighbourhood


# --------------------------------------------------------------------------- helpers


def _hw(size: Size) -> tuple[int, int]:
    """(height, width) of ``size``: an int (square) or a (height, width) pair."""
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _grid(size: Size) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates, float32 (H, W)."""
    h, w = _hw(size)
    return np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")


def _upsample(small: np.ndarray, size: Size) -> np.ndarray:
    """Bilinear upsampling of a (h, w) array to (size, size) or (H, W)."""
    h, w = small.shape
    out_h, out_w = _hw(size)
    ys = np.linspace(0, h - 1, out_h, dtype=np.float32)
    xs = np.linspace(0, w - 1, out_w, dtype=np.float32)
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = small[y0][:, x0]
    b = small[y0][:, x0 + 1]
    c = small[y0 + 1][:, x0]
    d = small[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _smooth_noise(rng: np.random.Generator, size: Size, cells: int) -> np.ndarray:
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
    h, w = support.shape
    inner = np.zeros_like(support, dtype=bool)
    inner[margin : h - margin, margin : w - margin] = True
    ys, xs = np.nonzero((support > 0.5) & inner)
    if len(ys) == 0:
        return h / 2.0, w / 2.0
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


def _lighting(rng: np.random.Generator, size: Size) -> np.ndarray:
    """(H, W, 3) multiplicative light: gradient, vignette, gain, colour cast."""
    y, x = _grid(size)
    h, w = _hw(size)
    side = max(h, w)
    phi = rng.uniform(0, 2 * np.pi)
    g = ((x - w / 2) * math.cos(phi) + (y - h / 2) * math.sin(phi)) / side
    r2 = ((x - w / 2) ** 2 + (y - h / 2) ** 2) / (side / 2) ** 2
    light = rng.uniform(0.85, 1.12) * (1 + rng.uniform(0.0, 0.35) * g - rng.uniform(0.0, 0.12) * r2)
    cast = 1 + rng.normal(0, 0.025, 3)
    return (light[..., None] * cast[None, None, :]).astype(np.float32)


def _weave(rng: np.random.Generator, size: Size, scale: Optional[float] = None) -> _Scene:
    y, x = _grid(size)
    h, w = _hw(size)
    scale = max(h, w) / 128.0 if scale is None else scale
    period = rng.uniform(7.0, 9.0) * scale
    theta = math.radians(rng.normal(0, 4))
    v, u = _rotate(y, x, theta, h / 2, w / 2)
    u = u / period + rng.uniform(0, 2)
    v = v / period + rng.uniform(0, 2)
    base_warp = np.array([0.78, 0.70, 0.55]) * (1 + rng.normal(0, 0.04, 3))
    base_weft = np.array([0.52, 0.58, 0.70]) * (1 + rng.normal(0, 0.04, 3))
    fibre = _upsample(rng.uniform(-1, 1, (h // 2 + 1, w // 2 + 1)).astype(np.float32), size)

    def render(missing: Optional[np.ndarray] = None, window: Optional[Window] = None) -> np.ndarray:
        # window: re-render only that part (a small defect), missing then has the window's shape
        u_, v_, fibre_ = (u, v, fibre) if window is None else (u[window], v[window], fibre[window])
        fu, fv = u_ - np.floor(u_), v_ - np.floor(v_)
        warp_h = np.sqrt(np.clip(1 - ((fu - 0.5) / 0.44) ** 2, 0, 1)) * (0.8 + 0.2 * np.sin(np.pi * fv))
        weft_h = np.sqrt(np.clip(1 - ((fv - 0.5) / 0.44) ** 2, 0, 1)) * (0.8 + 0.2 * np.sin(np.pi * fu))
        over = ((np.floor(u_) + np.floor(v_)) % 2) == 0
        if missing is not None:  # a missing warp thread: the weft (or the gap) shows instead
            warp_h = warp_h * (1 - missing)
            over = over & (missing < 0.5)
        h = np.where(over, warp_h, weft_h)
        col = np.where(over[..., None], base_warp, base_weft)
        shade = 0.3 + 0.7 * h + 0.06 * fibre_
        return (col * shade[..., None]).astype(np.float32)

    def thread_band(rng2: np.random.Generator, length_cells: float) -> np.ndarray:
        k = np.floor(rng2.uniform(u.min() + 2, u.max() - 2))
        v0 = rng2.uniform(v.min() + 1, v.max() - 1 - length_cells)
        inside_u = (u >= k) & (u < k + 1)
        inside_v = (v >= v0) & (v < v0 + length_cells)
        return (inside_u & inside_v).astype(np.float32)

    extras = {"render": render, "band": thread_band, "u": u, "v": v, "period": period}
    return _Scene(render(), np.ones((h, w), np.float32), None, extras)


def _grain(rng: np.random.Generator, size: Size, scale: Optional[float] = None) -> _Scene:
    y, x = _grid(size)
    h, w = _hw(size)
    side = max(h, w)
    scale = side / 128.0 if scale is None else scale
    theta = math.radians(rng.normal(0, 6))
    yy, xx = _rotate(y, x, theta, h / 2, w / 2)
    warp = _smooth_noise(rng, size, 4) * rng.uniform(4, 9) * scale + 0.3 * xx * rng.uniform(-0.15, 0.15)
    period = rng.uniform(9.0, 14.0) * scale
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (yy + warp) / period + rng.uniform(0, 2 * np.pi))
    rings = rings**1.6
    streak_line = rng.uniform(-1, 1, side * 2).astype(np.float32)
    idx = np.clip(((yy + warp * 0.5) * 2 + side).astype(int), 0, side * 2 - 1)
    streak = streak_line[idx] * 0.5 + _smooth_noise(rng, size, 16) * 0.5
    dark = np.array([0.42, 0.26, 0.14]) * (1 + rng.normal(0, 0.05, 3))
    light = np.array([0.80, 0.62, 0.42]) * (1 + rng.normal(0, 0.04, 3))
    t = np.clip(0.65 * rings + 0.12 * streak + 0.2, 0, 1)[..., None]
    image = (dark * t + light * (1 - t)).astype(np.float32)
    return _Scene(image, np.ones((h, w), np.float32), None, {"raw": light * 1.08})


def _washer(rng: np.random.Generator, size: Size, scale: Optional[float] = None) -> _Scene:
    y, x = _grid(size)
    h, w = _hw(size)
    s = min(h, w)  # the part fits the shorter side
    cy, cx = h / 2 + rng.uniform(-0.06, 0.06) * s, w / 2 + rng.uniform(-0.06, 0.06) * s
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
        + 0.03 * np.sin(2 * np.pi * r / (2.2 * s / 128 if scale is None else 2.2 * scale))
        - 0.10 * np.clip(1 - np.minimum(r_out - r, r - r_in) / (0.03 * s), 0, 1)
    )
    metal_rgb = metal[..., None] * np.array([1.0, 0.99, 0.96]) * (1 + rng.normal(0, 0.02, 3))
    bg_col = np.array([0.22, 0.28, 0.34]) * (1 + rng.normal(0, 0.05, 3))
    bg_tex = 1 + 0.05 * _smooth_noise(rng, (h, w), 8)
    sy, sx = rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.5)
    r_sh = np.sqrt((y - cy - sy) ** 2 + (x - cx - sx) ** 2)
    shadow = np.clip((r_out + 3 - r_sh) / 6, 0, 1) * np.clip((r_sh - r_in + 3) / 6, 0, 1)
    background = (bg_col * (bg_tex * (1 - 0.45 * shadow))[..., None]).astype(np.float32)
    image = (body[..., None] * metal_rgb + (1 - body[..., None]) * background).astype(np.float32)
    return _Scene(image, body, background, {"centre": (cy, cx), "r_out": r_out, "r_in": r_in})


_RENDERERS: dict[str, Callable[..., _Scene]] = {"weave": _weave, "grain": _grain, "washer": _washer}


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


def _clear_categories(root: Path, categories: Sequence[str], overwrite: bool) -> None:
    """Remove the category folders about to be written, only with ``overwrite`` and only if this
    module wrote them (they hold its marker file)."""
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


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, compress_level=1)  # fast; the files are temporary test data


def _check_generation_arguments(
    categories: Sequence[str],
    defects: Sequence[str],
    counts: tuple[int, int, int],
    subtle_fraction: float,
    clear_strength: tuple[float, float],
) -> None:
    """The checks both generators make before anything is deleted or written."""
    unknown = [c for c in categories if c not in _RENDERERS]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; expected some of {', '.join(_RENDERERS)}")
    bad_defects = [d for d in defects if d not in DEFECT_TYPES]
    if bad_defects:
        raise ValueError(f"unknown defects {bad_defects}; expected some of {', '.join(DEFECT_TYPES)}")
    if min(counts) < 0:
        raise ValueError("counts must be >= 0")
    if not 0.0 <= subtle_fraction <= 1.0:
        raise ValueError(f"subtle_fraction must be in [0, 1], got {subtle_fraction}")
    if not 0.0 < clear_strength[0] <= clear_strength[1] <= 1.0:
        raise ValueError(f"clear_strength must be a range (low, high) with 0 < low <= high <= 1, got {clear_strength}")


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
    if image_size < 32:
        raise ValueError("counts must be >= 0 and image_size >= 32")
    _check_generation_arguments(
        categories, defects, (n_train, n_test_good, n_test_defect), subtle_fraction, clear_strength
    )
    _clear_categories(root, categories, overwrite)
    save = _save
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


# --------------------------------------------------------------------------- high resolution, small defects

_HIGHRES_STREAM = 7681  # the high-resolution photos draw from streams of their own
_UNIT_ANGLES = np.linspace(0, 2 * np.pi, 721)[:-1]


def _photo_shape(image_size: Union[int, Tuple[int, int]]) -> tuple[int, int]:
    """(height, width) of an int side or a (width, height) pair (PIL's order)."""
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    width, height = image_size
    return int(height), int(width)


def _defect_extent_range(shape: tuple[int, int], defect_size: tuple[float, float]) -> tuple[int, int]:
    """The smallest and largest defect extent in pixels that ``defect_size`` allows."""
    side = max(shape)
    return math.ceil(defect_size[0] * side - 1e-9), math.floor(defect_size[1] * side + 1e-9)


def _mask_extent(mask: np.ndarray) -> int:
    """The longer side of the bounding box of ``mask``'s true pixels (0 when empty)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return 0
    return int(max(rows[-1] - rows[0], cols[-1] - cols[0])) + 1


class _Window:
    """The neighbourhood of a small defect: its slices and float32 pixel coordinates (as ``_grid``)."""

    def __init__(self, shape: tuple[int, int], cy: float, cx: float, half: float):
        h, w = shape
        r0, r1 = max(0, int(math.floor(cy - half))), min(h, int(math.ceil(cy + half)) + 1)
        c0, c1 = max(0, int(math.floor(cx - half))), min(w, int(math.ceil(cx + half)) + 1)
        self.slices = (slice(r0, r1), slice(c0, c1))
        self.y, self.x = np.meshgrid(
            np.arange(r0, r1, dtype=np.float32), np.arange(c0, c1, dtype=np.float32), indexing="ij"
        )


def _small_blob(
    win: _Window, cy: float, cx: float, extent: float, rng: np.random.Generator, wobble: float
) -> np.ndarray:
    """Coverage of an irregular blob (``_blob``'s shape) whose bounding box is about ``extent`` px."""
    harmonics = [(wobble / k * rng.uniform(-1, 1), k, rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]

    def relative(theta: np.ndarray) -> np.ndarray:
        return 1 + sum(a * np.cos(k * theta + p) for a, k, p in harmonics)

    unit = relative(_UNIT_ANGLES)
    unit_extent = max(np.ptp(unit * np.sin(_UNIT_ANGLES)), np.ptp(unit * np.cos(_UNIT_ANGLES)))
    # coverage > 0 reaches half a pixel past the outline: the pixels touched span radius * unit + 1
    radius = max(0.5, (extent - 1.0) / unit_extent)
    dy, dx = win.y - cy, win.x - cx
    return _coverage(radius * relative(np.arctan2(dy, dx)) - np.sqrt(dy * dy + dx * dx))


def _small_curve(
    win: _Window, cy: float, cx: float, extent: float, width: float, rng: np.random.Generator, bend: float
) -> np.ndarray:
    """Coverage of a bent line (a quadratic Bezier) ``width`` px wide whose bounding box is about ``extent`` px."""
    angle = rng.uniform(0, np.pi)
    half = np.array([math.sin(angle), math.cos(angle)]) / 2
    p1 = np.array([half[1], -half[0]]) * 2 * rng.uniform(-bend, bend)
    t = np.linspace(0, 1, 24)[:, None]
    points = (1 - t) ** 2 * -half + 2 * (1 - t) * t * p1 + t**2 * half
    points -= (points.max(0) + points.min(0)) / 2
    span = max(np.ptp(points, axis=0).max(), 1e-6)
    points = points * max(0.0, extent - width - 1.0) / span + np.array([cy, cx])
    best = np.full(win.y.shape, np.inf, dtype=np.float32)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        vy, vx = y1 - y0, x1 - x0
        length2 = vy * vy + vx * vx + 1e-9
        t_ = np.clip(((win.y - y0) * vy + (win.x - x0) * vx) / length2, 0.0, 1.0)
        np.minimum(best, np.hypot(win.y - (y0 + t_ * vy), win.x - (x0 + t_ * vx)), out=best)
    return _coverage(width / 2.0 - best)


def _apply_small_defect(
    scene: _Scene, defect: str, rng: np.random.Generator, extent: float, strength: float
) -> tuple[tuple[slice, slice], np.ndarray]:
    """One defect about ``extent`` px across: the window it lies in and the image there (float32,
    before noise). Everything is computed in the window only: a large photo stays fast."""
    shape = scene.support.shape
    half = extent / 2 + 3  # the shapes stay inside extent / 2 + 1 of their centre
    if defect == "missing" and "band" in scene.extras:  # a missing bit of warp: centred where the warp is on top
        u, v = scene.extras["u"], scene.extras["v"]
        on_top = (((np.floor(u) + np.floor(v)) % 2) == 0).astype(np.float32)
        cy, cx = _pick_point(rng, on_top, int(math.ceil(half)) + 1)
    elif defect == "missing" and scene.background is not None:  # on the rim, where a piece can break off
        ccy, ccx = scene.extras["centre"]
        ang = rng.uniform(0, 2 * np.pi)
        reach = scene.extras["r_out"] - rng.uniform(0.1, 0.35) * extent
        cy, cx = ccy + reach * math.sin(ang), ccx + reach * math.cos(ang)
    else:
        cy, cx = _pick_point(rng, scene.support, int(math.ceil(half)) + 1)
    win = _Window(shape, cy, cx, half)
    img = scene.image[win.slices].copy()
    support = scene.support[win.slices]

    if defect == "scratch":
        width = max(1.2, rng.uniform(0.06, 0.14) * extent)
        a = _small_curve(win, cy, cx, extent, width, rng, bend=0.3) * support
        delta = (0.08 + 0.35 * strength) * (1 if rng.uniform() < 0.6 else -1)
        img = img + a[..., None] * delta
    elif defect == "spot":
        a = _small_blob(win, cy, cx, extent, rng, 0.25) * support
        stain = rng.uniform(0.05, 0.35, 3)
        mix = 0.25 + 0.6 * strength
        img = img * (1 - a[..., None] * mix) + a[..., None] * mix * stain
    elif defect == "hole":
        if scene.background is not None:  # through the part: the background shows
            a = _small_blob(win, cy, cx, extent, rng, 0.1) * support
            img = img * (1 - a[..., None]) + a[..., None] * scene.background[win.slices]
        else:  # a dark hole with a lighter rim
            a = _small_blob(win, cy, cx, max(2.0, 0.75 * extent), rng, 0.15)
            rim = np.clip(_small_blob(win, cy, cx, extent, rng, 0.0) - a, 0, 1)
            img = img * (1 - a[..., None]) + a[..., None] * 0.04
            img = img + rim[..., None] * 0.12 * strength
    elif defect == "foreign":
        if rng.uniform() < 0.5:  # a fibre / hair lying on the surface
            a = _small_curve(win, cy, cx, extent, max(1.0, rng.uniform(0.05, 0.1) * extent), rng, bend=0.6)
        else:  # a chip of foreign material with its own speckle
            a = _small_blob(win, cy, cx, extent, rng, 0.5)
        colour = rng.uniform(0, 1, 3)
        speckle = 1 + 0.15 * rng.uniform(-1, 1, (*a.shape, 1))
        opacity = 0.45 + 0.55 * strength
        img = img * (1 - a[..., None] * opacity) + a[..., None] * opacity * colour * speckle
    elif defect == "missing":
        if "band" in scene.extras:  # a stretch of warp thread missing: the weft shows through
            u, v = scene.extras["u"][win.slices], scene.extras["v"][win.slices]
            period = scene.extras["period"]
            iy, ix = int(round(cy)) - win.slices[0].start, int(round(cx)) - win.slices[1].start
            iy, ix = min(max(iy, 0), u.shape[0] - 1), min(max(ix, 0), u.shape[1] - 1)
            reach = rng.uniform(0.3, 0.5) * (extent - 1)  # along the thread and across it
            band = (
                (np.floor(u) == np.floor(u[iy, ix]))
                & (np.abs(u - u[iy, ix]) * period <= reach)
                & (np.abs(v - v[iy, ix]) * period <= reach)
            )
            img = scene.extras["render"](band.astype(np.float32), win.slices)
        elif scene.background is not None:  # a piece broken off the rim
            a = _small_blob(win, cy, cx, extent, rng, 0.35) * support
            img = img * (1 - a[..., None]) + a[..., None] * scene.background[win.slices]
        else:  # a chipped-off piece: bare, lighter wood without grain, dark edge
            a = _small_blob(win, cy, cx, max(2.0, 0.8 * extent), rng, 0.45)
            edge = np.clip(_small_blob(win, cy, cx, extent, rng, 0.0) - a, 0, 1)
            raw = scene.extras["raw"] * (0.9 + 0.15 * strength)
            img = img * (1 - a[..., None]) + a[..., None] * raw
            img = img * (1 - 0.25 * edge[..., None])
    elif defect == "color":
        a = _small_blob(win, cy, cx, extent, rng, 0.4) * support
        direction = rng.normal(0, 1, 3)
        direction /= np.linalg.norm(direction) + 1e-9
        delta = (0.03 + 0.12 * strength) * direction
        img = img * (1 + a[..., None] * delta / 0.6)
    else:
        raise ValueError(f"unknown defect {defect!r}; expected one of {', '.join(DEFECT_TYPES)}")
    return win.slices, img.astype(np.float32)


def _check_highres_arguments(
    category: str, shape: tuple[int, int], defect_size: tuple[float, float], texture_scale: Optional[float]
) -> None:
    if category not in _RENDERERS:
        raise ValueError(f"unknown synthetic category {category!r}; expected one of {', '.join(_RENDERERS)}")
    if min(shape) < 64:
        raise ValueError(f"image_size {shape[1]} x {shape[0]} (width x height): each side must be >= 64")
    if not 0.0 < defect_size[0] <= defect_size[1] <= 0.25:
        raise ValueError(f"defect_size must be a range (low, high) with 0 < low <= high <= 0.25, got {defect_size}")
    low, high = _defect_extent_range(shape, defect_size)
    if low < 2 or low > high:
        raise ValueError(
            f"defect_size {defect_size} allows no defect of 2 px or more between {defect_size[0]} and "
            f"{defect_size[1]} of the {max(shape)} px side: use a larger range or image"
        )
    if texture_scale is not None and texture_scale <= 0:
        raise ValueError(f"texture_scale must be > 0, got {texture_scale}")


def render_highres_sample(
    category: str,
    seed: int = 0,
    index: int = 0,
    defect: Optional[str] = None,
    image_size: Union[int, Tuple[int, int]] = 768,
    defect_size: tuple[float, float] = (0.01, 0.03),
    split: str = "test",
    subtle_fraction: float = 0.35,
    clear_strength: tuple[float, float] = (0.25, 1.0),
    texture_scale: Optional[float] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One large photo (H, W, 3) uint8 with at most one small defect, and its mask (H, W) uint8 (0/255).

    ``image_size``: a side, or (width, height) as PIL gives it. ``defect_size``: the range the
    defect's extent is drawn from, as a fraction of the photo's longer side; the extent is the
    longer side of the mask's bounding box, and the mask (every pixel whose stored value differs
    from the defect-free photo) always falls in the range. ``texture_scale``: how coarse the
    textures are (thread and ring periods; 1 = the 128 px set's); None: longer side / 256, so the
    photo resized to 256 px looks like a small synthetic photo, with defects of 1-3% of its side.
    ``subtle_fraction`` and ``clear_strength`` set the contrast as in :func:`render_sample` (the
    size comes from ``defect_size`` alone).
    """
    shape = _photo_shape(image_size)
    _check_highres_arguments(category, shape, defect_size, texture_scale)
    scale = max(shape) / 256.0 if texture_scale is None else texture_scale
    rng = np.random.default_rng([seed, zlib.crc32(category.encode()), _SPLIT_CODE[split], index, _HIGHRES_STREAM])
    scene = _RENDERERS[category](rng, shape, scale)
    light = _lighting(rng, shape)
    sigma = np.float32(rng.uniform(0.006, 0.018))
    noise = rng.standard_normal((*shape, 3), dtype=np.float32) * sigma  # float32 draws: twice as fast
    clean = _quantise(scene.image, light, noise)
    mask = np.zeros(shape, np.uint8)
    if defect is None:
        return clean, mask
    low, high = _defect_extent_range(shape, defect_size)
    for _ in range(100):  # redraw until the visible part of the defect has an extent in the range
        clear = rng.uniform() < 1.0 - subtle_fraction
        strength = rng.uniform(*clear_strength) if clear else rng.uniform(0.08, 0.3)
        extent = rng.uniform(low, high + 1)
        window, img = _apply_small_defect(scene, defect, rng, extent, strength)
        bad = _quantise(img, light[window], noise[window])
        changed = np.any(bad != clean[window], axis=-1)
        if changed.sum() >= 4 and low <= _mask_extent(changed) <= high:
            image = clean.copy()
            image[window] = bad
            mask[window] = changed.astype(np.uint8) * 255
            return image, mask
    raise RuntimeError(
        f"could not draw a {defect!r} defect of {low}-{high} px for {category} #{index}"
    )  # pragma: no cover


def generate_highres_dataset(
    root: Union[str, Path],
    categories: Sequence[str] = CATEGORIES,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect: int = 2,
    image_size: Union[int, Tuple[int, int]] = 768,
    seed: int = 0,
    defect_size: tuple[float, float] = (0.01, 0.03),
    defects: Sequence[str] = DEFECT_TYPES,
    overwrite: bool = False,
    subtle_fraction: float = 0.35,
    clear_strength: tuple[float, float] = (0.25, 1.0),
    texture_scale: Optional[float] = None,
) -> Path:
    """Write an MVTec-layout set of large photos with small defects and return ``root``.

    The layout, file names, overwrite rules and per-image random streams are those of
    :func:`generate_synthetic_dataset`; the photos are :func:`render_highres_sample`'s:
    ``image_size`` a side or (width, height), each defect's extent (the longer side of its mask's
    bounding box) drawn in ``defect_size`` (a fraction of the photo's longer side: the default
    1-3% is 8-23 px in a 768 px photo). Made to compare whole-photo and tiled inference, where a
    defect that small nearly vanishes when the photo is resized to the network's input.
    """
    root = Path(root)
    _check_generation_arguments(
        categories, defects, (n_train, n_test_good, n_test_defect), subtle_fraction, clear_strength
    )
    for cat in categories:  # fail before anything is deleted or written
        _check_highres_arguments(cat, _photo_shape(image_size), defect_size, texture_scale)
    _clear_categories(root, categories, overwrite)
    options = dict(
        image_size=image_size,
        defect_size=defect_size,
        subtle_fraction=subtle_fraction,
        clear_strength=clear_strength,
        texture_scale=texture_scale,
    )
    # PNG encoding of a noisy 768 px photo costs about as much as rendering it: one thread writes
    # while the next photo renders (both release the GIL); a short queue bounds the memory
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=1) as writer:

        def save(arr: np.ndarray, path: Path) -> None:
            while len(pending) >= 4:
                pending.popleft().result()  # re-raises a failed write here
            pending.append(writer.submit(_save, arr, path))

        for cat in categories:
            cat_dir = root / cat
            for i in range(n_train):
                image = render_highres_sample(cat, seed, i, None, split="train", **options)[0]
                save(image, cat_dir / "train" / "good" / f"{i:03d}.png")
            for i in range(n_test_good):
                save(
                    render_highres_sample(cat, seed, i, None, **options)[0], cat_dir / "test" / "good" / f"{i:03d}.png"
                )
            for d in defects:
                for i in range(n_test_defect):
                    index = 10_000 * (1 + DEFECT_TYPES.index(d)) + i  # as generate_synthetic_dataset
                    image, mask = render_highres_sample(cat, seed, index, d, **options)
                    save(image, cat_dir / "test" / d / f"{i:03d}.png")
                    save(mask, cat_dir / "ground_truth" / d / f"{i:03d}_mask.png")
        while pending:
            pending.popleft().result()
    for cat in categories:  # the marker last: a folder with it holds a complete set
        cat_dir = root / cat
        height, width = _photo_shape(image_size)
        params = dict(
            kind="highres",
            seed=seed,
            width=width,
            height=height,
            n_train=n_train,
            n_test_good=n_test_good,
            n_test_defect=n_test_defect,
            defects=list(defects),
            defect_size=list(defect_size),
            subtle_fraction=subtle_fraction,
            clear_strength=list(clear_strength),
            texture_scale=texture_scale,
        )
        (cat_dir / _MARKER).write_text(json.dumps(params, indent=1))
    return root
