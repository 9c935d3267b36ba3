"""A data set given as class folders (``DIR/train/<class>/*``, optional ``val/`` and ``test/``), decoded once.

Decoding thousands of JPEG or PNG files takes far longer than an epoch on a GPU, so each split is decoded once
into a cache (``pixel_cache``: a uint8 pixel file, memory-mapped when read, and a meta file of labels, class names,
file list, per-channel mean and std). The cache is keyed by every file's path, size and modification time and by
the image size: an added, removed or changed file rebuilds it. The meta file holds tensors, strings and numbers
only, read back with ``weights_only=True``, so loading it never runs code; a garbled chunk of pixels is decoded
again, anything else off rebuilds the cache: it is never trusted.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vgg_lightning.data import pixel_cache
from vgg_lightning.data.images import decode_files, image_extensions
from vgg_lightning.errors import DataError
from vgg_lightning.files import DiskFullError, display_name
from vgg_lightning.messages import log

# 2: large images shrunk while decoding (images.decode_image), 16-bit greyscale scaled; 3: mapped pixel file
CACHE_VERSION = 3
LAYOUT = (
    "  Expected layout:\n"
    "    DIR/train/<class name>/<image files>   (required; class names are the folder names)\n"
    "    DIR/val/<class name>/<image files>     (optional; else data.val_size images are split off train/)\n"
    "    DIR/test/<class name>/<image files>    (optional; used by `test` only)"
)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/vgg_lightning``, else ``~/.cache/vgg_lightning``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "vgg_lightning"


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: class_name(p.name)
    )


def class_name(folder_name: str) -> str:
    """A class folder's name in Unicode NFC: macOS file systems hand out NFD ("e" + accent) where Linux keeps what
    was written, and the same classes must get the same names and the same order (labels) everywhere."""
    return unicodedata.normalize("NFC", folder_name)


def class_names(data_dir: Path) -> list[str]:
    """The class folder names under ``data_dir/train``, sorted; DataError with the layout when unusable."""
    train = data_dir / "train"
    if not train.is_dir():
        what = "does not exist" if not data_dir.exists() else "has no train/ folder"
        raise DataError(f"data.data_dir '{data_dir}' {what}.\n{LAYOUT}")
    names = [class_name(p.name) for p in _visible_dirs(train)]
    if len(names) < 2:
        raise DataError(
            f"{train} holds {len(names)} class folder{'s' if len(names) != 1 else ''}"
            f"{': ' + names[0] if names else ''}; a classifier needs at least two.\n{LAYOUT}"
        )
    return names


@dataclass
class FileList:
    """The files of one split: image files with labels, and how many other files were ignored."""

    root: Path
    files: list[str]  # relative to root, with "/", in class order
    labels: list[int]
    sizes: list[int]
    mtimes: list[int]
    ignored: int  # non-image files (.txt, .DS_Store, ...)
    classes: list[int]  # labels of the class folders this split has
    skipped_links: list[tuple[str, str]] = field(default_factory=list)  # links not followed, and why

    def key(self, image_size: int) -> str:
        """Changes when a file is added, removed or changed, or the image size changes."""
        h = hashlib.sha256(f"v{CACHE_VERSION} {image_size}\n".encode())
        for f, s, m, y in zip(self.files, self.sizes, self.mtimes, self.labels):
            h.update(f"{f}\0{s}\0{m}\0{y}\n".encode("utf-8", "surrogateescape"))  # any name the OS holds
        return h.hexdigest()


def scan(split_dir: Path, names: list[str]) -> FileList:
    """The image files under ``split_dir/<class>/`` (recursively, hidden ones left out) with their labels."""
    extensions = image_extensions()
    label_of = {n: i for i, n in enumerate(names)}
    found = _visible_dirs(split_dir)
    unknown = [p.name for p in found if class_name(p.name) not in label_of]
    if unknown:
        raise DataError(
            f"{split_dir} has class folders that train/ lacks: {', '.join(unknown)}.\n"
            f"  The classes are train/'s folders: {', '.join(names)}.\n{LAYOUT}"
        )
    files, labels, sizes, mtimes, ignored = [], [], [], [], 0
    skipped: list[tuple[str, str]] = []
    split_real = os.path.realpath(split_dir)
    seen_dirs: set[str] = set()  # real paths of the folders scanned: a link to one is not followed again
    seen_links: set[str] = set()  # real paths of linked files taken
    for folder in found:
        label, pending = label_of[class_name(folder.name)], [folder.name]
        if folder.is_symlink() and (why := _unsafe_link(str(folder), split_real, seen_links)):
            skipped.append((folder.name, why))
            continue
        while pending:  # os.scandir, not Path.rglob: 50,000 files take 0.2 s instead of 0.9 s
            rel = pending.pop()
            real = os.path.realpath(split_dir / rel)
            if real in seen_dirs:
                skipped.append((rel, "a link to a folder already scanned"))
                continue
            seen_dirs.add(real)
            linked_in = not (real == split_real or real.startswith(split_real + os.sep))  # reached through a link
            with os.scandir(split_dir / rel) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    path = f"{rel}/{entry.name}"
                    if entry.name.startswith("."):
                        ignored += not entry.is_dir()
                        continue
                    if entry.is_symlink():
                        why = _unsafe_link(entry.path, split_real, seen_links)
                        if why:
                            skipped.append((path, why))
                            continue
                    if entry.is_dir():
                        pending.append(path)
                    elif os.path.splitext(entry.name)[1].lower() not in extensions:
                        ignored += 1
                    else:
                        if linked_in and not entry.is_symlink():
                            target = os.path.join(real, entry.name)
                            if target in seen_links:
                                skipped.append((path, f"a second link to {target}"))
                                continue
                            seen_links.add(target)
                        try:
                            st = entry.stat()
                        except OSError as e:  # removed while scanning, or unreadable
                            skipped.append((path, e.strerror or str(e)))
                            continue
                        files.append(path)
                        labels.append(label)
                        sizes.append(st.st_size)
                        mtimes.append(st.st_mtime_ns)
    listing = FileList(split_dir, files, labels, sizes, mtimes, ignored, [label_of[class_name(p.name)] for p in found])
    listing.skipped_links = skipped
    return listing


def median_short_side(listing: FileList, sample: int = 256) -> Optional[int]:
    """The median short side of up to ``sample`` of the split's images (spread evenly over its sorted list, so every
    process gets the same answer), read from their headers without decoding; None when none can be read."""
    from PIL import Image

    step = max(1, len(listing.files) // sample)
    sides = []
    for f in listing.files[::step][:sample]:
        try:
            with Image.open(listing.root / f) as img:
                sides.append(min(img.size))
        except Exception:  # unreadable: decoding skips it later and says so
            continue
    return int(np.median(sides)) if sides else None


def _unsafe_link(link: str, split_real: str, seen: set[str]) -> str:
    """Why a symbolic link inside a class folder is not followed ("" when it is safe to follow, once)."""
    target = os.path.realpath(link)
    if not os.path.exists(target):
        return "a dangling link or a link loop"
    if target == split_real or target.startswith(split_real + os.sep) or split_real.startswith(target + os.sep):
        return f"a link into this data set's own folders ({target}): its images would count twice"
    if not os.path.isdir(target):
        if target in seen:
            return f"a second link to {target}"
        seen.add(target)
    return ""


@dataclass
class FolderSplit:
    """One split, decoded: the pixels (memory-mapped from the cache, or in memory) and what goes with them."""

    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # int64 (N,)
    class_names: list[str]
    files: list[str]  # relative to the split folder, one per image
    skipped: list[tuple[str, str]]  # unreadable image files, and why
    ignored: int  # non-image files
    mean: tuple[float, float, float]  # per-channel, of these images, in [0, 1]
    std: tuple[float, float, float]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units."""
    sums = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    # In chunks of about 2**24 values (128 MB as float64): a float copy of the whole set, or of 4,096 photos at
    # 224 px (4.9 GB, and as much again for the squares), would cost many times the set itself.
    per_chunk = max(1, 2**24 // max(1, images[0].numel() if len(images) else 1))
    for chunk in images.split(per_chunk):
        x = chunk.to(torch.float64) / 255
        sums += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    count = max(1, images.numel() // 3)
    mean = sums / count
    std = (squares / count - mean**2).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def cache_base(cache_dir: Path, split_dir: Path, image_size: int) -> Path:
    """One cache per split folder and image size (a rebuild replaces it, so stale caches do not pile up); its two
    files are this name plus ``.pixels`` and ``.meta.pt`` (pixel_cache)."""
    where = split_dir.resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{where.parent.name}_{where.name}")[-60:]
    digest = hashlib.sha1(os.fsencode(where)).hexdigest()[:12]
    return cache_dir / f"{slug}-{digest}-{image_size}px"


def count_of(n: int, thing: str) -> str:
    """``1 unreadable file``, ``3 unreadable files``."""
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def _say(message: str) -> None:
    log.info(message)  # from the process that scans or decodes (prepare_data: one per node)


def _decode(
    listing: FileList, names: list[str], image_size: int, workers: int, out: Optional[np.ndarray] = None
) -> FolderSplit:
    """Decode every file of the split (into ``out`` when given: the cache's mapped pixel file); unreadable ones
    are named and skipped; a class left empty is an error."""
    t0 = time.perf_counter()
    images, kept, skipped = decode_files([listing.root / f for f in listing.files], image_size, workers, out=out)
    for path, why in skipped:
        _say(f"skipped {display_name(path)}: not a readable image ({why})")
    labels = torch.tensor([listing.labels[i] for i in kept], dtype=torch.long)
    counts = torch.bincount(labels, minlength=len(names)) if len(labels) else torch.zeros(len(names), dtype=torch.long)
    empty = [names[c] for c in listing.classes if counts[c] == 0]
    if empty:
        raise DataError(
            f"{listing.root}: no readable image in class folder{'s' if len(empty) > 1 else ''} "
            f"{', '.join(empty)}"
            + (f" ({count_of(len(skipped), 'unreadable file')} skipped)" if skipped else "")
            + f".\n{LAYOUT}"
        )
    mean, std = channel_stats(images)
    split = FolderSplit(
        images,
        labels,
        names,
        [listing.files[i] for i in kept],
        [(str(p.relative_to(listing.root)), why) for p, why in skipped],
        listing.ignored,
        mean,
        std,  # type: ignore[arg-type]
    )
    _say(
        f"decoded {listing.root}: {len(kept):,} images in {time.perf_counter() - t0:.1f} s"
        + (f"; {count_of(len(skipped), 'unreadable file')} skipped" if skipped else "")
        + (f"; {count_of(listing.ignored, 'non-image file')} ignored" if listing.ignored else "")
    )
    return split


def _build(listing: FileList, names: list[str], image_size: int, workers: int, base: Path, key: str) -> FolderSplit:
    """Decode straight into a new cache (pixel_cache.writing) and map it back read-only."""
    pixel_cache.remove(base)
    with pixel_cache.writing(
        base, len(listing.files), image_size, hint="set --data.cache_dir to a disk with room"
    ) as w:
        split = _decode(listing, names, image_size, workers, out=w.pixels)
        checksums = pixel_cache.chunk_checksums(w.pixels[: len(split.labels)], image_size)
        split.images = torch.empty(0)  # the writable mapping goes before the file is mapped again to be read
        pixels = w.finish(len(split.labels))
    meta = pixel_cache.Meta(
        key,
        image_size,
        split.labels,
        split.class_names,
        split.files,
        split.skipped,
        split.ignored,
        split.mean,
        split.std,
        checksums,
    )
    meta.save(base)
    split.images = pixel_cache.as_tensor(pixels)
    return split


def _read_cache(base: Path, key: str, image_size: int, root: Path, workers: int, check: bool) -> Optional[FolderSplit]:
    """The cached split, mapped, or None (with one line saying why) when it is missing, stale or unreadable. With
    ``check`` every chunk's checksum is compared, and garbled chunks are decoded again in place."""
    if not pixel_cache.meta_path(base).is_file():
        return None
    try:
        meta = pixel_cache.Meta.load(base, key, image_size)
    except Exception as e:  # truncated zip, garbled pickle, wrong contents: rebuild rather than trust it
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        _say(f"cache {pixel_cache.meta_path(base)} is stale or unreadable ({reason}); rebuilding it")
        return None
    pixels = pixel_cache.map_pixels(pixel_cache.pixel_path(base), len(meta.files), meta.image_size)
    if check:
        bad = pixel_cache.garbled_chunks(pixels, meta.image_size, meta.checksums)
        if bad and not _repair(base, meta, root, bad, workers):
            return None
    return FolderSplit(
        pixel_cache.as_tensor(pixels),
        meta.labels,
        meta.class_names,
        meta.files,
        meta.skipped,
        meta.ignored,
        meta.mean,
        meta.std,
    )


def _repair(base: Path, meta: pixel_cache.Meta, root: Path, bad: list[int], workers: int) -> bool:
    """Decode the files of garbled chunks again, into the mapped file; False when that does not restore their
    checksums (then the whole cache is rebuilt)."""
    size, step, n = meta.image_size, pixel_cache.chunk_rows(meta.image_size), len(meta.files)
    rows = sum(min(n, (c + 1) * step) - c * step for c in bad)
    where = pixel_cache.pixel_path(base)
    _say(f"cache {where}: {count_of(len(bad), 'garbled chunk')} ({rows:,} images); decoding them again")
    try:
        pixels = pixel_cache.map_pixels(where, n, size, writable=True)
        for c in bad:
            lo, hi = c * step, min(n, (c + 1) * step)
            images, kept, _ = decode_files([root / f for f in meta.files[lo:hi]], size, workers)
            if len(kept) != hi - lo:
                return False
            pixels[lo:hi] = images.numpy()
        pixels.flush()
    except OSError as e:  # a read-only cache folder: rebuild into memory instead
        _say(f"could not repair {where} ({e.strerror or e})")
        return False
    return not pixel_cache.garbled_chunks(pixels, size, meta.checksums)


def load_split(
    data_dir: Path,
    split: str,
    names: list[str],
    image_size: int,
    cache_dir: Path,
    workers: int = 0,
    build: bool = True,
    listing: Optional[FileList] = None,
) -> Optional[FolderSplit]:
    """The decoded split ``data_dir/<split>``: mapped from the cache when it is current, else decoded into a new
    cache (``build``) or into memory.

    None when the split folder does not exist. ``build`` is for the one process per node that writes the cache
    (prepare_data); it also checks every chunk of a cache it finds. The others (DDP ranks, after it) map the cache
    as it is, and decode into memory only where it could not be written. ``listing``: the split's ``scan``, where
    the caller has just made it."""
    split_dir = data_dir / split
    if not split_dir.is_dir():
        return None
    listing = listing or scan(split_dir, names)
    if build:  # said once (prepare_data runs once per node)
        for rel, why in listing.skipped_links:
            _say(f"skipped {display_name(split_dir / rel)}: {why}")
    if not listing.files:
        raise DataError(f"{split_dir}: no image files in its class folders ({listing.ignored} other files).\n{LAYOUT}")
    key = listing.key(image_size)
    base = cache_base(cache_dir, split_dir, image_size)
    cached = _read_cache(base, key, image_size, split_dir, workers, check=build)
    if cached is not None:
        return cached
    if build:
        try:
            return _build(listing, names, image_size, workers, base, key)
        except DiskFullError as e:
            _say(f"could not write the cache: {e}; this run decodes into memory, the next one decodes again")
        except OSError as e:
            _say(
                f"could not write the cache {pixel_cache.pixel_path(base)} ({e.strerror or e}); this run decodes into"
                " memory, the next one decodes again. Set --data.cache_dir to a writable folder."
            )
    return _decode(listing, names, image_size, workers)
