"""The LightningModule: a VGG net, its loss, optimizer, per-step schedule and torchmetrics metrics."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vgg_lightning.models import build_model


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class VGGClassifier(L.LightningModule):
    """VGG on CIFAR.

    Args:
        arch: ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``, or ``seed`` (the blog article's network).
        batch_norm: BatchNorm after each convolution (the "-BN" variants).
        width: factor on every channel count (0.5 gives a half-width VGG, 4x cheaper).
        head_hidden: width of two hidden FC layers in the head; 0 gives one linear layer from the features.
        dropout: dropout before each FC layer of the head.
        num_classes: set from the data module (``data.num_classes``); do not type it.
        optimizer: ``sgd`` (with momentum, optionally Nesterov) or ``adamw``.
        lr: peak learning rate of the schedule.
        momentum: SGD momentum (``adamw``: beta1).
        nesterov: Nesterov momentum for SGD.
        weight_decay: decoupled for AdamW, L2 for SGD; applied to conv and linear weights only, never to BN
            parameters or biases.
        label_smoothing: cross-entropy label smoothing.
        schedule: ``onecycle`` (OneCycleLR), ``cosine`` (linear warm-up then cosine to 0) or ``constant``;
            stepped after every optimizer step and sized by ``trainer.estimated_stepping_batches``.
        warmup: fraction of all steps spent warming up (OneCycle's ``pct_start``).
        channels_last: NHWC memory format; default: on for CUDA, off on CPU (measured several times slower
            there with BatchNorm).
        compile: ``torch.compile`` the network for training and evaluation.
        ema_decay: keep an exponential moving average of the weights (and BN statistics) with this decay per
            step, and validate, test, predict and export with it; 0 turns it off.
        tta_flip: at evaluation, average the logits of each image and its mirror image.
    """

    def __init__(
        self,
        arch: Literal["vgg11", "vgg13", "vgg16", "vgg19", "seed"] = "vgg16",
        batch_norm: bool = True,
        width: PositiveFloat = 1.0,
        head_hidden: NonNegativeInt = 0,
        dropout: ClosedUnitInterval = 0.0,
        num_classes: PositiveInt = 10,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: PositiveFloat = 0.1,
        momentum: ClosedUnitInterval = 0.9,
        nesterov: bool = True,
        weight_decay: NonNegativeFloat = 5e-4,
        label_smoothing: ClosedUnitInterval = 0.0,
        schedule: Literal["onecycle", "cosine", "constant"] = "onecycle",
        warmup: ClosedUnitInterval = 0.15,
        channels_last: Optional[bool] = None,
        compile: bool = False,
        ema_decay: ClosedUnitInterval = 0.0,
        tta_flip: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(arch, num_classes, batch_norm, width, head_hidden, dropout)
        self.ema: Optional[AveragedModel] = None
        if ema_decay > 0:
            self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        top5 = min(5, num_classes)
        # Training tracks top-1 only: torchmetrics' top-k path calls one_hot, whose range check syncs the GPU.
        self.train_metrics = self._metrics("train/", num_classes, 1)
        self.val_metrics = self._metrics("val/", num_classes, top5)
        self.test_metrics = self._metrics("test/", num_classes, top5)
        # nan_strategy="disable": the NaN check reads a flag back from the GPU every step; _watch_loss covers it
        self.train_loss, self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(3))
        # Per-class views for val and test (the confusion matrix's row sums give per-class accuracy).
        self.val_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.best_val_acc = 0.0
        self.last_report: dict[str, Any] = {}  # the latest val/test epoch's numbers, for callbacks
        self._saved_class_names: list[str] = []
        self._saved_normalization: Optional[tuple] = None  # (mean, std) of the run's data, from the checkpoint
        self._total_steps: Optional[int] = None  # optimizer steps the schedule was sized for
        self._resumed_total_steps: Optional[int] = None
        self._epoch_start = 0.0
        self._epoch_images = 0
        self._first_bad_step: Optional[torch.Tensor] = None

    # validate_args=False: the argument checks read values back from the GPU, a sync in every step. (On an H200
    # the fit path went from 0.59 to 0.80 of a plain loop's speed once per-step self.log calls and such syncs
    # were gone from the step.)
    @staticmethod
    def _metrics(prefix: str, num_classes: int, top5: int) -> MetricCollection:
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
        if top5 > 1:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=top5, average="micro", validate_args=False)
        return MetricCollection(metrics, prefix=prefix)

    # -- forward ----------------------------------------------------------------------------------------------
    def _use_channels_last(self) -> bool:
        cl = self.hparams.channels_last
        return self.device.type == "cuda" if cl is None else cl

    def _net(self):
        if not self.hparams.compile:
            return self.net
        if "_compiled" not in self.__dict__:
            # Kept out of the module tree so checkpoints hold the plain network's keys.
            self.__dict__["_compiled"] = torch.compile(self.net)
        return self.__dict__["_compiled"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        if self.ema is not None and not self.training:
            return self.ema(x)
        return self._net()(x)

    def eval_net(self) -> torch.nn.Module:
        """The network evaluation uses: the EMA copy when ``ema_decay`` is on, else the trained one."""
        return self.ema.module if self.ema is not None else self.net

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation, averaged with the mirrored images' when ``tta_flip`` is on."""
        logits = self(x)
        if self.hparams.tta_flip:
            logits = (logits + self(x.flip(3))) / 2
        return logits

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def setup(self, stage: str) -> None:
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32
        if self._use_channels_last():
            self.net.to(memory_format=torch.channels_last)
            if self.ema is not None:
                self.ema.to(memory_format=torch.channels_last)

    # -- steps ------------------------------------------------------------------------------------------------
    # Each step only updates torchmetrics objects on the device; values are logged once per epoch (and the step
    # loss every log_every_n_steps). A self.log call costs about 1 ms of Python, as much as a small GPU step.
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self._watch_loss(loss)
        self.train_metrics.update(logits.detach(), y)
        self.train_loss.update(loss.detach())
        self._epoch_images += len(y)
        if (self.trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self.predict_logits(x)
        getattr(self, f"{stage}_metrics").update(logits, y)
        getattr(self, f"{stage}_loss").update(F.cross_entropy(logits, y), weight=len(y))
        getattr(self, f"{stage}_confusion").update(logits, y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """The epoch's values of a stage (synced across processes by torchmetrics), e.g. ``val/acc``."""
        values = dict(getattr(self, f"{stage}_metrics").compute())
        values[f"{stage}/loss"] = getattr(self, f"{stage}_loss").compute()
        return values

    def _log_epoch(self, stage: str) -> dict[str, torch.Tensor]:
        values = self.epoch_metrics(stage)
        if stage == "train":
            values["train/loss_epoch"] = values.pop("train/loss")
        self.log_dict(values, prog_bar=stage == "val")
        getattr(self, f"{stage}_metrics").reset()
        getattr(self, f"{stage}_loss").reset()
        return values

    def _log_eval_epoch(self, stage: str) -> None:
        values = self._log_epoch(stage)
        confusion = getattr(self, f"{stage}_confusion")
        matrix = confusion.compute().cpu()
        confusion.reset()
        per_class = (matrix.diag().float() / matrix.sum(1).clamp(min=1)).tolist()
        names = self.class_names()
        self.log_dict({f"{stage}/acc_class/{n}": a for n, a in zip(names, per_class)})
        self.last_report = {
            "stage": stage,
            **{k.split("/", 1)[1]: float(v) for k, v in values.items()},
            "per_class": dict(zip(names, per_class)),
            "confusion": matrix.tolist(),
            "class_names": names,
            "num_images": int(matrix.sum()),
        }
        if stage == "val" and not self.trainer.sanity_checking:
            self.best_val_acc = max(self.best_val_acc, float(values["val/acc"]))
            self.log("hp/best_val_acc", self.best_val_acc)  # the metric of TensorBoard's hparams tab

    def class_names(self) -> list[str]:
        """The data module's class names, else those saved in the checkpoint, else the class indices."""
        names = getattr(self.trainer.datamodule, "class_names", None) if self._trainer is not None else None
        names = names or self._saved_class_names
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def on_validation_epoch_end(self) -> None:
        self._log_eval_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    def on_train_start(self) -> None:
        # Declare the hparams tab's metric once, so TensorBoard lists the run's settings next to its best val/acc.
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.log_hyperparams(self.hparams, {"hp/best_val_acc": self.best_val_acc})

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        x, y = batch
        probs = self.predict_logits(x).float().softmax(dim=1)
        return {"probs": probs.cpu(), "labels": y.cpu()}

    def normalization(self) -> tuple:
        """(mean, std) the run normalized its images with: saved in the checkpoint, else the data set's."""
        from vgg_lightning.datamodule import STATS

        return self._saved_normalization or STATS["cifar100" if self.hparams.num_classes == 100 else "cifar10"]

    @torch.no_grad()
    def classify(self, image) -> tuple[str, float]:
        """(class name, probability) for one image file (any size and mode) or a uint8 (3, 32, 32) tensor."""
        from vgg_lightning.augment import normalize
        from vgg_lightning.images import load_image

        x = image if isinstance(image, torch.Tensor) else load_image(Path(image))
        mean, std = self.normalization()
        was_training = self.training
        self.eval()
        probs = self.predict_logits(normalize(x[None].to(self.device), mean, std)).float().softmax(1)[0]
        self.train(was_training)
        p, i = probs.max(0)
        return self.class_names()[int(i)], float(p)

    # -- non-finite loss: flagged on the device, checked every few steps (a check per step would stall a GPU) --
    def _watch_loss(self, loss: torch.Tensor) -> None:
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        step = torch.full_like(self._first_bad_step, self.global_step)
        self._first_bad_step = torch.where(bad & (self._first_bad_step < 0), step, self._first_bad_step)
        if loss.device.type != "cuda" or self.global_step % 32 == 0:
            self._check_loss()

    def _check_loss(self) -> None:
        if self._first_bad_step is not None and (step := int(self._first_bad_step)) >= 0:
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite at global step {step} (epoch {self.current_epoch})"
            )

    # -- throughput -------------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        self._epoch_start, self._epoch_images = time.perf_counter(), 0

    def on_validation_start(self) -> None:
        self._check_loss()  # before validation ends and a checkpoint could store bad weights

    def on_train_epoch_end(self) -> None:
        self._check_loss()
        self._log_epoch("train")
        seconds = time.perf_counter() - self._epoch_start
        self.log("train/epoch_time_s", seconds, sync_dist=True)
        self.log("train/images_per_s", self._epoch_images * self.trainer.world_size / max(seconds, 1e-9))

    # -- optimization -----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        h = self.hparams
        decay = [p for p in self.net.parameters() if p.ndim > 1]  # conv and linear weights
        no_decay = [p for p in self.net.parameters() if p.ndim <= 1]  # BN weights and all biases
        groups = [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if h.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=h.lr, momentum=h.momentum, nesterov=h.nesterov and h.momentum > 0)
        else:
            opt = torch.optim.AdamW(groups, lr=h.lr, betas=(h.momentum, 0.999))
        if h.schedule == "constant":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self._resumed_total_steps not in (None, total):
            from vgg_lightning.datamodule import ConfigError

            raise ConfigError(
                f"the checkpoint's {h.schedule} schedule was sized for {self._resumed_total_steps} steps, this run's"
                f" for {total}: resume with the --trainer.max_epochs, --data.batch_size and --trainer.devices the"
                " run started with (see its config.yaml)"
            )
        self._total_steps = total
        if h.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=h.lr, total_steps=total, pct_start=max(h.warmup, 1e-3), cycle_momentum=False
            )
        else:
            warm = int(h.warmup * total)

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints: RNG states make a resumed run draw the same augmentations as an uninterrupted one ---------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_acc"] = self.best_val_acc
        checkpoint["schedule_total_steps"] = self._total_steps
        checkpoint["class_names"] = self.class_names()
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "mean"):
            checkpoint["normalization"] = (list(dm.mean), list(dm.std))
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # numpy's state as plain types, so the checkpoint still loads with weights_only=True
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_acc = float(checkpoint.get("best_val_acc", 0.0))
        self._resumed_total_steps = checkpoint.get("schedule_total_steps")
        self._saved_class_names = list(checkpoint.get("class_names", []))
        self._saved_normalization = checkpoint.get("normalization")
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        kind, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(states["python"])


def _numpy_state_to_plain(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
