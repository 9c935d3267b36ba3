"""VGG on CIFAR with PyTorch Lightning."""

from vgg_lightning.datamodule import CIFARDataModule
from vgg_lightning.models import ARCHS, build_model
from vgg_lightning.module import VGGClassifier

__all__ = ["ARCHS", "CIFARDataModule", "VGGClassifier", "build_model"]
__version__ = "0.1.0"
