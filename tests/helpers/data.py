"""Data the tests write for themselves: tiny CIFAR files in the official python format (pickle protocol 2) and
tiny class-folder trees (PNG and JPEG, odd sizes, grey and RGBA)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from vgg_lightning.data.datamodule import ImageDataModule

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def learnable_images(labels: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """Rows of 3072 uint8 pixels whose mean colour depends on the class, so a net can learn them."""
    base = (labels[:, None] * 255 // max(1, num_classes - 1)).astype(np.int32)
    noise = rng.integers(-40, 40, size=(len(labels), 3072))
    channel_shift = np.repeat(np.array([0, 40, -40]), 1024)[None, :] * (labels[:, None] % 2)
    return np.clip(base + noise + channel_shift, 0, 255).astype(np.uint8)


def write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 40, test: int = 40, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        labels = rng.integers(0, 10, size=n)
        write_pickle(
            folder / name,
            {
                "batch_label": f"{name} of a tiny test copy",
                "labels": labels.tolist(),
                "data": learnable_images(labels, rng, 10),
                "filenames": [f"img_{i:05d}.png" for i in range(n)],
            },
        )
    write_pickle(
        folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    )
    return folder


def write_cifar100(root: Path, train: int = 120, test: int = 40, seed: int = 0) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", train), ("test", test)):
        fine = rng.integers(0, 100, size=n)
        write_pickle(
            folder / name,
            {
                "filenames": [f"img_{i}.png" for i in range(n)],
                "batch_label": f"{name} tiny",
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
                "data": learnable_images(fine, rng, 100),
            },
        )
    write_pickle(
        folder / "meta",
        {
            "fine_label_names": [f"class_{i}" for i in range(100)],
            "coarse_label_names": [f"super_{i}" for i in range(20)],
        },
    )
    return folder


COLOURS = {"bird": (30, 60, 220), "cat": (220, 40, 40), "dog": (40, 200, 60)}


def write_image(path: Path, colour, size=(40, 30), mode="RGB", seed=0) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None, :] + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
    img = Image.fromarray(pixels.astype(np.uint8), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_tree(root: Path, split: str, per_class: int, classes=tuple(COLOURS), seed: int = 0) -> Path:
    """``root/split/<class>/`` with PNG and JPEG files of odd sizes; every fourth one grey, every fifth RGBA."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            mode = "L" if i % 4 == 3 else "RGBA" if i % 5 == 4 else "RGB"
            ext = "png" if i % 2 else "jpg"
            if mode == "RGBA":
                ext = "png"
            size = (33 + (i * 7) % 30, 32 + (i * 11) % 40)
            write_image(
                root / split / name / f"{i:03d}.{ext}", COLOURS[name], size, mode, seed=seed * 1000 + c * 100 + i
            )
    return root


def dm_for(root: Path, tmp_path: Path, **kwargs) -> ImageDataModule:
    kwargs = {"val_size": 6, "batch_size": 8, "cache_dir": str(tmp_path / "cache"), **kwargs}
    return ImageDataModule(dataset="folder", data_dir=str(root), **kwargs)


def tiny_folder_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--data.dataset",
        "folder",
        "--data.data_dir",
        str(root),
        "--data.val_size",
        "6",
        "--data.batch_size",
        "8",
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--model.net.arch",
        "vgg11",
        "--model.net.width",
        "0.125",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]
