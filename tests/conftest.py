"""Fixtures: tiny CIFAR copies the tests write for themselves (see helpers/data.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers.data import write_cifar10, write_cifar100


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
