"""Turn anomaly maps into pictures: colour maps, heatmap overlays, defect masks.

Only numpy and Pillow are used (no matplotlib, no torch), so this module can be
imported in light environments such as a report-only install.

Conventions
-----------
* Anomaly maps are 2-D float arrays ``(H, W)`` at the network resolution
  (e.g. 256x256). Every function that combines a map with a photo resizes the map
  *bilinearly* to the **original photo size**, never the other way around, so the
  result always has exactly the photo's size.
* Sizes passed to Pillow are ``(width, height)``; array shapes are ``(H, W)``.
* A pixel (or image) is called anomalous when its value is ``>= threshold``.
"""

from __future__ import annotations

import base64
import io
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "COLORMAPS",
    "get_colormap",
    "colorize",
    "resize_map",
    "heatmap_overlay",
    "defect_mask",
    "contour_overlay",
    "to_data_uri",
]

CmapLike = Union[str, np.ndarray]

# ---------------------------------------------------------------------------
# colour maps (256-entry uint8 LUTs built with numpy)
# ---------------------------------------------------------------------------


def _jet_lut() -> np.ndarray:
    """Matplotlib's ``jet`` (same piecewise-linear segment data)."""
    t = np.linspace(0.0, 1.0, 256)
    r = np.interp(t, [0.0, 0.35, 0.66, 0.89, 1.0], [0.0, 0.0, 1.0, 1.0, 0.5])
    g = np.interp(t, [0.0, 0.125, 0.375, 0.64, 0.91, 1.0], [0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    b = np.interp(t, [0.0, 0.11, 0.34, 0.65, 1.0], [0.5, 1.0, 1.0, 0.0, 0.0])
    return np.stack([r, g, b], axis=1)


def _poly_lut(coeffs: Sequence[Sequence[float]]) -> np.ndarray:
    """Evaluate a degree-6 polynomial fit (one per channel) at 256 points."""
    t = np.linspace(0.0, 1.0, 256)[:, None]
    c = np.asarray(coeffs, dtype=np.float64)  # (7, 3), c[k] multiplies t**k
    out = np.zeros((256, 3))
    for k in range(c.shape[0] - 1, -1, -1):  # Horner
        out = out * t + c[k]
    return out


# Polynomial fits of the matplotlib perceptual colour maps (viridis, inferno by
# N. Smith, S. van der Walt and E. Firing, CC0).
_VIRIDIS_COEFFS = (
    (0.2777273272234177, 0.005407344544966578, 0.3340998053353061),
    (0.1050930431085774, 1.404613529898575, 1.384590162594685),
    (-0.3308618287255563, 0.214847559468213, 0.09509516302823659),
    (-4.634230498983486, -5.799100973351585, -19.33244095627987),
    (6.228269936347081, 14.17993336680509, 56.69055260068105),
    (4.776384997670288, -13.74514537774601, -65.35303263337234),
    (-5.435455855934631, 4.645852612178535, 26.3124352495832),
)
_INFERNO_COEFFS = (
    (0.0002189403691192265, 0.001651004631001012, -0.01948089843709184),
    (0.1065134194856116, 0.5639564367884091, 3.932712388889277),
    (11.60249308247187, -3.972853965665698, -15.9423941062914),
    (-41.70399613139459, 17.43639888205313, 44.35414519872813),
    (77.162935699427, -33.40235894210092, -81.80730925738993),
    (-71.31942824499214, 32.62606426397723, 73.20951985803202),
    (25.13112622477341, -12.24266895238567, -23.07032500287172),
)


def _to_uint8(lut: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.clip(lut, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)


# Exact matplotlib colours at 0, 1/4, 1/2, 3/4 and 1 (LUT entries 0, 64, 128,
# 192, 255); the polynomial is corrected to pass through them (piecewise-linear
# residual); the whole LUT is then within a few 1/255 of the original.
_VIRIDIS_ANCHORS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
_INFERNO_ANCHORS = ((0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164))
_ANCHOR_IDX = (0, 64, 128, 192, 255)


def _anchored_poly_lut(coeffs: Sequence[Sequence[float]], anchors: Sequence[Sequence[int]]) -> np.ndarray:
    lut = _poly_lut(coeffs)
    idx = np.asarray(_ANCHOR_IDX)
    resid = np.asarray(anchors, dtype=np.float64) / 255.0 - lut[idx]
    pos = np.arange(256)
    for ch in range(3):
        lut[:, ch] += np.interp(pos, idx, resid[:, ch])
    return lut


COLORMAPS: dict[str, np.ndarray] = {
    "jet": _to_uint8(_jet_lut()),
    "viridis": _to_uint8(_anchored_poly_lut(_VIRIDIS_COEFFS, _VIRIDIS_ANCHORS)),
    "inferno": _to_uint8(_anchored_poly_lut(_INFERNO_COEFFS, _INFERNO_ANCHORS)),
    "gray": _to_uint8(np.repeat(np.linspace(0.0, 1.0, 256)[:, None], 3, axis=1)),
}
for _lut in COLORMAPS.values():
    _lut.setflags(write=False)
del _lut


def get_colormap(cmap: CmapLike = "jet") -> np.ndarray:
    """Return a ``(N, 3)`` uint8 LUT; ``cmap`` is a name (``jet``, ``viridis``,
    ``inferno``, ``gray``, with an optional ``_r`` suffix for reversed) or a LUT."""
    if isinstance(cmap, np.ndarray):
        lut = np.asarray(cmap)
        if lut.ndim != 2 or lut.shape[1] != 3 or lut.shape[0] < 2:
            raise ValueError(f"a colour LUT must have shape (N>=2, 3), got {lut.shape}")
        if lut.dtype != np.uint8:
            lut = _to_uint8(lut.astype(np.float64) / (255.0 if lut.max() > 1.0 else 1.0))
        return lut
    name = str(cmap).lower()
    reverse = name.endswith("_r")
    base = name[:-2] if reverse else name
    if base == "grey":
        base = "gray"
    if base not in COLORMAPS:
        raise ValueError(f"unknown colour map {cmap!r}; choose from {sorted(COLORMAPS)}")
    lut = COLORMAPS[base]
    return lut[::-1] if reverse else lut


def _as_2d(a: np.ndarray, what: str = "anomaly_map", dtype: type = np.float32) -> np.ndarray:
    """(H, W), or (1, H, W) / (1, 1, H, W) with leading singleton axes dropped."""
    arr = np.asarray(a, dtype=dtype)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (H, W), got shape {np.shape(a)}")
    return arr


def colorize(
    anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None, cmap: CmapLike = "jet"
) -> np.ndarray:
    """Map a 2-D float array to an ``(H, W, 3)`` uint8 RGB image.

    Values ``<= vmin`` get the first LUT colour and values ``>= vmax`` the last;
    NaN is treated as ``vmin``. ``vmin``/``vmax`` default to the map's finite
    min/max. Use a common range for maps that should be comparable.
    """
    a = _as_2d(anomaly_map, dtype=np.float64)
    lut = get_colormap(cmap)
    finite = a[np.isfinite(a)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 1.0
    vmin, vmax = float(vmin), float(vmax)
    span = vmax - vmin
    if not np.isfinite(span) or span <= 0:
        t = np.where(a >= vmax, 1.0, 0.0) if np.isfinite(vmax) else np.zeros_like(a)
    else:
        t = (a - vmin) / span
    t = np.nan_to_num(t, nan=0.0, posinf=1.0, neginf=0.0)
    idx = np.rint(np.clip(t, 0.0, 1.0) * (lut.shape[0] - 1)).astype(np.intp)
    return lut[idx]


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a 2-D float map to ``size = (width, height)``; float32 out."""
    a = _as_2d(anomaly_map)
    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive (width, height), got {size}")
    if a.shape == (h, w):
        return a.copy()
    a = np.nan_to_num(a, nan=0.0, posinf=np.finfo(np.float32).max, neginf=np.finfo(np.float32).min)
    img = Image.fromarray(np.ascontiguousarray(a))  # float32 -> mode "F"
    return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def heatmap_overlay(
    image: Image.Image,
    anomaly_map: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    cmap: CmapLike = "jet",
) -> Image.Image:
    """Blend the colourised anomaly map over the photo.

    The map (network resolution) is resized bilinearly to the photo's own size;
    the result is an RGB image of exactly ``image.size``. ``alpha`` is the weight
    of the heatmap (0 = photo only, 1 = heatmap only).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    photo = image.convert("RGB")
    heat = colorize(resize_map(anomaly_map, photo.size), vmin, vmax, cmap)
    return Image.blend(photo, Image.fromarray(heat), float(alpha))


def defect_mask(anomaly_map: np.ndarray, threshold: float, size: tuple[int, int] | None = None) -> Image.Image:
    """Binary mask (mode ``"L"``, values 0/255) of pixels with ``value >= threshold``.

    The map is first resized bilinearly to ``size = (width, height)`` (the original
    photo size; ``None`` keeps the map's size), then thresholded.
    """
    a = _as_2d(anomaly_map)
    if size is not None:
        a = resize_map(a, size)
    out = np.where(a >= np.float32(threshold), 255, 0).astype(np.uint8)
    return Image.fromarray(out)


def contour_overlay(
    image: Image.Image,
    anomaly_map: np.ndarray,
    threshold: float,
    color: tuple[int, int, int] = (255, 0, 0),
    width: int = 2,
) -> Image.Image:
    """Draw the outline of the region ``map >= threshold`` on the photo (RGB, photo size).

    ``width`` is the line thickness in photo pixels (inward from the region border
    plus outward growth for widths > 1).
    """
    photo = image.convert("RGB")
    mask = defect_mask(anomaly_map, threshold, photo.size)
    eroded = mask.filter(ImageFilter.MinFilter(3))
    m = np.asarray(mask) > 0
    edge = m & ~(np.asarray(eroded) > 0)
    # the image border counts as outside: regions touching it get a closed outline
    if m.any():
        edge[0, :] |= m[0, :]
        edge[-1, :] |= m[-1, :]
        edge[:, 0] |= m[:, 0]
        edge[:, -1] |= m[:, -1]
    width = max(1, int(width))
    if width > 1:
        k = 2 * (width - 1) + 1
        edge_img = Image.fromarray(np.where(edge, 255, 0).astype(np.uint8))
        edge = np.asarray(edge_img.filter(ImageFilter.MaxFilter(k))) > 0
    out = np.array(photo)
    out[edge] = np.asarray(color, dtype=np.uint8)
    return Image.fromarray(out)


def to_data_uri(img: Image.Image, format: str = "PNG", max_side: int | None = None, quality: int = 85) -> str:
    """Encode an image as a ``data:image/...;base64,...`` URI for HTML embedding.

    ``max_side`` shrinks a copy (aspect ratio kept, never enlarged). JPEG output
    is converted to RGB (or kept as L); PNG keeps the image mode where possible.
    """
    fmt = format.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in ("PNG", "JPEG"):
        raise ValueError(f"format must be 'PNG' or 'JPEG', got {format!r}")
    im = img
    if max_side is not None:
        max_side = int(max_side)
        if max_side <= 0:
            raise ValueError(f"max_side must be positive, got {max_side}")
        if max(im.size) > max_side:
            im = im.copy()
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if fmt == "JPEG":
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        im.save(buf, format="JPEG", quality=int(quality), optimize=True)
        mime = "image/jpeg"
    else:
        if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
            im = im.convert("RGBA" if "A" in im.mode else "RGB")
        im.save(buf, format="PNG", compress_level=6)
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
