"""Decoded pixels of a class-folder split as a uint8 file on disk, memory-mapped when read.

Two files per split folder and image size: ``NAME.pixels`` holds the rows, uint8 (3, S, S) each and nothing else;
``NAME.meta.pt`` holds the labels, file names, class names, normalization and one CRC-32 per chunk of rows. A build
reserves the whole pixel file first (a full disk is one message before any decoding, never a crash half-way) and
decoding writes each chunk of images straight into it, so memory holds the chunks in flight, never the set. Reading
maps the file: the page cache, shared by every process of a node, holds what fits, and a set larger than memory
still trains. The pixels are renamed into place before the meta file is written (both atomically), so a killed
build leaves nothing that looks complete. A reader checks every chunk; a garbled chunk is decoded again in place.
"""

from __future__ import annotations

import errno
import os
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from vgg_lightning.files import atomic_path

VERSION = 3  # 3: a mapped pixel file and a meta file (2: one torch.save file, read whole)
_CHUNK_BYTES = 64 << 20  # rows checked together: 64 MB (445 rows at 224 px, 21,845 at 32 px)


def row_bytes(image_size: int) -> int:
    return 3 * image_size * image_size


def chunk_rows(image_size: int) -> int:
    return max(1, _CHUNK_BYTES // row_bytes(image_size))


def pixel_path(base: Path) -> Path:
    return base.with_name(base.name + ".pixels")


def meta_path(base: Path) -> Path:
    return base.with_name(base.name + ".meta.pt")


def chunk_checksums(pixels: np.ndarray, image_size: int) -> list[int]:
    """CRC-32 of each chunk of rows (read through the mapping: memory stays at one chunk of page cache)."""
    step = chunk_rows(image_size)
    return [zlib.crc32(np.ascontiguousarray(pixels[i : i + step]).data) for i in range(0, len(pixels), step)]


def garbled_chunks(pixels: np.ndarray, image_size: int, expected: list[int]) -> list[int]:
    """Indices of the chunks whose CRC-32 differs from the one recorded."""
    found = chunk_checksums(pixels, image_size)
    if len(found) != len(expected):
        return list(range(max(len(found), len(expected))))
    return [i for i, (a, b) in enumerate(zip(found, expected)) if a != b]


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """A read-only mapping as a uint8 tensor without a copy (PyTorch warns that it cannot write to it: nothing
    here does; augmentation works on gathered batches)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(pixels)


def map_pixels(path: Path, rows: int, image_size: int, writable: bool = False) -> np.ndarray:
    """The pixel file as a (rows, 3, S, S) array backed by the file (shared mapping: no memory is committed)."""
    shape = (rows, 3, image_size, image_size)
    if rows == 0:
        return np.zeros(shape, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r+" if writable else "r", shape=shape)


class PixelWriter:
    """The pixel file being built: a reserved temporary file beside the cache, mapped for writing."""

    def __init__(self, tmp: Path, rows: int, image_size: int) -> None:
        self.tmp, self.image_size = tmp, image_size
        self.pixels = map_pixels(tmp, rows, image_size, writable=True)

    def finish(self, rows: int) -> np.ndarray:
        """Rows past ``rows`` (files that could not be decoded) are cut off; the file is flushed."""
        if isinstance(self.pixels, np.memmap):
            self.pixels.flush()
        del self.pixels
        with open(self.tmp, "r+b") as f:
            f.truncate(rows * row_bytes(self.image_size))
        return map_pixels(self.tmp, rows, self.image_size)


@contextmanager
def writing(base: Path, rows: int, image_size: int, hint: str) -> Iterator[PixelWriter]:
    """A PixelWriter on a temporary file with the whole size reserved; renamed to ``NAME.pixels`` when the block
    ends without an exception (the old meta file is removed first, so no meta file ever describes other pixels).
    A disk without room is a DiskFullError before anything is decoded."""
    target = pixel_path(base)
    needed = rows * row_bytes(image_size)
    with atomic_path(target, needed=needed, hint=hint) as tmp:
        if needed:
            with open(tmp, "r+b") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, needed)  # reserved now: writing into the mapping cannot fail
                except (AttributeError, OSError) as e:  # no posix_fallocate (macOS), or a file system without it
                    if isinstance(e, OSError) and e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    f.truncate(needed)
        writer = PixelWriter(tmp, rows, image_size)
        yield writer
        meta_path(base).unlink(missing_ok=True)


@dataclass
class Meta:
    """What ``NAME.meta.pt`` holds besides the pixels."""

    key: str
    image_size: int
    labels: torch.Tensor  # int64 (N,)
    class_names: list[str]
    files: list[str]
    skipped: list[tuple[str, str]]
    ignored: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checksums: list[int]

    def save(self, base: Path) -> None:
        state = {
            "version": VERSION,
            "key": self.key,
            "image_size": self.image_size,
            "labels": self.labels,
            "class_names": self.class_names,
            "files": self.files,
            "skipped": [list(s) for s in self.skipped],
            "ignored": self.ignored,
            "mean": list(self.mean),
            "std": list(self.std),
            "checksums": self.checksums,
            "label_crc32": zlib.crc32(self.labels.numpy().tobytes()),
        }
        with atomic_path(meta_path(base), hint="set --data.cache_dir to a disk with room") as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, base: Path, key: str, image_size: int) -> "Meta":
        """ValueError (or whatever torch.load raises) when anything is off: another version, other files or size,
        labels that do not match their checksum, a pixel file of the wrong length."""
        state = torch.load(meta_path(base), map_location="cpu", weights_only=True)
        if state.get("version") != VERSION or state.get("key") != key or state.get("image_size") != image_size:
            raise ValueError("made for other files or another image size")
        labels, names, files = state["labels"], list(state["class_names"]), list(state["files"])
        n = len(files)
        if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and tuple(labels.shape) == (n,)):
            raise ValueError("labels have the wrong type or shape")
        if zlib.crc32(labels.numpy().tobytes()) != state["label_crc32"]:
            raise ValueError("its labels do not match their checksum")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
            raise ValueError("labels out of range")
        mean, std = tuple(float(v) for v in state["mean"]), tuple(float(v) for v in state["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean/std are not per-channel")
        pixels = pixel_path(base)
        if not pixels.is_file() or pixels.stat().st_size != n * row_bytes(image_size):
            raise ValueError("its pixel file is missing or has the wrong length")
        checksums = [int(c) for c in state["checksums"]]
        if len(checksums) != -(-n // chunk_rows(image_size)):
            raise ValueError("the chunk checksums do not cover the pixel file")
        skipped = [(str(a), str(b)) for a, b in state["skipped"]]
        return cls(key, image_size, labels, names, files, skipped, int(state["ignored"]), mean, std, checksums)  # type: ignore[arg-type]


def remove(base: Path) -> None:
    """Both files of a cache (and the single file an older version wrote under the same name)."""
    for path in (meta_path(base), pixel_path(base), base.with_name(base.name + ".pt")):
        path.unlink(missing_ok=True)
