"""The LightningModule: a VGG net, its loss, its metrics, and its optimizer and per-step schedule hooked up.

Each technique lives in a module of its own, which this class only calls: the network and its starts (whitening,
dirac) in ``models.py``, the optimizer in ``optim.py`` (Muon in ``muon.py``), the schedules in ``schedules.py``,
test-time views in ``tta.py``. Techniques that act around the training step are callbacks: an EMA of the weights is
Lightning's ``EMAWeightAveraging``, Lookahead is ``callbacks.Lookahead``, and the time budget (``callbacks.budget``)
sizes the schedule through one attribute, ``schedule_steps``. What keeps runs safe lives in
``callbacks/reliability.py``, what the user sees in ``callbacks/reporting.py`` and ``callbacks/visuals.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import ClosedUnitInterval, PositiveInt
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from typing_extensions import override

from vgg_lightning import compat, schedules, tta
from vgg_lightning import pretrained as pretrained_weights
from vgg_lightning.errors import ConfigError
from vgg_lightning.messages import say
from vgg_lightning.metrics import EvalReport, RunningLossAccuracy
from vgg_lightning.models import CONFIGS, NetOptions, first_conv, whiten_init
from vgg_lightning.optim import OptimOptions
from vgg_lightning.precision import prefers_channels_last
from vgg_lightning.progress import is_last_validation
from vgg_lightning.tta import TTAOptions


class VGGClassifier(L.LightningModule):
    """VGG on CIFAR or your own class folders.

    Args:
        net: the network (``models.NetOptions``: ``--model.net.arch``, ``--model.net.width``, ...).
        optim: the optimizer and its schedule (``optim.OptimOptions``: ``--model.optim.name``, ``--model.optim.lr``,
            ...).
        tta: test-time augmentation (``tta.TTAOptions``: ``--model.tta.flip``, ``--model.tta.shift``).
        label_smoothing: cross-entropy label smoothing.
        num_classes: set from the data module (``data.num_classes``); do not type it.
        image_size: side of the input images, set from the data module (``data.image_size``); do not type it.
        channels_last: NHWC memory format; default: on for CUDA, and on CPUs where it measured faster (all we
            measured, see ``precision.py``).
        compile: ``torch.compile`` the network for training and evaluation.

    A new option of the network, the optimizer or the test-time views goes into its group's dataclass, beside the
    code that uses it; this signature stays as it is. An EMA of the weights and Lookahead are callbacks
    (``--trainer.callbacks+=...``): Lightning's ``EMAWeightAveraging`` and ``vgg_lightning.callbacks.Lookahead``.
    """

    def __init__(
        self,
        net: NetOptions = NetOptions(),
        optim: OptimOptions = OptimOptions(),
        tta: TTAOptions = TTAOptions(),
        label_smoothing: ClosedUnitInterval = 0.0,
        num_classes: PositiveInt = 10,
        image_size: PositiveInt = 32,
        channels_last: Optional[bool] = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # Given as dicts by checkpoints, hparams files and plain Python calls; as dataclasses by the CLI.
        self.net_options, self.optim_options, self.tta_options = (
            _as(NetOptions, net),
            _as(OptimOptions, optim),
            _as(TTAOptions, tta),
        )
        if image_size < 32:
            raise ConfigError(f"model.image_size must be at least 32 (five 2x2 poolings), got {image_size}")
        try:
            self.net_options.check()
            batch_norm_everywhere = self.net_options.batch_norm and self.net_options.arch in CONFIGS
            self.optim_options.check(batch_norm_everywhere)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        # Plain values only: checkpoints are read with weights_only=True, which refuses pickled classes.
        self.save_hyperparameters(
            _plain(
                {
                    "net": asdict(self.net_options),
                    "optim": asdict(self.optim_options),
                    "tta": asdict(self.tta_options),
                    "label_smoothing": label_smoothing,
                    "num_classes": num_classes,
                    "image_size": image_size,
                    "channels_last": channels_last,
                    "compile": compile,
                }
            )
        )
        self.net = self.net_options.build(num_classes)
        # Lets the model summary count FLOPs and show each layer's output size.
        self.example_input_array = torch.zeros(1, 3, image_size, image_size)
        top5 = min(5, num_classes)
        self.train_metrics = RunningLossAccuracy()
        self.val_metrics = self._metrics("val/", num_classes, top5)
        self.test_metrics = self._metrics("test/", num_classes, top5)
        # nan_strategy="disable": its NaN check reads a flag back from the GPU every step
        self.val_loss, self.test_loss = MeanMetric(nan_strategy="disable"), MeanMetric(nan_strategy="disable")
        # Per-class views for val and test (the confusion matrix's row sums give per-class accuracy).
        self.val_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.best_val_acc = 0.0
        self.last_report: Optional[EvalReport] = None  # the latest val/test epoch's numbers, for callbacks
        # The schedule's length: a time budget's plan sets it (callbacks.budget); unset, the Trainer's estimate.
        self.schedule_steps: Optional[int] = None
        self._saved_class_names: list[str] = []
        self._saved_normalization: Optional[tuple] = None  # (mean, std) of the run's data, from a checkpoint
        self._resumed_total_steps: Optional[int] = None
        self._channels_last = False  # whether setup() put the weights into channels_last
        self.weights_from_checkpoint = False  # set by the CLI when fit resumes: no pretrained weights to load then

    # validate_args=False: the argument checks read values back from the GPU, a sync in every step.
    @staticmethod
    def _metrics(prefix: str, num_classes: int, top5: int) -> MetricCollection:
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
        if top5 > 1:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=top5, average="micro", validate_args=False)
        return MetricCollection(metrics, prefix=prefix)

    # -- forward ----------------------------------------------------------------------------------------------
    def _use_channels_last(self) -> bool:
        cl = self.hparams.channels_last
        return prefers_channels_last(self.device) if cl is None else cl

    def _net(self):
        if not self.hparams.compile:
            return self.net
        if "_compiled" not in self.__dict__:
            # Kept out of the module tree so checkpoints hold the plain network's keys.
            self.__dict__["_compiled"] = torch.compile(self.net)
        return self.__dict__["_compiled"]

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last:  # inputs follow the weights' layout
            x = x.contiguous(memory_format=torch.channels_last)
        return self._net()(x)

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation, averaged over the test-time views (``tta.py``) when they apply (``tta_now``)."""
        if not self.tta_now():
            return self(x)
        return tta.averaged_logits(self, x, tta.views(self.tta_options.shift))

    def tta_passes(self) -> int:
        """Forward passes per image when test-time augmentation applies."""
        return tta.passes(bool(self.tta_options.flip), self.tta_options.shift)

    def tta_now(self) -> bool:
        """Whether evaluation now averages with mirror images: ``tta.flip`` true, or ``final`` anywhere but in a
        validation of ``fit`` that is not its last (sanity check included)."""
        flip = self.tta_options.flip
        if flip != "final":
            return bool(flip)
        trainer = self._trainer
        return trainer is None or (not trainer.sanity_checking and is_last_validation(trainer))

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.net_options.whiten != "off" and self.net_options.arch in CONFIGS:
            self._whiten_from_data()
        if stage == "fit" and self.net_options.pretrained and not self.weights_from_checkpoint:
            self._load_pretrained()
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
        self._channels_last = self._use_channels_last()
        if self._channels_last:
            self.net.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def check_input_size(self, size: int, option: str) -> None:
        """A ConfigError naming ``option`` where the network cannot take ``size`` x ``size`` images (too small for
        its poolings, or a head sized for another map)."""
        was_training = self.net.training
        self.net.eval()  # one image: BatchNorm in training mode would refuse a 1x1 map for that alone
        try:
            self.net(torch.zeros(1, 3, size, size, device=self.device))
        except RuntimeError:
            arch = self.net_options.arch
            pools = CONFIGS[arch].count("M") if arch in CONFIGS else 0
            need = f"its {pools} 2x2 poolings need {2**pools} or more" if pools else "its head is sized for 32x32"
            raise ConfigError(
                f"{option} {size}: {arch} cannot take {size}x{size} images ({need}); give a larger size, or none:"
                f" --{option} null"
            ) from None
        finally:
            self.net.train(was_training)

    @torch.no_grad()
    def _whiten_from_data(self, count: int = 5000) -> None:
        """``net.whiten``: the first convolution from the first ``count`` training images (the same on every process;
        under DDP rank 0's weights are broadcast anyway). A resumed run's checkpoint replaces it afterwards."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        if not hasattr(dm, "training_sample"):
            raise ConfigError("model.net.whiten needs the training images: use it with this project's data module")
        whiten_init(first_conv(self.net), dm.training_sample(count))

    def _load_pretrained(self) -> None:
        """``net.pretrained``: the convolution stacks from ImageNet weights (``pretrained.py``), once per process
        before training; evaluation commands and resumed runs take all weights from their checkpoint instead."""
        o = self.net_options
        state = pretrained_weights.read(o.pretrained, o.arch, o.batch_norm)
        copied = pretrained_weights.load_into(self.net.features, state, o.pretrained)
        name = f"{o.arch}{'_bn' if o.batch_norm else ''}"
        say(f"pretrained: {name}'s convolution stacks from {o.pretrained} ({copied} tensors); the head starts new")

    # -- steps ------------------------------------------------------------------------------------------------
    # Each step only adds to metric states on the device; values are logged once per epoch (and the step loss
    # every log_every_n_steps). A self.log call costs about 1 ms of Python, as much as a small GPU step.
    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_metrics.update(logits, y, loss)
        if (self.trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self.predict_logits(x)
        getattr(self, f"{stage}_metrics").update(logits, y)
        getattr(self, f"{stage}_loss").update(F.cross_entropy(logits, y), weight=len(y))
        getattr(self, f"{stage}_confusion").update(logits, y)

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """The epoch's values of a stage (synced across processes by torchmetrics), e.g. ``val/acc``."""
        if stage == "train":
            return {f"train/{k}": v for k, v in self.train_metrics.compute().items()}
        values = dict(getattr(self, f"{stage}_metrics").compute())
        values[f"{stage}/loss"] = getattr(self, f"{stage}_loss").compute()
        return values

    def _log_epoch(self, stage: str) -> dict[str, torch.Tensor]:
        values = self.epoch_metrics(stage)
        if stage == "train":
            values["train/loss_epoch"] = values.pop("train/loss")
        else:
            getattr(self, f"{stage}_loss").reset()
        self.log_dict(values, prog_bar=stage == "val")
        getattr(self, f"{stage}_metrics").reset()
        return values

    def _log_eval_epoch(self, stage: str) -> None:
        values = self._log_epoch(stage)
        confusion = getattr(self, f"{stage}_confusion")
        matrix = confusion.compute().cpu()
        confusion.reset()
        per_class = (matrix.diag().float() / matrix.sum(1).clamp(min=1)).tolist()
        names = self.class_names()
        self.log_dict({f"{stage}/acc_class/{n}": a for n, a in zip(names, per_class)})
        top5 = values.get(f"{stage}/acc_top5")
        self.last_report = EvalReport(
            stage=stage,
            loss=float(values[f"{stage}/loss"]),
            acc=float(values[f"{stage}/acc"]),
            acc_top5=float(top5) if top5 is not None else None,
            per_class=dict(zip(names, per_class)),
            confusion=matrix.tolist(),
            class_names=names,
            num_images=int(matrix.sum()),
        )
        if stage == "val" and not self.trainer.sanity_checking:
            self.best_val_acc = max(self.best_val_acc, float(values["val/acc"]))
            self.log("hp/best_val_acc", self.best_val_acc)  # the metric of TensorBoard's hparams tab

    def class_names(self) -> list[str]:
        """The data module's class names, else those saved in the checkpoint, else the class indices."""
        names = getattr(self.trainer.datamodule, "class_names", None) if self._trainer is not None else None
        names = names or self._saved_class_names
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    @override
    def on_train_epoch_end(self) -> None:
        if self.train_metrics.update_called:  # not on a resume at an epoch's end: that epoch was logged before
            self._log_epoch("train")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_eval_epoch("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    @override
    def on_train_start(self) -> None:
        # An epoch shorter than the logging interval would never log the step loss: log it once an epoch then.
        batches = self.trainer.num_training_batches
        if isinstance(batches, int) and 0 < batches < self.trainer.log_every_n_steps:
            self.trainer.log_every_n_steps = batches
        # Declare the hparams tab's metric once, so TensorBoard lists the run's settings next to its best val/acc.
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.log_hyperparams(self.hparams, {"hp/best_val_acc": self.best_val_acc})

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        x, y = batch
        probs = self.predict_logits(x).float().softmax(dim=1)
        return {"probs": probs.cpu(), "labels": y.cpu()}

    # -- using a trained model --------------------------------------------------------------------------------
    def normalization(self) -> tuple:
        """(mean, std) the run normalized its images with: the data module's state in the checkpoint, else the
        data set's (the data module alone owns normalization; the model only reads it back)."""
        from vgg_lightning.data.datamodule import STATS

        return self._saved_normalization or STATS["cifar100" if self.hparams.num_classes == 100 else "cifar10"]

    @torch.no_grad()
    def classify(self, image) -> tuple[str, float]:
        """(class name, probability) for one image file (any size and mode) or a uint8 (3, S, S) tensor."""
        from vgg_lightning.data.augment import normalize
        from vgg_lightning.data.images import load_image

        x = image if isinstance(image, torch.Tensor) else load_image(Path(image), self.hparams.image_size)
        mean, std = self.normalization()
        was_training = self.training
        self.eval()
        probs = self.predict_logits(normalize(x[None].to(self.device), mean, std)).float().softmax(1)[0]
        self.train(was_training)
        p, i = probs.max(0)
        return self.class_names()[int(i)], float(p)

    # -- optimization -----------------------------------------------------------------------------------------
    @override
    def configure_optimizers(self):
        h = self.optim_options
        opt = h.build(self.net, self.device.type)
        if h.schedule == "constant":
            return opt
        total = self.schedule_steps or self._estimated_steps()
        if self.schedule_steps is None and self._resumed_total_steps not in (None, total):
            raise ConfigError(
                f"the checkpoint's {h.schedule} schedule was sized for {self._resumed_total_steps} steps, this run's"
                f" for {total}: resume with the --trainer.max_epochs, --data.batch_size and --trainer.devices the"
                " run started with (see its config.yaml)"
            )
        sched = schedules.build(opt, h.schedule, total, h.warmup)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _estimated_steps(self) -> int:
        """The schedule's length from max_epochs/max_steps; without either, one must be planned (schedule_steps)."""
        estimated = self.trainer.estimated_stepping_batches
        if math.isfinite(estimated):
            return max(1, int(estimated))
        raise ConfigError(
            f"the {self.optim_options.schedule} schedule needs an end: give --trainer.max_epochs, --trainer.max_steps"
            " or --trainer.max_time (or --model.optim.schedule constant)"
        )

    def schedule_length(self) -> Optional[int]:
        """The number of steps the running schedule is sized for now (None without a schedule)."""
        configs = self.trainer.lr_scheduler_configs if self._trainer is not None else []
        return schedules.total_steps(configs[0].scheduler) if configs else None

    @classmethod
    @override
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> "VGGClassifier":  # type: ignore[override]
        """Lightning's, reading a checkpoint from before the option groups too (its flat options regrouped)."""
        if isinstance(checkpoint_path, (str, Path)) and Path(checkpoint_path).is_file():
            from vgg_lightning.checkpoints import read

            saved = read(checkpoint_path).get("hyper_parameters") or {}
            if saved and "net" not in saved:
                kwargs = {**compat.grouped_options(saved), **kwargs}
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # -- checkpoints: what a trained model needs without its data set -------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_acc"] = self.best_val_acc
        checkpoint["schedule_total_steps"] = self.schedule_length()
        checkpoint["class_names"] = self.class_names()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning restores the data module from the key of its class name, after this hook: checkpoints from
        # before the rename keep that state under the old name.
        if "CIFARDataModule" in checkpoint and "ImageDataModule" not in checkpoint:
            checkpoint["ImageDataModule"] = checkpoint["CIFARDataModule"]
        self.best_val_acc = float(checkpoint.get("best_val_acc", 0.0))
        self._resumed_total_steps = checkpoint.get("schedule_total_steps")
        self._saved_class_names = list(checkpoint.get("class_names", []))
        data = checkpoint.get("ImageDataModule") or {}
        if data.get("mean") and data.get("std"):
            self._saved_normalization = (tuple(data["mean"]), tuple(data["std"]))
        elif checkpoint.get("normalization"):  # written by the model itself before the data module owned it
            self._saved_normalization = tuple(tuple(v) for v in checkpoint["normalization"])
        compat.move_model_ema(checkpoint)


def _plain(value: Any) -> Any:
    """Python's own types for option values (the CLI hands out subclasses such as PositiveFloat)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value


def _as(kind: type, value: Any) -> Any:
    """An options dataclass from itself or from a dict (unknown keys named in one message), its values of Python's
    own types: they end up in the optimizer's and schedule's state, which checkpoints hold."""
    if isinstance(value, kind):
        return kind(**_plain(asdict(value)))
    names = {f.name for f in fields(kind)}
    unknown = sorted(set(value or {}) - names)
    if unknown:
        raise ConfigError(f"{kind.__name__} has no option {', '.join(unknown)}; it has {', '.join(sorted(names))}")
    return kind(**_plain(dict(value or {})))
