"""Tiny CIFAR files written by the tests themselves, in the official python format (pickle protocol 2)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

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


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> Path:
    """A data_dir holding a tiny CIFAR-10 copy: 200 training images, 40 test images."""
    data_dir = tmp_path / "data"
    write_cifar10(data_dir)
    return data_dir


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data100"
    write_cifar100(data_dir)
    return data_dir
