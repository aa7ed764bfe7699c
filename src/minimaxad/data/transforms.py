"""Transforms of the authors' protocol, without torchvision.

Test time (deterministic), exactly torchvision's ``Resize((s, s))`` on a PIL image (PIL
bilinear, which antialiases when shrinking) -> ``ToTensor`` -> ``CenterCrop(c)`` ->
``Normalize(ImageNet)``; masks ``Resize((s, s))`` -> ``CenterCrop(c)`` -> ``ToTensor`` ->
``> 0.5``. The split into :meth:`Transform.resize_image` (uint8, cacheable) and
:meth:`Transform.finish` (crop + float) is what lets the dataset cache resized images.

Training augmentation of AeBAD-S: ``RandomResizedCrop(c, scale=(0.7, 1), bicubic)`` +
``RandomHorizontalFlip()``, drawing from torch's global RNG in torchvision's order, so a
``torch.manual_seed`` (and the per-worker seeds of a DataLoader) reproduce it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from minimaxad.data.io import ImageSource, load_image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Transform",
    "RandomResizedCropFlip",
    "center_crop_box",
    "denormalize",
    "relabel_cropped_mask",
    "MASK_RULES",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = Union[int, Sequence[int]]


def _pair(size: Size, name: str) -> tuple[int, int]:
    """int or (h, w) -> (h, w), checked positive."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={size!r}; expected an int or (height, width)") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}={size!r}; expected positive sizes")
    return h, w


def center_crop_box(height: int, width: int, crop: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of torchvision's center crop (round half to even, as it uses ``round``)."""
    ch, cw = crop
    return int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))


def _normalise(img: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ``(x / 255 - mean) / std`` like torchvision.

    Done in numpy on purpose: the float32 divisions and subtraction round exactly like
    torch's, and numpy stays single-threaded, whereas small torch ops in the main process
    pay for intra-op threading (10x slower on a busy 2-core machine).
    """
    a = np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1), dtype=np.float32)  # a new array
    a /= np.float32(255.0)
    a -= mean[:, None, None]  # per-channel planes: long contiguous inner loops
    a /= std[:, None, None]
    return torch.from_numpy(a)


def _binarise(mask: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 -> (1, H, W) float32 in {0, 1}: ``v / 255 > 0.5`` is ``v >= 128``."""
    return torch.from_numpy((np.asarray(mask) >= 128).astype(np.float32))[None]


class Transform:
    """Deterministic transform of the authors' protocol.

    ``Transform(256)(image)`` -> (3, 256, 256); ``Transform(256, 224)`` -> (3, 224, 224).
    ``image`` may be a path, PIL image or numpy array of any mode (see :func:`load_image`).
    """

    def __init__(
        self,
        image_size: Size = 256,
        crop_size: Optional[Size] = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.image_size = _pair(image_size, "image_size")
        self.crop_size = None if crop_size is None else _pair(crop_size, "crop_size")
        if self.crop_size and (self.crop_size[0] > self.image_size[0] or self.crop_size[1] > self.image_size[1]):
            raise ValueError(
                f"crop_size {self.crop_size} is larger than image_size {self.image_size}; "
                "the crop is taken from the resized image, so it must fit inside it"
            )
        self.mean = np.asarray(mean, dtype=np.float32)  # broadcast over (H, W, 3)
        self.std = np.asarray(std, dtype=np.float32)

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the tensors produced."""
        return self.crop_size or self.image_size

    def __repr__(self) -> str:
        return f"Transform(image_size={self.image_size}, crop_size={self.crop_size})"

    # -- the cacheable half: decode-size -> image_size, uint8
    def resize_image(self, image: Image.Image) -> np.ndarray:
        """PIL RGB (or L) image -> (H, W, 3) uint8 at ``image_size`` (PIL bilinear)."""
        h, w = self.image_size
        if image.mode == "L":  # same result as resizing the 3 equal channels, 3x cheaper
            return np.asarray(image.resize((w, h), Image.BILINEAR).convert("RGB"))
        return np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR))

    def resize_mask(self, mask: np.ndarray) -> np.ndarray:
        """(H0, W0) uint8 mask -> (H, W) uint8 at ``image_size``, bilinear like the image,
        whatever its original size (so a mask of another size than its image still aligns)."""
        h, w = self.image_size
        if mask.shape == (h, w):
            return mask
        return np.asarray(Image.fromarray(mask, "L").resize((w, h), Image.BILINEAR))

    def center_crop(self, array: np.ndarray) -> np.ndarray:
        """The center crop of a resized (H, W[, C]) array (itself without a crop size)."""
        if self.crop_size is None:
            return array
        top, left = center_crop_box(array.shape[0], array.shape[1], self.crop_size)
        return array[top : top + self.crop_size[0], left : left + self.crop_size[1]]

    # -- the per-item half: crop + tensor
    def finish(
        self, image: np.ndarray, mask: Optional[np.ndarray] = None, crop: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Resized uint8 image (H, W, 3) and mask (H, W) or None -> normalised (3, h, w)
        float32 image and (1, h, w) float32 mask in {0, 1} (zeros when ``mask`` is None).
        ``crop=False`` skips the center crop (the augmentation already cropped)."""
        if crop and self.crop_size is not None:
            top, left = center_crop_box(image.shape[0], image.shape[1], self.crop_size)
            ch, cw = self.crop_size
            image = image[top : top + ch, left : left + cw]
            if mask is not None:
                mask = mask[top : top + ch, left : left + cw]
        tensor = _normalise(image, self.mean, self.std)
        if mask is None:
            # numpy zeros (calloc) rather than torch.zeros: no intra-op threading cost
            return tensor, torch.from_numpy(np.zeros((1, image.shape[0], image.shape[1]), np.float32))
        return tensor, _binarise(mask)

    def __call__(self, image: ImageSource) -> torch.Tensor:
        """Any image -> (3, h, w) float32, normalised."""
        return self.finish(self.resize_image(load_image(image)))[0]

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """(H0, W0) uint8 mask (0/255) -> (1, h, w) float32 in {0, 1}."""
        resized = self.resize_mask(np.asarray(mask, dtype=np.uint8))
        dummy = np.zeros(resized.shape + (3,), dtype=np.uint8)
        return self.finish(dummy, resized)[1]


#: how test masks become the ground truth (see :func:`relabel_cropped_mask`)
MASK_RULES = ("binarise", "relabel-max", "relabel-half")


def relabel_cropped_mask(mask: np.ndarray, rule: str) -> tuple[torch.Tensor, bool]:
    """The AeBAD-S dataset's mask rule (the authors' ``AeBADDataset``), on a mask already
    resized and centre-cropped, (h, w) uint8 0..255.

    An empty mask (the crop removed the whole defect) means the item is relabelled normal:
    returns (zeros, True). Otherwise the mask is divided by its max (``mask / torch.max(mask)``)
    and binarised: ``'relabel-max'`` keeps only the pixels equal to the max (``astype(int)`` in
    their ``evaluate()``), ``'relabel-half'`` those above half of it (``gt > 0.5`` in their
    ``evaluation_batch``). Exact in integers: ``v / max == 1`` iff ``v == max``, ``> 0.5`` iff
    ``2 v > max``. Returns ((1, h, w) float32 in {0, 1}, relabelled).
    """
    if rule not in ("relabel-max", "relabel-half"):
        raise ValueError(f"mask rule {rule!r}; expected 'relabel-max' or 'relabel-half'")
    values = np.asarray(mask, dtype=np.int32)
    peak = int(values.max()) if values.size else 0
    if peak == 0:
        return torch.from_numpy(np.zeros((1, *values.shape), np.float32)), True
    keep = values == peak if rule == "relabel-max" else 2 * values > peak
    return torch.from_numpy(keep.astype(np.float32))[None], False


class RandomResizedCropFlip:
    """AeBAD-S training augmentation: torchvision's ``RandomResizedCrop(size, scale, ratio,
    bicubic)`` followed by ``RandomHorizontalFlip(p)``, same random draws, no torchvision.

    Works on PIL images; the mask (if any) gets the same crop and flip (bilinear).
    """

    def __init__(
        self,
        size: Size = 224,
        scale: tuple[float, float] = (0.7, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
    ) -> None:
        self.size = _pair(size, "size")
        if not (0 < scale[0] <= scale[1] <= 1.0):
            raise ValueError(f"scale={scale}; expected 0 < low <= high <= 1")
        self.scale, self.ratio, self.flip_p = scale, ratio, flip_p

    def __repr__(self) -> str:
        return f"RandomResizedCropFlip(size={self.size}, scale={self.scale}, flip_p={self.flip_p})"

    def get_params(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop, drawn like torchvision (10 tries, then a central crop)."""
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return top, left, h, w
        in_ratio = float(width) / float(height)
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(
        self, image: Image.Image, mask: Optional[Image.Image] = None
    ) -> tuple[Image.Image, Optional[Image.Image]]:
        """Crop, resize to ``size`` and maybe flip ``image`` and ``mask`` alike; returns both (mask None if none)."""
        top, left, h, w = self.get_params(image.width, image.height)
        out_h, out_w = self.size
        box = (left, top, left + w, top + h)
        image = image.crop(box).resize((out_w, out_h), Image.BICUBIC)
        if mask is not None:
            mask = mask.crop(box).resize((out_w, out_h), Image.BILINEAR)
        if torch.rand(1).item() < self.flip_p:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            if mask is not None:
                mask = mask.transpose(Image.FLIP_LEFT_RIGHT)
        return image, mask


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Normalised (3, H, W) or (B, 3, H, W) tensor -> uint8 (H, W, 3) or (B, H, W, 3) array."""
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"image tensor has shape {tuple(image.shape)}; expected (3, H, W) or (B, 3, H, W)")
    x = image.detach().to("cpu", torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = (x * s + m).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return x.movedim(-3, -1).numpy()
