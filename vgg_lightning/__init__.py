"""VGG on CIFAR and your own class folders with PyTorch Lightning."""

import time

# When the command started, as early as we can tell: a time budget (--trainer.max_time) counts from here.
STARTED = time.monotonic()

from vgg_lightning.datamodule import CIFARDataModule  # noqa: E402
from vgg_lightning.models import ARCHS, build_model  # noqa: E402
from vgg_lightning.module import VGGClassifier  # noqa: E402

__all__ = ["ARCHS", "CIFARDataModule", "VGGClassifier", "build_model"]
__version__ = "0.1.0"
