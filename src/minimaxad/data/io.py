"""Decoding images and masks from disk, and the checks that catch bad files early.

Everything here only *reads*: no file on disk is ever modified.

* :func:`load_image` turns a path, a PIL image or a numpy array of any mode into an upright
  8-bit RGB PIL image (grayscale, palette, alpha, 16-bit, float, CMYK, EXIF-rotated JPEG).
* :func:`load_mask` turns a mask file into a (H, W) uint8 array, 0 = normal, 255 = defect,
  anti-aliased edges kept as grey levels (they are resized, then binarised at 0.5, exactly
  like the authors' ``Resize`` + ``ToTensor`` + ``> 0.5``). A file that cannot be a mask
  raises :class:`BadMaskError`.
* :func:`measure_white_level` finds the value that photos of more than 8 bits reach (the
  99.9th percentile of their pixels): ``load_image(..., white_level=...)`` reads it as white, so
  a 12-bit camera's photos in 16-bit files are not read as nearly black.
* :func:`probe_image` is the quick per-file check of the validation pass: header, size,
  EXIF orientation and a look at the end of PNG/JPEG files for truncation.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import ExifTags, Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetNotFoundError",
    "BadImageError",
    "BadMaskError",
    "ImageInfo",
    "is_image_file",
    "list_images",
    "load_image",
    "load_image_and_orientation",
    "mask_to_photo_grid",
    "to_rgb",
    "is_high_depth",
    "measure_white_level",
    "WHITE_LEVEL_PERCENTILE",
    "load_mask",
    "mask_to_uint8",
    "probe_image",
]

#: File name endings read as images (compared case-insensitively: VisA uses ``.JPG``).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]

# A mask holds 0 and 255 with anti-aliased edges in between; above this fraction of
# mid-grey pixels the file is a photo or a soft map, not a mask (MVTec/VisA masks: < 2%).
_MAX_MID_GREY_FRACTION = 0.2
# Relative aspect-ratio difference beyond which a mask cannot belong to its image.
_MAX_ASPECT_MISMATCH = 0.02


class DatasetError(ValueError):
    """A dataset on disk does not have the layout or content that was expected."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset root, category, split folder or split file is missing."""


class BadImageError(DatasetError):
    """An image file cannot be decoded (not an image, truncated, unsupported)."""


class BadMaskError(DatasetError):
    """A mask file cannot be decoded or its values are not those of a mask."""


def is_image_file(path: Union[str, os.PathLike]) -> bool:
    """True for a visible file whose name ends in one of :data:`IMAGE_EXTENSIONS`."""
    name = os.path.basename(os.fspath(path))
    # Hidden files include macOS "._000.png" AppleDouble files, which are not images.
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Union[str, os.PathLike], recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted by path), skipping hidden files and other files
    (``transforms.json`` in MAD-Sim, ``Thumbs.db``...). ``recursive`` descends into sub-folders."""
    folder = Path(folder)
    if recursive:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
        return sorted(found)
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))


# --------------------------------------------------------------------------- images


def _sixteen_bit_to_uint8(arr: np.ndarray) -> np.ndarray:
    """uint16-range integers -> uint8 by the full-range scale 65535 -> 255 (rounded)."""
    return np.round(arr.astype(np.float32) / 257.0).astype(np.uint8)


def _white_to_uint8(arr: np.ndarray, white_level: float) -> np.ndarray:
    """Values 0..``white_level`` -> 0..255 (rounded), brighter ones clipped to 255."""
    scaled = np.nan_to_num(arr.astype(np.float32)) * np.float32(255.0 / white_level)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def is_high_depth(mode: str) -> bool:
    """A PIL mode of more than 8 bits a channel (I;16*, I, F), which must be scaled to 8 bits."""
    return mode.startswith("I") or mode == "F"


def _high_depth_to_l(im: Image.Image, white_level: Optional[float] = None) -> Image.Image:
    """Modes I;16*, I and F -> 8-bit L, scaled: ``white_level`` (the dataset's, see
    :func:`measure_white_level`) becomes 255; without it, the type's full range (16-bit:
    65535). Pillow's own conversion clips at 255, which turns most 16-bit photos white."""
    arr = np.asarray(im)
    if white_level is not None:
        return Image.fromarray(_white_to_uint8(arr, white_level), "L")
    if im.mode.startswith("I;16"):
        return Image.fromarray(_sixteen_bit_to_uint8(arr), "L")
    if im.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float32))
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8), "L")
    # Mode I (32-bit): 16-bit PNGs open as I in some Pillow versions.
    arr = arr.astype(np.int64)
    peak = int(arr.max()) if arr.size else 0
    if im.format == "PNG" or 255 < peak <= 65535:
        return Image.fromarray(_sixteen_bit_to_uint8(np.clip(arr, 0, 65535)), "L")
    if peak <= 255:
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    return Image.fromarray(np.round(np.clip(arr, 0, None) * (255.0 / peak)).astype(np.uint8), "L")


def to_rgb(im: Image.Image, white_level: Optional[float] = None) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Alpha is dropped, as ``Image.convert('RGB')`` does in the
    authors' pipeline; high bit depths are scaled (to ``white_level``, see :func:`_high_depth_to_l`)
    rather than clipped."""
    if im.mode == "RGB":
        return im
    if is_high_depth(im.mode):
        im = _high_depth_to_l(im, white_level)
    return im.convert("RGB")


#: the percentile of the pixels of the training photos that :func:`measure_white_level` reads as white
WHITE_LEVEL_PERCENTILE = 99.9


def measure_white_level(paths: Sequence[Union[str, os.PathLike]], max_photos: int = 64) -> Optional[float]:
    """The white level of photos of more than 8 bits: the :data:`WHITE_LEVEL_PERCENTILE` th
    percentile of the pixel values of up to ``max_photos`` of ``paths`` (evenly spaced), so that
    the brightest 0.1 % saturate. A 12-bit camera's photos stored in 16-bit files (values up to
    4095, or far less for a dark object) then fill the 8-bit range instead of reading as nearly
    black. None when none of those photos has more than 8 bits (8-bit photos are never scaled),
    or when they are all black. Unreadable files are skipped (the dataset check reports them)."""
    paths = list(paths)
    if not paths:
        return None
    count = min(max_photos, len(paths))
    picks = sorted({round(i * (len(paths) - 1) / max(1, count - 1)) for i in range(count)})
    samples = []
    for k in picks:
        try:
            with Image.open(paths[k]) as im:
                if not is_high_depth(im.mode):
                    continue
                im.load()
                values = np.asarray(im).ravel()
        except (Image.DecompressionBombError, *DECODE_ERRORS):
            continue
        step = max(1, values.size // 262_144)  # a quarter million values a photo is plenty for a percentile
        samples.append(np.nan_to_num(values[::step].astype(np.float64)))
    if not samples:
        return None
    level = float(np.percentile(np.concatenate(samples), WHITE_LEVEL_PERCENTILE))
    return float(f"{level:.6g}") if level > 0 else None


def _array_to_pil(arr: np.ndarray, white_level: Optional[float] = None) -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array -> PIL image. uint8 as is; other
    integer types scaled from ``white_level``, else their range (uint16 -> /257); floats and
    bools read as [0, 1]."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"image array has shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif white_level is not None and np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.uint8:
        arr = _white_to_uint8(arr, white_level)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.round(np.nan_to_num(arr.astype(np.float32)) * 255.0), 0, 255).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = _sixteen_bit_to_uint8(arr)
    elif arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(
                f"integer image array ({arr.dtype}) has values {arr.min()}..{arr.max()}; "
                "expected 0..255 (8-bit) or 0..65535 (16-bit)"
            )
        arr = arr.astype(np.uint8) if arr.max() <= 255 else _sixteen_bit_to_uint8(arr)
    return Image.fromarray(np.ascontiguousarray(arr))


def load_image(src: ImageSource, white_level: Optional[float] = None) -> Image.Image:
    """Decode ``src`` (path, PIL image or numpy array) into an upright 8-bit RGB PIL image.

    EXIF orientation is applied (a portrait phone photo stays portrait). A photo of more than 8
    bits a channel is scaled so that ``white_level`` (a model's, measured on its training photos by
    :func:`measure_white_level`) becomes 255; without one, from its type's full range. Raises
    :class:`BadImageError` naming the path when a file cannot be decoded completely; any other
    exception (a ``MemoryError``, a bug) is not a bad file and propagates as it is.
    """
    return load_image_and_orientation(src, white_level)[0]


def load_image_and_orientation(src: ImageSource, white_level: Optional[float] = None) -> tuple[Image.Image, int]:
    """:func:`load_image`, and the EXIF orientation it applied (1: none; see :func:`mask_to_photo_grid`)."""
    if isinstance(src, np.ndarray):
        return to_rgb(_array_to_pil(src, white_level), white_level), 1
    if isinstance(src, Image.Image):
        src.load()
        photo, orientation = _upright(src)
        return to_rgb(photo, white_level), orientation
    path = os.fspath(src)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"image file not found: {path}")
    try:  # PIL's calls only: what they raise on bad data is a bad file; our conversion stays outside
        with Image.open(path) as im:
            im.load()  # decode fully now: truncated files fail here, not in the network
            photo, orientation = _upright(im)
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"cannot decode image {path}: {_bomb_reason(exc)}") from exc
    except DECODE_ERRORS as exc:
        raise BadImageError(
            f"cannot decode image {path}: {str(exc) or type(exc).__name__}. Expected a complete PNG/JPEG/BMP/TIFF/WebP "
            "file; replace the file, or pass skip_bad_images=True to leave it out with a warning."
        ) from exc
    return to_rgb(photo, white_level), orientation


# What PIL raises on a malformed file. UnidentifiedImageError is an OSError (Image.open turns its
# plugins' IndexError, TypeError, KeyError and struct.error on a broken header into it); the
# decoders raise OSError ("image file is truncated", "broken data stream"), SyntaxError (a bad
# chunk, a bad EXIF header), ValueError or EOFError; struct.error comes from EXIF values.
# DecompressionBombError (neither of these) is caught on its own. Anything else, MemoryError
# and the TypeError of a bug included, is not a bad file and must propagate.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

# EXIF orientation -> the transposition that makes the photo upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Where an image keeps its orientation besides its EXIF block: dropped from a turned image.
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _upright(im: Image.Image) -> tuple[Image.Image, int]:
    """A new image: the decoded ``im`` turned as its EXIF orientation says, and that orientation
    (1 when it was not turned). Like
    ``ImageOps.exif_transpose``, but a turned image drops its metadata (so that it is never
    turned twice) instead of re-encoding the rest of the EXIF block: PIL's EXIF writer raises
    TypeError, AttributeError or struct.error on damaged EXIF values of an otherwise good photo.
    Reading a damaged EXIF header raises SyntaxError (one of :data:`DECODE_ERRORS`)."""
    orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return im.copy(), 1
    turned = im.transpose(method)
    for key in _ORIENTATION_KEYS:
        turned.info.pop(key, None)
    return turned, orientation


#: EXIF orientations that swap a photo's width and height
_SWAPS_AXES = (5, 6, 7, 8)


def _same_view(size_a: tuple[int, int], size_b: tuple[int, int]) -> bool:
    """Two (width, height) sizes of one field of view: equal aspect ratios (see check_mask_size)."""
    ratio_a, ratio_b = size_a[0] / size_a[1], size_b[0] / size_b[1]
    return abs(ratio_a - ratio_b) / ratio_b <= _MAX_ASPECT_MISMATCH


def mask_to_photo_grid(mask: np.ndarray, photo_size: tuple[int, int], orientation: int) -> np.ndarray:
    """A (H, W) mask of a photo that :func:`load_image` turned upright by its EXIF ``orientation``,
    on the upright photo's pixel grid (``photo_size``: its (width, height)).

    A mask carries no orientation of its own. One whose shape fits only the upright photo was drawn
    on it (LabelMe, CVAT and OpenCV show photos upright) and is kept; any other was drawn on the
    stored pixels, as every PIL-based pipeline reads the photo (the authors' scripts, anomalib),
    and is turned with the photo. Only a turn by 90 degrees of a photo that is not square tells the
    two apart; otherwise the stored pixels are assumed, the convention of anomaly-detection sets."""
    method = _UPRIGHT.get(orientation)
    if method is None:
        return mask
    height, width = mask.shape
    if orientation in _SWAPS_AXES and _same_view((width, height), photo_size):
        stored_size = (photo_size[1], photo_size[0])
        if not _same_view((width, height), stored_size):
            return mask
    return np.ascontiguousarray(np.asarray(Image.fromarray(mask).transpose(method)))


def _bomb_reason(exc: Exception) -> str:
    return (
        f"{exc}; so many pixels are refused as a possible decompression bomb (a small file that "
        f"would fill the memory). Resize the image, or raise PIL.Image.MAX_IMAGE_PIXELS if it is genuine"
    )


# --------------------------------------------------------------------------- masks


def _mask_raw_array(im: Image.Image) -> np.ndarray:
    """The mask content as one 2-D array: palette/colour masks by their brightest channel
    (a red-on-black mask is a mask), alpha used only when the colour carries nothing."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.uint8) * 255
    if mode in ("L", "F") or mode.startswith("I"):
        return np.asarray(im)
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("LA", "RGBA", "RGBa", "La"):
        arr = np.asarray(im)
        colour = arr[..., :-1].max(axis=-1)
        alpha = arr[..., -1]
        if colour.max() == colour.min() and alpha.max() != alpha.min():
            return alpha
        return colour
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im).max(axis=-1)


def mask_to_uint8(arr: np.ndarray, where: str = "mask", mode: str = "auto") -> np.ndarray:
    """Normalise raw mask values to uint8 (0 normal, 255 defect, edges in between).

    ``mode='auto'``: 8-bit 0/255 (anti-aliased allowed), 0/1, 16-bit 0/65535 or float [0, 1];
    ``mode='nonzero'``: any nonzero value is defect (label masks such as raw VisA).
    Raises :class:`BadMaskError` naming ``where`` when the values cannot be a mask.
    """
    if mode not in ("auto", "nonzero"):
        raise ValueError(f"mask mode {mode!r}; expected 'auto' or 'nonzero'")
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise BadMaskError(f"{where}: mask array has shape {arr.shape}; expected (H, W)")
    if arr.size == 0:
        raise BadMaskError(f"{where}: mask is empty (0 pixels)")
    if mode == "nonzero":
        return (arr != 0).astype(np.uint8) * 255
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if np.issubdtype(arr.dtype, np.floating):
        if np.isnan(arr).any() or lo < 0 or hi > 255:
            raise BadMaskError(
                f"{where}: float mask values {lo:g}..{hi:g} are out of range; expected values in [0, 1] (or 0..255)"
            )
        arr = np.round(arr * (255.0 if hi <= 1.0 else 1.0)).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if lo < 0 or hi > 65535:
            raise BadMaskError(
                f"{where}: mask values {lo:g}..{hi:g} are out of range; expected 0..255 (8-bit) or 0..65535 (16-bit)"
            )
        arr = arr.astype(np.uint8) if hi <= 255 else _sixteen_bit_to_uint8(arr)
    hi = int(arr.max())
    if hi == 0:
        return arr  # an empty mask: the defect left no annotation (happens in real sets)
    if hi == 1:
        return arr * np.uint8(255)  # 0/1 masks
    if hi < 128:
        raise BadMaskError(
            f"{where}: mask values are 0..{hi}, so no pixel reaches the defect threshold 128. "
            "Expected 0 for normal and 255 for defect (or 0/1). If the file stores class "
            "labels, read it with mask_mode='nonzero'."
        )
    mid = float(np.count_nonzero((arr > 25) & (arr < 230))) / arr.size
    if mid > _MAX_MID_GREY_FRACTION:
        raise BadMaskError(
            f"{where}: this is not a binary mask: {mid:.0%} of its pixels are grey levels "
            "between 26 and 229 (a mask holds 0 and 255, with grey only on anti-aliased "
            "edges). Is it a photo, or the wrong file?"
        )
    return np.ascontiguousarray(arr)


def load_mask(path: Union[str, os.PathLike], mode: str = "auto") -> np.ndarray:
    """Read a mask file as a (H, W) uint8 array (0 normal, 255 defect). See :func:`mask_to_uint8`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"mask file not found: {path}")
    try:  # PIL's calls only, as in load_image
        with Image.open(path) as im:
            im.load()
            mask, _ = _upright(im)
    except Image.DecompressionBombError as exc:
        raise BadMaskError(f"cannot decode mask {path}: {_bomb_reason(exc)}") from exc
    except DECODE_ERRORS as exc:
        raise BadMaskError(
            f"cannot decode mask {path}: {exc}. Expected a PNG/BMP/TIFF mask (0 normal, 255 defect)."
        ) from exc
    return mask_to_uint8(_mask_raw_array(mask), where=path, mode=mode)


# --------------------------------------------------------------------------- quick checks


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`probe_image` learnt from a file header (size is after EXIF rotation)."""

    path: str
    format: str
    mode: str
    size: tuple[int, int]  # (width, height)
    orientation: int = 1  # the EXIF orientation turned (1: none)


_PNG_END = b"IEND\xaeB`\x82"


def _looks_complete(path: str, fmt: str) -> bool:
    """Cheap truncation screen: PNG ends with the IEND chunk, JPEG with the EOI marker
    (allowing trailing bytes some cameras append). Other formats: unknown -> False."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            n = f.tell()
            f.seek(max(0, n - 4096))
            tail = f.read()
    except OSError:
        return False
    if fmt == "PNG":
        return _PNG_END in tail[-64:]
    if fmt in ("JPEG", "MPO"):
        return b"\xff\xd9" in tail
    return False


def probe_image(path: Union[str, os.PathLike], full: bool = False) -> ImageInfo:
    """Check one image file without (``full=False``) or with a full decode.

    The quick check reads the header and the last bytes; only a file that looks
    truncated, or a format without an end marker (BMP, TIFF, WebP), is decoded fully.
    Raises :class:`BadImageError` / :class:`DatasetNotFoundError` naming the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            fmt, mode, (w, h) = im.format or "", im.mode, im.size
            # Only JPEG/TIFF carry EXIF in the header; PNG getexif() would decode the whole file.
            orientation = im.getexif().get(0x0112, 1) if fmt in ("JPEG", "MPO", "TIFF") else 1
            if full or not _looks_complete(path, fmt):
                im.load()
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"{path}: {_bomb_reason(exc)}") from exc
    except DECODE_ERRORS as exc:
        reason = str(exc).replace(repr(path), "file").replace(path, "file")  # path said once
        raise BadImageError(f"{path}: {reason}") from exc
    orientation = orientation if isinstance(orientation, int) and orientation in _UPRIGHT else 1
    if orientation in _SWAPS_AXES:
        w, h = h, w
    return ImageInfo(path=path, format=fmt, mode=mode, size=(w, h), orientation=orientation)


def check_mask_size(mask_size: tuple[int, int], image_size: tuple[int, int], where: str, orientation: int = 1) -> None:
    """A mask of another size than its image is fine (it is resized with it) as long as the
    aspect ratios agree; otherwise it belongs to another image. Sizes are (width, height); a photo
    turned upright by its EXIF ``orientation`` may also have a mask of its stored pixels (see
    :func:`mask_to_photo_grid`)."""
    (mw, mh), (iw, ih) = mask_size, image_size
    if _same_view((mw, mh), (iw, ih)) or (orientation in _SWAPS_AXES and _same_view((mw, mh), (ih, iw))):
        return
    raise BadMaskError(
        f"{where}: mask is {mw}x{mh} but its image is {iw}x{ih}; a mask must cover the "
        "same field of view (same aspect ratio). Is it the mask of another image?"
    )
