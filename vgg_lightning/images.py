"""Image files to uint8 tensors: one decoding path for ``predict`` and for class-folder data sets.

Any format PIL reads, any size and mode: EXIF-rotated, converted to RGB, centre-cropped to a square and resized
(antialiased) to ``size`` x ``size``. Many files are decoded in worker processes.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vgg_lightning.errors import DataError

# Below this many files a process pool costs more than it saves.
_POOL_MIN_FILES = 256
_CHUNK = 500


def image_extensions() -> set[str]:
    """File endings PIL can open (``.jpg``, ``.png``, ``.webp``, ``.bmp``, ...), lower case."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def find_files(pattern: str) -> list[Path]:
    """A file, every file in a folder (recursively), or a glob's matches; sorted, hidden files left out."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
    else:
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    files = sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(p.anchor).parts))
    if not files:
        raise DataError(f"data.predict_path '{pattern}': no such file, or no files in that folder or glob")
    return files


def decode_image(path: Path, size: int = 32) -> np.ndarray:
    """uint8 (3, size, size): EXIF-rotated, converted to RGB, centre-cropped to a square, resized (antialiased).

    Raises whatever PIL raises for a broken file, ``DecompressionBombError`` included."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGB")  # palette, greyscale, RGBA, CMYK, 16-bit ... all to 8-bit RGB
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def load_image(path: Path, size: int = 32) -> torch.Tensor:
    """One image file as a uint8 (3, size, size) tensor (see ``decode_image``)."""
    return torch.from_numpy(decode_image(Path(path), size))


def _decode_chunk(args: tuple[Sequence[str], int]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Worker: decode files; (images of the readable ones, [(position, why) of the others])."""
    paths, size = args
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    failed: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(Path(path), size)
        except Exception as e:  # PIL raises many types for broken files; one bad file must not stop the rest
            failed.append((i, f"{type(e).__name__}: {e}"))
    keep = np.ones(len(paths), dtype=bool)
    keep[[i for i, _ in failed]] = False
    return out[keep], failed


def decode_files(
    files: Sequence[Path], size: int = 32, workers: int = 0
) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Decode ``files`` into (uint8 images (N, 3, size, size), positions of the decoded files, [(skipped, why)]).

    ``workers`` processes (0: one per CPU core) decode chunks of files in parallel; the order is kept.
    """
    chunks = [[str(p) for p in files[i : i + _CHUNK]] for i in range(0, len(files), _CHUNK)]
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(files) >= _POOL_MIN_FILES:
        # fork: the workers need only PIL and numpy, and start at once (as DataLoader workers do on Linux).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            results = list(pool.map(_decode_chunk, [(c, size) for c in chunks]))
    else:
        results = [_decode_chunk((c, size)) for c in chunks]
    images, kept, skipped = [], [], []
    for start, (decoded, failed) in zip(range(0, len(files), _CHUNK), results):
        bad = {i for i, _ in failed}
        images.append(decoded)
        kept += [start + i for i in range(min(_CHUNK, len(files) - start)) if i not in bad]
        skipped += [(Path(files[start + i]), why) for i, why in failed]
    stacked = np.concatenate(images) if images else np.zeros((0, 3, size, size), dtype=np.uint8)
    return torch.from_numpy(stacked), kept, skipped


def load_images(
    pattern: str, workers: int = 0, size: int = 32
) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """(images (N, 3, size, size) uint8, their paths, [(skipped path, why)]). Unreadable files are skipped."""
    files = find_files(pattern)
    images, kept, skipped = decode_files(files, size, workers)
    if not kept:
        raise DataError(f"data.predict_path '{pattern}': none of its {len(files)} files is a readable image")
    return images, [files[i] for i in kept], skipped

