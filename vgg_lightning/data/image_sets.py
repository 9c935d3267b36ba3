"""Splits as index sets into one store of uint8 images, and where that store lives during a run.

A store is a (N, 3, S, S) uint8 tensor: in memory (CIFAR), memory-mapped from a class-folder cache, or moved to a
GPU. A train/val split is two ImageSets on one store, each a list of row numbers: no image is copied to split a
set, and a loader gathers only the rows of its batch (so under DDP a rank reads only its own shard's rows).
"""

from __future__ import annotations

from typing import Optional

import torch

from vgg_lightning.errors import ConfigError

_GB = 1e9


class ImageSet:
    """Rows ``rows`` of a store of images and labels (all of them when ``rows`` is None)."""

    def __init__(self, store: torch.Tensor, store_labels: torch.Tensor, rows: Optional[torch.Tensor] = None) -> None:
        self.store, self.store_labels, self.rows = store, store_labels, rows
        self.labels = store_labels if rows is None else store_labels[rows]  # small: int64 per image

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        where = f"rows of a {len(self.store)}-image store" if self.rows is not None else "a whole store"
        return f"ImageSet({len(self)} images, {where}, {self.store.device})"

    @property
    def nbytes(self) -> int:
        """The pixels of this split's images."""
        return len(self) * self.store[0].numel() if len(self.store) else 0

    def store_rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Store row numbers of the split's images at ``positions``."""
        return positions if self.rows is None else self.rows[positions]

    def images(self, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The images at ``positions`` (all when None), gathered: a copy, except for a whole store asked whole."""
        if positions is None:
            return self.store if self.rows is None else self.store[self.rows]
        return self.store[self.store_rows(positions)]

    def head(self, count: int) -> torch.Tensor:
        """The first ``count`` images (a copy of those only)."""
        return self.images(torch.arange(min(count, len(self)), device=self.labels.device))


def move(sets: list[Optional[ImageSet]], device: torch.device) -> list[Optional[ImageSet]]:
    """The sets with their stores on ``device``; a store shared by several sets is moved once."""
    moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    out: list[Optional[ImageSet]] = []
    for s in sets:
        if s is None or s.store.device == device:
            out.append(s)
            continue
        key = id(s.store)
        if key not in moved:
            moved[key] = (s.store.to(device), s.store_labels.to(device))
        store, labels = moved[key]
        out.append(ImageSet(store, labels, None if s.rows is None else s.rows.to(device)))
    return out


def store_bytes(sets: list[Optional[ImageSet]]) -> int:
    """Bytes of the distinct stores behind ``sets``."""
    stores = {id(s.store): s.store for s in sets if s is not None}
    return sum(t.numel() * t.element_size() for t in stores.values())


# Device memory kept free for the run itself (weights, optimizer state, activations of a 224 px batch) when the
# data is placed automatically: the data gets at most half of what is free.
AUTO_SHARE = 0.5


def place_on_device(nbytes: int, free: int, asked: Optional[bool], device: str) -> tuple[bool, str]:
    """(whether the data's stores go to the GPU, one line saying so). ``asked``: data.data_on_device (None: decide
    here: when the data takes at most half the free memory); an explicit true that does not fit is a ConfigError."""
    size = f"{nbytes / _GB:,.2f} GB"
    room = f"{free / _GB:,.1f} GB free on {device}"
    if asked is False:
        return False, f"data: {size} in host memory, gathered a few batches ahead (--data.data_on_device false)"
    if asked is True:
        if nbytes > free:
            raise ConfigError(
                f"data.data_on_device true: the data's {size} do not fit in the {room}. Leave data.data_on_device"
                " unset (it is then kept on the GPU only where it fits), or set it false, or use a smaller"
                " data.image_size."
            )
        return True, f"data: {size} on {device} ({room} before; --data.data_on_device true)"
    if nbytes <= AUTO_SHARE * free:
        return True, f"data: {size} on {device}, so batches need no copy ({room})"
    return False, (
        f"data: {size} in host memory, gathered a few batches ahead and copied as the GPU computes (more than half"
        f" of the {room}; --data.data_on_device true forces it there)"
    )
