"""Users' own image files for ``predict``: any size and mode, brought to 32x32 RGB uint8 like CIFAR."""

from __future__ import annotations

import glob
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from vgg_lightning.cifar_files import DataError


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


def load_image(path: Path, size: int = 32) -> torch.Tensor:
    """uint8 (3, size, size): EXIF-rotated, converted to RGB, centre-cropped to a square, resized (antialiased)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img = img.convert("RGB")  # palette, greyscale, RGBA, CMYK, 16-bit ... all to 8-bit RGB
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR, reducing_gap=3.0)
        array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def load_images(pattern: str, workers: int = 0) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """(images (N, 3, 32, 32) uint8, their paths, [(skipped path, why)]). Unreadable files are skipped."""
    files = find_files(pattern)

    def one(path: Path):
        try:
            return load_image(path), None
        except Exception as e:  # PIL raises many types for broken or non-image files
            return None, f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, files))
    kept = [(p, img) for p, (img, _) in zip(files, results) if img is not None]
    skipped = [(p, why) for p, (img, why) in zip(files, results) if img is None]
    if not kept:
        raise DataError(f"data.predict_path '{pattern}': none of its {len(files)} files is a readable image")
    return torch.stack([img for _, img in kept]), [p for p, _ in kept], skipped
