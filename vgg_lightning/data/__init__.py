"""The data path: CIFAR files and class folders decoded once into uint8 tensors, served in batches by an in-memory
loader, augmented as whole batches on the training device.

- ``datamodule``: ``ImageDataModule``, the LightningDataModule (CIFAR-10/100 or class folders, splits, normalization)
- ``loader``: ``TensorBatchLoader``, seeded, sharded per DDP rank, stateful for mid-epoch resumes
- ``cifar_files``: the official CIFAR archives: download, verification, a restricted unpickler
- ``image_folders``: class folders: scanning, the decoded cache
- ``images``: image files to uint8 tensors (the one decoding path, for folders and ``predict``)
- ``augment``: crop, flip, Cutout and normalization on whole batches
"""

from vgg_lightning.data.datamodule import STATS, CIFARDataModule, ImageDataModule
from vgg_lightning.data.loader import TensorBatchLoader

__all__ = ["STATS", "CIFARDataModule", "ImageDataModule", "TensorBatchLoader"]
