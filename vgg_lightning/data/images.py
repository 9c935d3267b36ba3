"""Image files to uint8 tensors: one decoding path for ``predict`` and for class-folder data sets.

Any format PIL reads, any size and mode: EXIF-rotated, converted to RGB, centre-cropped to a square and resized
(antialiased) to ``size`` x ``size``. Many files are decoded in worker processes.
"""

from __future__ import annotations

import ctypes
import glob
import math
import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from vgg_lightning.errors import DataError

# Below this many files a process pool costs more than it saves.
_POOL_MIN_FILES = 256
_CHUNK = 500


# The raster formats the project decodes. PIL otherwise picks a decoder by the file's content, whatever its name:
# a ".jpg" holding PostScript would go to Ghostscript (an interpreter) where it is installed.
RASTER_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM", "TGA", "ICO", "JPEG2000", "AVIF")
# Decoded large images are first shrunk to about this many times the output side (then resized with antialiasing):
# enough for a sharp result, and a 100-megapixel photo never lives in memory at full size more than once.
_DRAFT_FACTOR = 3
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose does).
_ORIENTATION = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def raster_formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    return tuple(f for f in RASTER_FORMATS if f in Image.OPEN)


def image_extensions() -> set[str]:
    """File endings of the raster formats decoded (``.jpg``, ``.png``, ``.webp``, ``.bmp``, ...), lower case."""
    from PIL import Image

    formats = set(raster_formats())
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in formats}


def find_files(pattern: str) -> list[Path]:
    """A file, every file in a folder (recursively), or a glob's matches; sorted, hidden files left out (inside
    the folder given: the path to it may pass through ``..`` or a hidden folder)."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path))]
    else:
        # glob's wildcards do not match names starting with a dot
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    files.sort()
    if not files:
        raise DataError(f"data.predict_path '{pattern}': no such file, or no files in that folder or glob")
    return files


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def decode_image(path: Path, size: int = 32) -> np.ndarray:
    """uint8 (3, size, size): EXIF-rotated, converted to RGB, centre-cropped to a square, resized (antialiased).

    Only the raster formats in RASTER_FORMATS are opened. 16-bit images are scaled to 8 bits (not clipped). A large
    image is shrunk while it is decoded (JPEG's DCT scaling) or right after (an integer box reduction), so memory
    stays near one full-size copy at most. Raises whatever PIL raises for a broken file, ``DecompressionBombError``
    and ``UnidentifiedImageError`` (another format) included."""
    from PIL import Image

    with Image.open(path, formats=raster_formats()) as src:
        orientation = src.getexif().get(0x0112)
        w, h = src.size
        scale = _DRAFT_FACTOR * size / max(1, min(w, h))
        if scale < 1:
            src.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))  # JPEG only; else no-op
        src.load()
        img = src
        factor = int(min(img.size) // (_DRAFT_FACTOR * size))
        if factor >= 2 and img.mode not in ("P", "1"):
            img = img.reduce(factor)  # a box filter: the full-size copy is freed when src closes
        img = _to_8_bit(img)
        if img is src:
            img = src.copy()  # src's pixels go when the file closes
    if orientation in _ORIENTATION:
        img = img.transpose(getattr(Image.Transpose, _ORIENTATION[orientation]))
    img = img.convert("RGB")  # palette, greyscale, RGBA, CMYK ... all to 8-bit RGB
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def _to_8_bit(img):
    """16-bit (and 32-bit integer) greyscale to 8 bits by scaling; PIL's convert would clip at 255 (nearly white)."""
    from PIL import Image

    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    values = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or values.max(initial=0) > 255:
        values = values / 257.0  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def load_image(path: Path, size: int = 32) -> torch.Tensor:
    """One image file as a uint8 (3, size, size) tensor (see ``decode_image``)."""
    return torch.from_numpy(decode_image(Path(path), size))


def _decode_chunk(args: tuple[Sequence[str], int]) -> tuple[np.ndarray, list[tuple[int, str]], int]:
    """Worker: decode files; (images of the readable ones, [(position, why) of the others], number of files)."""
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
    return out[keep], failed, len(paths)


def decode_files(
    files: Sequence[Path], size: int = 32, workers: int = 0, out: Optional[np.ndarray] = None
) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Decode ``files`` into (uint8 images (N, 3, size, size), positions of the decoded files, [(skipped, why)]).

    ``out``: a (len(files), 3, size, size) uint8 array to decode into (a memory-mapped cache file); the images
    returned are its first rows then. Default: a new array in memory.

    ``workers`` processes (0: one per CPU core) decode chunks of files in parallel; the order is kept. Each chunk is
    copied into one array as it arrives and then dropped, so memory holds the decoded set once plus the chunks in
    flight (no list of chunks joined at the end). A worker that dies (the system killed it for memory, a decoder
    crashed) loses its chunk, not the command: the chunks it took down are decoded again in halves until the one
    file that kills a worker is found, named and skipped.
    """
    chunks = [(i, [str(p) for p in files[i : i + _CHUNK]]) for i in range(0, len(files), _CHUNK)]
    if out is None:
        out = np.empty((len(files), 3, size, size), dtype=np.uint8)  # pages are only used where rows are written
    failed: dict[int, str] = {}

    def take(start: int, result: tuple[np.ndarray, list[tuple[int, str]], int]) -> None:
        decoded, bad, count = result
        bad_rows = {i for i, _ in bad}
        rows = [start + i for i in range(count) if i not in bad_rows]
        if len(rows) == count:
            out[start : start + count] = decoded
        elif rows:
            out[rows] = decoded
        failed.update({start + i: why for i, why in bad})

    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(files) >= _POOL_MIN_FILES:
        _decode_in_pool(chunks, size, workers, take)
    else:
        for start, paths in chunks:
            take(start, _decode_chunk((paths, size)))
    kept = [i for i in range(len(files)) if i not in failed]
    if failed:  # close the gaps in place, row by row: no second copy of the set
        for row, i in enumerate(kept):
            if row != i:
                out[row] = out[i]
    skipped = [(Path(files[i]), failed[i]) for i in sorted(failed)]
    return torch.from_numpy(out[: len(kept)]), kept, skipped


def _decode_in_pool(
    chunks: list[tuple[int, list[str]]], size: int, workers: int, take: Callable[[int, tuple], None]
) -> None:
    """Decode in worker processes, handing each chunk's (images, failed, count) to ``take`` as it is done; see
    decode_files for lost workers."""
    # fork: the workers need only PIL and numpy, and start at once (as DataLoader workers do on Linux).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    while chunks:
        lost: list[tuple[int, list[str]]] = []
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(
            min(workers, len(chunks)), mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            futures = deque((start, paths, pool.submit(_decode_chunk, (paths, size))) for start, paths in chunks)
            while futures:  # popped, so a chunk's images are freed once taken
                start, paths, future = futures.popleft()
                try:
                    take(start, future.result())
                except BrokenProcessPool:  # every chunk not finished when the worker died lands here
                    lost.append((start, paths))
                del future
        chunks = []
        for start, paths in lost:
            if len(paths) == 1:
                empty = np.zeros((0, 3, size, size), dtype=np.uint8)
                why = "the decoding process died on it (out of memory, or a crash in the decoder)"
                take(start, (empty, [(0, why)], 1))
            else:
                half = len(paths) // 2
                chunks += [(start, paths[:half]), (start + half, paths[half:])]


def _die_with_parent(parent: int) -> None:
    """Worker start: end with the process that started it (a ``kill -9`` of a run must not leave its decoders
    running, each holding its chunk of images, with nobody to read them)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel sends it when the parent dies
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def load_images(
    pattern: str, workers: int = 0, size: int = 32
) -> tuple[torch.Tensor, list[Path], list[tuple[Path, str]]]:
    """(images (N, 3, size, size) uint8, their paths, [(skipped path, why)]). Unreadable files are skipped."""
    files = find_files(pattern)
    images, kept, skipped = decode_files(files, size, workers)
    if not kept:
        raise DataError(f"data.predict_path '{pattern}': none of its {len(files)} files is a readable image")
    return images, [files[i] for i in kept], skipped
