"""Batched augmentation on whole uint8 batches, on whatever device the batch is on.

Each function is pure in (batch, generator): the same generator state gives the same output, on CPU or GPU,
and no per-image Python runs. Random numbers are drawn on the batch's device (a generator, when given, must
live there too).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def random_crop(
    images: torch.Tensor,
    padding: int,
    generator: Optional[torch.Generator] = None,
    padding_mode: str = "constant",
) -> torch.Tensor:
    """Per-image random HxW crop of the images padded by ``padding`` on each side (torchvision's
    ``RandomCrop(32, padding=4, padding_mode=...)``, for a whole batch at once): ``constant`` pads with black,
    ``reflect`` mirrors the border pixels (no black edges the net never sees at test time)."""
    if padding <= 0:
        return images
    padded = F.pad(images, (padding, padding, padding, padding), mode=padding_mode)
    return random_window(padded, images.shape[-2], images.shape[-1], generator)


def random_window(
    images: torch.Tensor, height: int, width: Optional[int] = None, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Per-image random ``height`` x ``width`` (default: square) window of the images, at their scale (the shift
    crop of padded images; cuda-convnet's 24x24 crops of CIFAR)."""
    width = width or height
    n, _, h, w = images.shape
    dev = images.device
    top = torch.randint(0, h - height + 1, (n,), device=dev, generator=generator)
    left = torch.randint(0, w - width + 1, (n,), device=dev, generator=generator)
    # One image's window is a slice: pick each image's row band, then its columns, from sliding-window views
    # (whole slices copied; a gather per pixel took 3-5 times as long on a CPU).
    batch = torch.arange(n, device=dev)
    bands = images.unfold(2, height, 1)[batch, :, top]  # (n, c, W, height)
    return bands.unfold(2, width, 1)[batch, :, left]  # (n, c, height, width)


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    scale: Sequence[float] = (0.35, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Per-image random-resized crop of a uint8 batch (torchvision's ``RandomResizedCrop(size, scale, ratio)``,
    for a whole batch at once): each image gets its own window of ``scale`` times its area (uniform) and aspect
    ratio in ``ratio`` (log-uniform), at a uniform position, resized to ``size`` x ``size`` (bilinear, several
    samples per output pixel, so shrinking does not alias). A window wider or taller than the image is clipped to
    it (torchvision redraws up to 10 times, then falls back to the centre)."""
    from torchvision.ops import roi_align

    n, _, h, w = images.shape
    dev = images.device
    area = torch.empty(n, device=dev).uniform_(float(scale[0]), float(scale[1]), generator=generator) * (h * w)
    log_ratio = torch.empty(n, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    cw = (area * aspect).sqrt().clamp(1, w)
    ch = (area / aspect).sqrt().clamp(1, h)
    x0 = torch.rand(n, device=dev, generator=generator) * (w - cw)
    y0 = torch.rand(n, device=dev, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(n, device=dev, dtype=cw.dtype), x0, y0, x0 + cw, y0 + ch], 1)
    out = roi_align(images.float(), boxes, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 batch resized to ``size`` x ``size`` (bilinear, antialiased: no aliasing when shrinking)."""
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_flip(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cutout(images: torch.Tensor, size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Zero one ``size``x``size`` square per image, centred anywhere (so it may be clipped by the border)."""
    if size <= 0:
        return images
    n, _, h, w = images.shape
    dev = images.device
    cy = torch.randint(0, h, (n,), device=dev, generator=generator)
    cx = torch.randint(0, w, (n,), device=dev, generator=generator)
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_y = ((ys - (cy[:, None] - size // 2)) >= 0) & ((ys - (cy[:, None] - size // 2)) < size)
    in_x = ((xs - (cx[:, None] - size // 2)) >= 0) & ((xs - (cx[:, None] - size // 2)) < size)
    mask = in_y[:, None, :, None] & in_x[:, None, None, :]
    return images.masked_fill(mask, 0)


def normalization_tensors(
    mean: Sequence[float], std: Sequence[float], device: Optional[torch.device] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (given in [0, 1] units) as (1, 3, 1, 1) float tensors in 0-255 units: what uint8
    images are normalized with, here, in the exported model and when figures undo it."""
    m = torch.tensor(mean, device=device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=device, dtype=torch.float32).view(1, -1, 1, 1) * 255
    return m, s


def normalize(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 [0, 255] -> float ``(x / 255 - mean) / std`` in the layout the model wants."""
    m, s = normalization_tensors(mean, std, images.device)
    out = (images.float() - m) / s
    return out.to(dtype=dtype, memory_format=memory_format)


def denormalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse of ``normalize``: float batch -> uint8 [0, 255] (rounded, clamped)."""
    m, s = normalization_tensors(mean, std, batch.device)
    return (batch.float() * s + m).round().clamp(0, 255).to(torch.uint8)


def train_augment(
    images: torch.Tensor,
    crop_padding: int = 4,
    flip: bool = True,
    cutout_size: int = 0,
    generator: Optional[torch.Generator] = None,
    padding_mode: str = "constant",
    resized_crop: Optional[tuple[Sequence[float], Sequence[float]]] = None,
    size: Optional[int] = None,
    downscale: bool = False,
) -> torch.Tensor:
    """The training augmentation on a uint8 batch: crop (``resized_crop``: a random-resized crop with these
    (scale, ratio) ranges to ``size``; else the padded shift crop, then, where ``size`` is smaller than the
    images, a random ``size`` window of it or (``downscale``) the whole of it shrunk to ``size``), flip, cutout
    (each skipped when off)."""
    if resized_crop is not None:
        images = random_resized_crop(images, size or images.shape[-1], *resized_crop, generator=generator)
    else:
        images = random_crop(images, crop_padding, generator, padding_mode)
        if size is not None and size < images.shape[-1]:
            images = resize(images, size) if downscale else random_window(images, size, generator=generator)
    if flip:
        images = random_flip(images, generator)
    return cutout(images, cutout_size, generator)
