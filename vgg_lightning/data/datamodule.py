"""CIFAR-10/100 or the user's own class folders as a LightningDataModule with a compact data path.

The images stay uint8 tensors (N, 3, S, S) for the whole run: a batch is one index into them, moved to the
training device as 3 KB per 32x32 image, and augmented there as a whole batch (``on_after_batch_transfer``). On a
GPU the data sits in GPU memory where it fits, so there is no host-to-device copy at all. Class folders are decoded
once into a memory-mapped cache (``image_folders``, ``pixel_cache``): memory is bounded by the batch, not the set.
Splits are index sets into one store (``image_sets``), never copies.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
import unicodedata
from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from typing_extensions import override

from vgg_lightning import schedules
from vgg_lightning.data import image_folders, image_sets
from vgg_lightning.data.augment import normalize, resize, train_augment
from vgg_lightning.data.cifar_files import (
    SPECS,
    download_and_extract,
    find_root,
    missing_data_message,
    read_batches,
    read_class_names,
)
from vgg_lightning.data.early_size import EarlySize
from vgg_lightning.data.image_sets import ImageSet
from vgg_lightning.data.images import load_images
from vgg_lightning.data.loader import TensorBatchLoader
from vgg_lightning.errors import ConfigError, DataError
from vgg_lightning.messages import say

# Per-channel statistics of each training set (RGB), as the CIFAR literature uses them.
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASETS = (*SPECS, "folder")
_AHEAD = 3  # batches a loader gathers ahead where it reads a mapped file or feeds a GPU from host memory


class ImageDataModule(L.LightningDataModule):
    """CIFAR-10/100 from the official python archive, or class folders of the user's images; the training images
    are split into train/val by a seeded permutation, and the test set is used by ``test`` only.

    Args:
        dataset: ``cifar10``, ``cifar100``, or ``folder``: ``data_dir/train/<class>/*`` (required),
            ``data_dir/val/<class>/*`` and ``data_dir/test/<class>/*`` (optional), any image format PIL reads.
        data_dir: folder holding (or to receive) the extracted CIFAR archive, or the class folders.
        download: fetch and verify the official CIFAR archive when the files are missing.
        val_size: images of the training files held out for validation (model selection); the test set is used
            by ``test`` only. For ``folder`` with a ``val/`` folder, that folder is the validation set instead.
        split_seed: seed of the train/val split and of the per-epoch shuffling.
        batch_size: images per batch per device (validation and test use the same size).
        num_workers: processes that decode image files (class folders, ``predict`` files); 0: one per CPU core.
        image_size: side of the square images the net sees; class-folder images are centre-cropped and resized to
            it (CIFAR is 32).
        cache_dir: where decoded class folders are cached; default ``$XDG_CACHE_HOME/vgg_lightning`` or
            ``~/.cache/vgg_lightning`` (``data_dir`` may be read-only).
        crop: how training images are cropped: ``pad`` shifts them (a random crop of the image padded by
            ``crop_padding``: CIFAR's), ``resized`` takes a random-resized crop (``crop_scale`` of the area,
            ``crop_ratio`` aspect, resized back: what photo recipes use); ``auto``: ``resized`` for class folders at
            64 px and more, ``pad`` otherwise. Evaluation always sees the whole (centre-cropped) image.
        crop_scale: the random-resized crop's range of areas, as fractions of the image.
        decode_size: side at which class-folder images are decoded and cached; training crops and evaluation
            images are resized from it to ``image_size`` on the device. Default: ``image_size``, or with the
            random-resized crop large enough that its smallest crop is shrunk, never enlarged
            (``image_size / sqrt(crop_scale[0])``, to a multiple of 8: 112 for 64 at 0.35), but no larger than
            the photos themselves (the median short side of a sample of train/'s, down to a multiple of 8: 224 px
            photos at ``image_size`` 224 are stored at 224, not 384). Enlarged crops are blurred, and a net trained
            on blurred images does badly on sharp ones (measured: results.md, photos).
        crop_ratio: the random-resized crop's range of aspect ratios (width / height).
        crop_padding: random-crop padding in pixels for training images with ``crop: pad`` (0 turns it off).
        padding_mode: what fills that padding: ``constant`` black (torchvision's default), ``reflect`` the
            mirrored border pixels (airbench's).
        flip: horizontal flips of training images: ``true`` mirrors each image with probability 1/2 in each batch,
            ``alternate`` mirrors each image in every other epoch (a seeded random half in the first), which
            shows every image both ways in any two epochs (airbench; helps most in short runs), ``false`` none.
        cutout: side of the square Cutout erases from each training image (0 turns it off).
        early_size: train the first ``early_fraction`` of the steps on smaller crops of this side, the rest and
            evaluation at ``image_size``: with ``crop: pad`` a random window of the shifted image at its own scale
            (cuda-convnet's 24x24 crops of CIFAR), with ``resized`` the random-resized crop made at this size
            (progressive resizing). A step costs about (early_size / image_size)^2 of a full one, so a time budget
            fits more (it counts them so). Default: off.
        early_fraction: the share of the schedule's steps trained at ``early_size``.
        early_crop: how ``crop: pad`` makes the early crops: ``window`` (above) or ``downscale``, the whole shifted
            image shrunk to ``early_size`` (antialiased): each object whole, at a smaller scale.
        mean: per-channel mean for normalization; default: the training set's (computed for class folders).
        std: per-channel standard deviation for normalization; default: the training set's.
        data_on_device: on a GPU, keep the images in GPU memory (no per-step host-to-device copy). Default: where
            they take at most half of the GPU's free memory, else they stay in host memory (or the mapped cache)
            and batches are gathered ahead into pinned memory; ``true`` that cannot fit is an error.
        archive_url: download from this mirror (http(s):// or file://) instead of the official site.
        archive_md5: the MD5 of the mirror's archive; required with ``archive_url``.
        predict_path: for ``predict``: an image file, a folder or a glob (PNG, JPEG, ...); default: the test set.
    """

    def __init__(
        self,
        dataset: Literal["cifar10", "cifar100", "folder"] = "cifar10",
        data_dir: str = "data",
        download: bool = True,
        val_size: PositiveInt = 5000,
        split_seed: int = 0,
        batch_size: PositiveInt = 256,
        num_workers: NonNegativeInt = 0,
        image_size: PositiveInt = 32,
        cache_dir: Optional[str] = None,
        crop: Literal["auto", "pad", "resized"] = "auto",
        crop_scale: tuple[float, float] = (0.35, 1.0),
        decode_size: Optional[PositiveInt] = None,
        crop_ratio: tuple[float, float] = (0.75, 1.3333),
        crop_padding: NonNegativeInt = 4,
        padding_mode: Literal["constant", "reflect"] = "constant",
        flip: Union[bool, Literal["alternate"]] = True,
        cutout: NonNegativeInt = 0,
        early_size: Optional[PositiveInt] = None,
        early_fraction: float = 0.5,
        early_crop: Literal["window", "downscale"] = "window",
        mean: Optional[tuple[float, float, float]] = None,
        std: Optional[tuple[float, float, float]] = None,
        data_on_device: Optional[bool] = None,
        archive_url: Optional[str] = None,
        archive_md5: Optional[str] = None,
        predict_path: Optional[str] = None,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
        if Path(data_dir).exists() and not Path(data_dir).is_dir():
            raise ConfigError(f"data.data_dir '{data_dir}' is a file; give a folder (it is created if missing)")
        if archive_url and not archive_md5:
            raise ConfigError("data.archive_url needs data.archive_md5: a download is always verified")
        if flip not in (True, False, "alternate"):
            raise ConfigError(f"data.flip must be true, false or alternate, got {flip!r}")
        if std is not None and any(s <= 0 for s in std):
            raise ConfigError(f"data.std must be positive, got {std}")
        if dataset != "folder" and image_size != 32:
            raise ConfigError(f"data.image_size must be 32 for {dataset} (its images are 32x32), got {image_size}")
        if padding_mode == "reflect" and crop_padding >= image_size:
            raise ConfigError(
                f"data.crop_padding {crop_padding} is too large to reflect a {image_size}-pixel image: give less than"
                f" {image_size}, or --data.padding_mode constant"
            )
        if not (0 < crop_scale[0] <= crop_scale[1] <= 1):
            raise ConfigError(f"data.crop_scale must be two fractions 0 < low <= high <= 1, got {list(crop_scale)}")
        if not (0 < crop_ratio[0] <= crop_ratio[1]):
            raise ConfigError(f"data.crop_ratio must be two aspect ratios 0 < low <= high, got {list(crop_ratio)}")
        if decode_size is not None and (decode_size < image_size or dataset != "folder"):
            raise ConfigError(
                f"data.decode_size ({decode_size}) is for class folders and must be at least data.image_size"
                f" ({image_size})"
            )
        if image_size < 32:
            raise ConfigError(f"data.image_size must be at least 32 (five 2x2 poolings), got {image_size}")
        try:
            self.early = EarlySize(early_size, early_fraction, image_size) if early_size else None
        except ValueError as e:
            raise ConfigError(f"data.early_size / data.early_fraction: {e}") from None
        self.save_hyperparameters()
        self.is_folder = dataset == "folder"
        self.spec = None if self.is_folder else SPECS[dataset]
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else image_folders.default_cache_dir()
        default_mean, default_std = STATS.get(dataset, (None, None))
        self.mean: Optional[tuple] = tuple(mean or default_mean) if (mean or default_mean) else None
        self.std: Optional[tuple] = tuple(std or default_std) if (std or default_std) else None
        self.class_names: list[str] = []
        self.train_set: Optional[ImageSet] = None
        self.val_set: Optional[ImageSet] = None
        self.test_set: Optional[ImageSet] = None
        self.predict_set: Optional[ImageSet] = None
        self.predict_files: list[Path] = []  # the images of predict_set, in order
        self.skipped_files: list[tuple[Path, str]] = []  # unreadable files, and why
        self._folder_splits_loaded: dict[str, Optional[image_folders.FolderSplit]] = {}
        self._host_to_gpu = False  # a GPU run whose images stay in host memory (see _place)
        self._train_loader: Optional[TensorBatchLoader] = None
        self._scanned: dict[str, image_folders.FileList] = {}  # a split's file list scanned early, for its loading
        self._train_loader_state: Optional[dict[str, int]] = None  # from a checkpoint, for the next train loader

    @property
    def image_size(self) -> int:
        return self.hparams.image_size

    @property
    def resized_crop(self) -> bool:
        """Whether training images get the random-resized crop (``crop``; ``auto``: photos at 64 px and more)."""
        crop = self.hparams.crop
        return crop == "resized" or (crop == "auto" and self.is_folder and self.hparams.image_size >= 64)

    @property
    def decode_size(self) -> int:
        """The side class-folder images are decoded and cached at (see the ``decode_size`` option)."""
        h = self.hparams
        if h.decode_size is not None or not self.is_folder:
            return h.decode_size or h.image_size
        if not self.resized_crop:
            return h.image_size
        if self.photos_decoded_small():  # storing photos enlarged adds pixels, not detail
            return max(h.image_size, self._photos_side // 8 * 8)
        return self._crop_decode_size()

    def _crop_decode_size(self) -> int:
        h = self.hparams
        return max(h.image_size, math.ceil(h.image_size / math.sqrt(h.crop_scale[0]) / 8) * 8)

    def photos_decoded_small(self) -> bool:
        """Whether the default decode size is the photos' own (smaller than the crop range asks for)."""
        if self.hparams.decode_size is not None or not self.is_folder or not self.resized_crop:
            return False
        side = self._photos_side
        return side is not None and side < self._crop_decode_size()

    @functools.cached_property
    def _photos_side(self) -> Optional[int]:
        """The median short side of train/'s photos (from a sample of their headers); None without them. Its file
        list is kept for loading the split, which would otherwise scan the folder again."""
        train = self.data_dir / "train"
        if not train.is_dir():
            return None
        self._scanned["train"] = image_folders.scan(train, self._folder_class_names())
        return image_folders.median_short_side(self._scanned["train"])

    def to_image_size(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images at ``image_size`` (decoded larger: resized down, antialiased); the whole image, as
        evaluation sees it."""
        size = self.hparams.image_size
        if images.shape[-1] == size and images.shape[-2] == size:
            return images
        return resize(images, size)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes if self.spec is not None else len(self._folder_class_names())

    def known_class_names(self) -> Optional[list[str]]:
        """The data's class names where they can be read without downloading or decoding anything, else None."""
        if self.is_folder:
            return self._folder_class_names()
        root = find_root(self.data_dir, self.spec)
        if root is None:
            return None
        return read_class_names(root / self.spec.meta_file, self.spec.names_key, self.num_classes)

    def _folder_class_names(self) -> list[str]:
        """train/'s class folder names, read once (DataError with the expected layout when unusable)."""
        if not self.class_names:
            self.class_names = image_folders.class_names(self.data_dir)
        return self.class_names

    # -- files ------------------------------------------------------------------------------------------------
    @override
    def prepare_data(self) -> None:
        """Download CIFAR, or decode and cache class folders: once per node (Lightning calls this on one process)."""
        if self._predicting_files():
            return
        self._check_asked_placement()
        if self.is_folder:
            for split in self._folder_splits():
                self._load_folder_split(split, build=True)
            return
        if find_root(self.data_dir, self.spec) is not None:
            return
        if not self.hparams.download:
            raise DataError(missing_data_message(self.data_dir, self.spec, "files missing and download is off"))
        download_and_extract(self.data_dir, self.spec, self.hparams.archive_url, self.hparams.archive_md5)

    def _predicting_files(self) -> bool:
        trainer = self.trainer
        return self.hparams.predict_path is not None and trainer is not None and trainer.state.fn == "predict"

    def _folder_splits(self) -> list[str]:
        """The class-folder splits a stage needs: train/ always (classes, normalization), val/ and test/ when there."""
        fn = self.trainer.state.fn if self.trainer is not None else None
        wanted = ["train"]
        if fn in (None, "fit", "validate"):
            wanted.append("val")
        if fn in (None, "test", "predict"):
            wanted.append("test")
        return [s for s in wanted if (self.data_dir / s).is_dir()]

    def _load_folder_split(self, split: str, build: bool) -> Optional[image_folders.FolderSplit]:
        """A decoded class-folder split; what prepare_data loaded in this process is not read twice."""
        if split not in self._folder_splits_loaded:
            self._folder_splits_loaded[split] = image_folders.load_split(
                self.data_dir,
                split,
                self._folder_class_names(),
                self.decode_size,
                self.cache_dir,
                self.hparams.num_workers,
                build=build,
                listing=self._scanned.pop(split, None),
            )
        return self._folder_splits_loaded[split]

    def _root(self) -> Path:
        root = find_root(self.data_dir, self.spec)
        if root is None:
            raise DataError(missing_data_message(self.data_dir, self.spec, "files missing"))
        return root

    @override
    def setup(self, stage: Optional[str] = None) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if stage == "fit" and self.early is not None and hasattr(module, "check_input_size"):
            module.check_input_size(self.early.size, "data.early_size")  # before anything is decoded
        from_files = stage == "predict" and self.hparams.predict_path is not None
        if from_files and self.predict_set is None:
            images, self.predict_files, self.skipped_files = load_images(
                self.hparams.predict_path, self.hparams.num_workers, self.hparams.image_size
            )
            self.predict_set = ImageSet(images, torch.full((len(images),), -1, dtype=torch.long))
        need_train = stage in (None, "fit", "validate") and self.train_set is None
        need_test = stage in (None, "test", "predict") and self.test_set is None and not from_files
        if self.is_folder:
            self._setup_folders(need_train, need_test)
        else:
            self._setup_cifar(need_train, need_test, from_files)
        self._place()

    def _setup_cifar(self, need_train: bool, need_test: bool, from_files: bool) -> None:
        # Predicting on image files needs no CIFAR files: the class names then come from the checkpoint.
        if need_train or need_test or (not self.class_names and not from_files):
            root = self._root()
            self.class_names = read_class_names(root / self.spec.meta_file, self.spec.names_key, self.num_classes)
        if need_train:
            images, labels = read_batches(
                [root / f for f in self.spec.train_files], self.spec.label_key, self.num_classes
            )
            self.train_set, self.val_set = self.split(images, labels)
        if need_test:
            self.test_set = ImageSet(*read_batches([root / self.spec.test_file], self.spec.label_key, self.num_classes))

    def _setup_folders(self, need_train: bool, need_test: bool) -> None:
        if not (need_train or need_test):
            return  # predicting on files: the checkpoint brings class names and normalization
        t0 = time.perf_counter()
        # Each process reads the cache prepare_data wrote (once per node); only where it could not be written
        # (a read-only cache folder) does each process decode for itself.
        train = self._load_folder_split("train", build=False)
        assert train is not None
        self.mean = self.mean or train.mean
        self.std = self.std or train.std
        parts, skipped = [], len(train.skipped)
        if need_train:
            val = self._load_folder_split("val", build=False)
            if val is None:
                self.train_set, self.val_set = self.split_files(train.images, train.labels, train.files)
                parts.append(f"{len(self.train_set):,} train + {len(self.val_set):,} val images (split off train/)")
            else:
                self.train_set, self.val_set = ImageSet(train.images, train.labels), ImageSet(val.images, val.labels)
                parts.append(f"{len(train.labels):,} train + {len(val.labels):,} val images (val/)")
                skipped += len(val.skipped)
        if need_test:
            test = self._load_folder_split("test", build=False)
            if test is None:
                raise DataError(
                    f"{self.data_dir} has no test/ folder, so there is nothing to test or predict on. Put test "
                    f"images in {self.data_dir / 'test'}/<class>/, or use `validate`, or `predict "
                    f"--data.predict_path FILES`.\n{image_folders.LAYOUT}"
                )
            self.test_set = ImageSet(test.images, test.labels)
            parts.append(f"{len(test.labels):,} test images")
            skipped += len(test.skipped)
        self._folder_splits_loaded.clear()  # the splits above hold what they need
        size, stored = self.hparams.image_size, self.decode_size
        say(
            f"data: {self.data_dir}: {', '.join(parts)}, {len(self.class_names)} classes, {size}x{size}"
            + (
                f" (decoded at the photos' own size, {stored} px)"
                if self.photos_decoded_small()
                else f" (decoded at {stored}x{stored})"
                if stored != size
                else ""
            )
            + (f", {image_folders.count_of(skipped, 'unreadable file')} skipped" if skipped else "")
            + (
                f", random-resized crops of {self.hparams.crop_scale[0]:g}-{self.hparams.crop_scale[1]:g} of each image"
                if need_train and self.resized_crop
                else ""
            )
            + f" (cache in {self.cache_dir}, {time.perf_counter() - t0:.1f} s)"
        )

    def _checked_val_size(self, images: int) -> int:
        """``val_size``, when it leaves training images; else one message naming both counts."""
        val_size = self.hparams.val_size
        if val_size >= images:
            raise ConfigError(
                f"data.val_size ({val_size}) must be smaller than the {images} training images in {self.data_dir}"
            )
        return val_size

    def split(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[ImageSet, ImageSet]:
        """(train, val) by a permutation seeded with ``split_seed``: disjoint, complete, repeatable; two index
        sets into ``images``, no copy."""
        val_size = self._checked_val_size(len(labels))
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val_idx, train_idx = order[:val_size], order[val_size:]
        return ImageSet(images, labels, train_idx), ImageSet(images, labels, val_idx)

    def split_files(self, images: torch.Tensor, labels: torch.Tensor, files: list[str]) -> tuple[ImageSet, ImageSet]:
        """(train, val) of class-folder images, each file's side decided by a hash of its relative path and
        ``split_seed``: the ``val_size`` files with the smallest hashes validate. Adding or removing a file moves
        no other file, except that one file crosses over when the change falls inside the validation set (the set
        keeps its size), so a resumed run does not train on the images it validated on before."""
        val_size = self._checked_val_size(len(labels))
        seed = self.hparams.split_seed
        # NFC: the same file gets the same side on macOS (NFD names) and elsewhere
        keys = [
            hashlib.blake2b(
                f"{seed}\0{unicodedata.normalize('NFC', f)}".encode("utf-8", "surrogateescape"), digest_size=8
            ).digest()
            for f in files
        ]
        order = sorted(range(len(files)), key=keys.__getitem__)
        val_idx = torch.tensor(sorted(order[:val_size]), dtype=torch.long)
        train_idx = torch.tensor(sorted(order[val_size:]), dtype=torch.long)
        return ImageSet(images, labels, train_idx), ImageSet(images, labels, val_idx)

    def training_sample(self, count: int) -> torch.Tensor:
        """The first ``count`` training images as the model sees them (normalized float, on the CPU): for starts
        computed from the data (``model.net.whiten``)."""
        assert self.train_set is not None and self.mean and self.std, "setup('fit') has not run"
        return normalize(self.to_image_size(self.train_set.head(count).cpu()), self.mean, self.std)

    def _place(self) -> None:
        """The images go to the GPU the run uses where they fit (``image_sets.place_on_device``), said once; else
        loaders gather batches ahead into pinned memory. On a CPU they stay where they are."""
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if device.type != "cuda":
            return
        names = ("train_set", "val_set", "test_set", "predict_set")
        sets = [getattr(self, n) for n in names]
        away = [s for s in sets if s is not None and s.store.device != device]
        if not away:
            return
        free, _ = torch.cuda.mem_get_info(device)
        on_device, line = image_sets.place_on_device(
            image_sets.store_bytes(away), free, self.hparams.data_on_device, str(device)
        )
        say(line)
        self._host_to_gpu = not on_device
        if on_device:
            for name, moved in zip(names, image_sets.move(sets, device)):
                setattr(self, name, moved)

    def _check_asked_placement(self) -> None:
        """An explicit data.data_on_device true that cannot fit: one message before anything is decoded."""
        trainer = self.trainer
        if self.hparams.data_on_device is not True or trainer is None:
            return
        device = trainer.strategy.root_device
        if device.type != "cuda":
            return
        if self.is_folder:
            names = self._folder_class_names()
            count = sum(len(image_folders.scan(self.data_dir / s, names).files) for s in self._folder_splits())
        else:
            count = 60_000  # CIFAR-10 and -100: 50,000 training and 10,000 test images
        size = self.decode_size
        image_sets.place_on_device(count * 3 * size * size, torch.cuda.mem_get_info(device)[0], True, str(device))

    # -- checkpoints carry the normalization (evaluating a checkpoint uses the run's own) and the training loader's
    # position (a run resumed mid-epoch goes on with the batches that epoch had not seen). Lightning 2.6 saves
    # stateful loaders too, but restores them only if the loader is built after the restore, and sizing the
    # schedule (estimated_stepping_batches) builds it before; the data module's state is restored in time.
    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"mean": list(self.mean), "std": list(self.std)} if self.mean and self.std else {}
        if self._train_loader is not None:
            state["train_loader"] = self._train_loader.state_dict()
        if self.early is not None:
            state["early_size"] = self.early.state_dict()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("mean") and state_dict.get("std"):
            self.mean, self.std = tuple(state_dict["mean"]), tuple(state_dict["std"])
        self._train_loader_state = state_dict.get("train_loader")
        if self.early is not None and state_dict.get("early_size"):
            self.early.load_state_dict(state_dict["early_size"])

    # -- loaders ----------------------------------------------------------------------------------------------
    def _reads_ahead(self) -> bool:
        """In-memory CIFAR on a CPU gathers each batch when asked (the fastest there); a mapped class-folder
        cache, or host memory feeding a GPU, is gathered ahead in a thread."""
        return self.is_folder or self._host_to_gpu

    def _loader(self, split: Optional[ImageSet], train: bool) -> TensorBatchLoader:
        assert split is not None, "setup() has not loaded this split"
        ahead = split.store.device.type == "cpu" and self._reads_ahead()
        return TensorBatchLoader(
            split,
            batch_size=self.hparams.batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.hparams.split_seed,
            alternate_flip=train and self.hparams.flip == "alternate",
            prefetch=_AHEAD if ahead else 0,
            pin_memory=self._host_to_gpu and split.store.device.type == "cpu",
        )

    @override
    def train_dataloader(self) -> TensorBatchLoader:
        self._train_loader = self._loader(self.train_set, train=True)
        if self._train_loader_state is not None:
            self._train_loader.load_state_dict(self._train_loader_state)
            self._train_loader_state = None
        return self._train_loader

    @override
    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.val_set, train=False)

    @override
    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.test_set, train=False)

    @override
    def predict_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.predict_set if self.predict_set is not None else self.test_set, train=False)

    # -- on-device transforms ---------------------------------------------------------------------------------
    @override
    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, torch.Tensor):  # the model summary's example input, already a float batch
            return batch
        images, labels = batch
        if images.dtype == torch.uint8:
            if self.mean is None or self.std is None:
                raise ConfigError(
                    "no normalization known: pass --ckpt_path of a trained run, or --data.mean and --data.std"
                )
            training = self.trainer is not None and self.trainer.training
            if not (training and self.resized_crop):
                images = self.to_image_size(images)  # the resized crop takes its windows from the larger image
            if training:
                h = self.hparams
                # "alternate" flips are done by the loader, which knows each image's index
                images = train_augment(
                    images,
                    h.crop_padding,
                    h.flip is True,
                    h.cutout,
                    padding_mode=h.padding_mode,
                    resized_crop=(h.crop_scale, h.crop_ratio) if self.resized_crop else None,
                    size=self._train_size(),
                    downscale=h.early_crop == "downscale",
                )
            images = normalize(images, self.mean, self.std)
        return images, labels

    def _train_size(self) -> int:
        """The side of this training step's images: ``early_size`` in the run's early share, else ``image_size``."""
        if self.early is None:
            return self.hparams.image_size
        return self.early.size_at(self.trainer.global_step, self._schedule_total())

    def _schedule_total(self) -> int:
        """The optimizer steps the run's schedule is sized for (a time budget's plan included)."""
        total = schedules.run_steps(self.trainer)
        if not math.isfinite(total):
            raise ConfigError(
                "data.early_size needs a run with an end: give --trainer.max_epochs, --trainer.max_steps or"
                " --trainer.max_time"
            )
        return int(total)

    def train_work(self, first: int, count: int, total: Optional[int] = None) -> float:
        """Training steps ``first`` .. ``first + count - 1`` of a ``total``-step run (default: this run's schedule),
        counted in full-size steps (what the time budget plans with)."""
        if self.early is None:
            return float(count)
        return self.early.work(first, count, self._schedule_total() if total is None else total)


# The name this class had before it also served class folders; checkpoints written then keep their data module's
# state under it (VGGClassifier.on_load_checkpoint reads it from there).
CIFARDataModule = ImageDataModule
