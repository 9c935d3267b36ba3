"""VGG on CIFAR and your own class folders with PyTorch Lightning."""

import time
from importlib.metadata import PackageNotFoundError, version

# When the command started, as early as we can tell: a time budget (--trainer.max_time) counts from here.
STARTED = time.monotonic()

from vgg_lightning.data.datamodule import CIFARDataModule, ImageDataModule  # noqa: E402
from vgg_lightning.models import ARCHS, build_model  # noqa: E402
from vgg_lightning.module import VGGClassifier  # noqa: E402

__all__ = ["ARCHS", "CIFARDataModule", "ImageDataModule", "VGGClassifier", "build_model"]
try:
    __version__ = version("vgg_lightning")  # pyproject.toml's, the one place it is set
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
