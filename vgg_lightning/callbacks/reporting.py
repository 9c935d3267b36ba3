"""What the user reads: the test table, predict's printout (the blog article's GroundTruth/Predicted lines) and CSV,
the per-epoch lines, and the whole run's expected time."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from vgg_lightning.callbacks.pacing import SanityTiming
from vgg_lightning.clock import StepClock, format_duration
from vgg_lightning.files import display_name, write_text_atomically
from vgg_lightning.messages import say
from vgg_lightning.metrics import EvalReport


def seed_lines(labels: torch.Tensor, preds: torch.Tensor, names: list[str], count: int = 64) -> list[str]:
    """The article's printout: ground truth and predictions for the first ``count`` images."""
    return [
        "GroundTruth: " + " ".join(f"{names[i]:>5s}" for i in labels[:count].tolist()),
        "Predicted:   " + " ".join(f"{names[i]:>5s}" for i in preds[:count].tolist()),
    ]


def run_folder(trainer: L.Trainer) -> Path:
    """The run's folder (the working directory without a logger). Under DDP reading ``trainer.log_dir`` is a
    broadcast: every rank must call this, not rank 0 alone."""
    log_dir = trainer.log_dir
    return Path(log_dir) if log_dir else Path(".")


def write_into_run(out_dir: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``name`` in ``out_dir``, atomically."""
    return write_text_atomically(out_dir / name, text)


class PredictionReport(Callback):
    """Collects predict outputs and, at the end, writes ``predictions.csv`` and prints a summary."""

    def __init__(self) -> None:
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.csv_path: Optional[Path] = None

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.probs, self.labels = [], []

    @override
    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.probs.append(outputs["probs"])
        self.labels.append(outputs["labels"])

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            probs, labels = self._gathered(trainer, pl_module)
        elif self.probs:
            probs, labels = torch.cat(self.probs), torch.cat(self.labels)
        out_dir = run_folder(trainer)
        if not self.probs or not trainer.is_global_zero:
            return
        names = (
            pl_module.class_names() if hasattr(pl_module, "class_names") else [str(i) for i in range(probs.shape[1])]
        )
        top_p, top_i = probs.topk(min(3, probs.shape[1]), dim=1)
        dm = trainer.datamodule
        files = list(getattr(dm, "predict_files", []) or [])
        table = io.StringIO()
        w = csv.writer(table)
        w.writerow(["path" if files else "index", "predicted", "probability", "top3", *([] if files else ["label"])])
        for i in range(len(labels)):
            top3 = ";".join(f"{names[c]}:{p:.4f}" for c, p in zip(top_i[i].tolist(), top_p[i].tolist()))
            row = [display_name(files[i]) if files else i, names[top_i[i, 0]], f"{top_p[i, 0]:.4f}", top3]
            w.writerow(row if files else [*row, names[labels[i]]])
        self.csv_path = write_into_run(out_dir, "predictions.csv", table.getvalue())
        if files:
            self._print_files(files, top_i, top_p, names, getattr(dm, "skipped_files", []))
        else:
            preds = top_i[:, 0]
            for line in seed_lines(labels, preds, names):
                print(line)
            acc = (preds == labels).float().mean().item()
            print(f"Accuracy of the network on the {len(labels)} test images: {100 * acc:.2f} %")
        print(f"Predictions written to {self.csv_path}")

    def _gathered(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's predictions, in the data set's order, each image once (DDP gives each rank every
        world_size-th image and pads the shards to equal length by repeating the first images)."""
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        index = loader.indices().cpu()
        probs, labels = torch.cat(self.probs), torch.cat(self.labels)
        index = index[: len(labels)]
        device = pl_module.device  # NCCL gathers device tensors only
        gathered = [trainer.strategy.all_gather(t.to(device)).cpu() for t in (probs, labels, index)]
        probs, labels, index = (g.reshape(-1, *g.shape[2:]) for g in gathered)
        order = torch.argsort(index, stable=True)
        index, probs, labels = index[order], probs[order], labels[order]
        first = torch.ones(len(index), dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]  # padding repeats an image: keep it once
        return probs[first], labels[first]

    @staticmethod
    def _print_files(files, top_i, top_p, names, skipped, shown: int = 20) -> None:
        width = min(60, max(len(display_name(p)) for p in files[:shown]))
        print(f"{'image':<{width}s}  {'predicted':<12s} {'prob':>6s}  runners-up")
        for i, path in enumerate(files[:shown]):
            rest = ", ".join(f"{names[c]} {p:.2f}" for c, p in zip(top_i[i, 1:].tolist(), top_p[i, 1:].tolist()))
            print(f"{display_name(path)[-width:]:<{width}s}  {names[top_i[i, 0]]:<12s} {top_p[i, 0]:6.3f}  {rest}")
        if len(files) > shown:
            print(f"... and {len(files) - shown} more in the CSV")
        for path, why in skipped:
            say(f"skipped {display_name(path)}: not a readable image ({why})")


class EpochSummary(Callback):
    """Times each training epoch (logged as ``train/epoch_time_s`` and ``train/images_per_s``) and, when the
    progress bar is off (batch jobs' logs), prints one line per epoch: loss, accuracy, time."""

    def __init__(self) -> None:
        self.start = 0.0
        self.images = 0

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.images = time.perf_counter(), 0  # a run resumed mid-epoch starts no epoch

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.images = time.perf_counter(), 0

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.images += len(batch[1])

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before the module's own hook logs and resets the training metrics.
        if self.images == 0:
            return  # resumed at an epoch's end: the epoch ran (and was reported) before the checkpoint
        seconds = time.perf_counter() - self.start
        # Each rank's own time, not synced: a synced value is reduced lazily, wherever it is first read, and only
        # rank 0 reads it early (the progress bar), so the ranks would enter different collectives and hang.
        pl_module.log("train/epoch_time_s", seconds)
        pl_module.log("train/images_per_s", self.images * trainer.world_size / max(seconds, 1e-9))
        # Computed on every rank (a collective under DDP; torchmetrics keeps the result for the module's own hook).
        train = pl_module.epoch_metrics("train") if hasattr(pl_module, "epoch_metrics") else {}
        if trainer.progress_bar_callback is not None or not trainer.is_global_zero:
            return
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if train:
            parts += [f"train loss {float(train['train/loss']):.4f}", f"train acc {float(train['train/acc']):.4f}"]
        m = trainer.callback_metrics
        for key, label in (("val/loss", "val loss"), ("val/acc", "val acc")):
            if key in m:
                parts.append(f"{label} {float(m[key]):.4f}")
        parts.append(f"{seconds:.1f} s")
        print(" | ".join(parts), flush=True)


class RunForecast(SanityTiming):
    """One line, once the first steps are timed, with the whole run's expected time, for runs without a time budget
    (a budget says its own plan). On a CPU, where the GPU recipes take hours, it names the recipe that fits in 15
    minutes. Runs expected to take under ``min_s`` say nothing."""

    def __init__(self, skip: int = 10, measure: int = 20, min_s: float = 120.0, clock=time.perf_counter) -> None:
        self.skip, self.measure, self.min_s, self.clock = skip, measure, min_s, clock
        self._steps = StepClock(clock)
        self._done = False
        self._started = clock()

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._done:
            return
        from vgg_lightning.callbacks.budget import TimeBudget

        if any(isinstance(cb, TimeBudget) for cb in trainer.callbacks) or trainer.fast_dev_run:
            self._done = True
            return
        now = self._steps.batch_start(batch_idx)
        if len(self._steps.times) >= self.skip + self.measure:
            self._done = True
            self._forecast(trainer, now)

    def _forecast(self, trainer: L.Trainer, now: float) -> None:
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            return
        accumulate = max(1, int(trainer.accumulate_grad_batches))
        timed = self._steps.times[self.skip :]
        batch_s = sum(timed) / len(timed)
        per_epoch = max(1, int(trainer.num_training_batches))
        batches_left = max(0, int(steps) * accumulate - trainer.global_step * accumulate)
        epochs = math.ceil(int(steps) * accumulate / per_epoch)
        epochs_left = math.ceil(batches_left / per_epoch)
        val_s = (self.sanity_s_per_batch or 0.0) * sum(trainer.num_val_batches) if trainer.num_val_batches else 0.0
        total = now - self._started + batches_left * batch_s + epochs_left * val_s
        if total < self.min_s:
            return
        images = getattr(trainer.datamodule, "hparams", {}).get("batch_size", 0) * trainer.world_size
        rate = f", {images / batch_s:,.0f} img/s" if images else ""
        expected = format_duration(total, whole_minutes=True)
        line = f"expected: about {expected} for {epochs} epochs ({int(steps):,} steps at {batch_s:.3f} s{rate})"
        if trainer.strategy.root_device.type == "cpu" and total > 15 * 60:
            line += (
                ". On this CPU, `--config configs/cpu.yaml` trains the best VGG that fits in 15 minutes, and"
                " `--trainer.max_time DD:HH:MM:SS` plans any recipe into the time you have"
            )
        say(line)


def format_report(report: EvalReport) -> str:
    """The test table: overall loss/top-1/top-5, then per-class accuracy with class names."""
    lines = [
        f"Test results on {report.num_images} images",
        f"  {'loss':<14s} {report.loss:.4f}",
        f"  {'top-1 accuracy':<14s} {100 * report.acc:.2f} %",
    ]
    if report.acc_top5 is not None:
        lines.append(f"  {'top-5 accuracy':<14s} {100 * report.acc_top5:.2f} %")
    lines.append("  per class:")
    for name, acc in report.per_class.items():
        lines.append(f"    {name:<14s} {100 * acc:6.2f} %")
    return "\n".join(lines)


class TestReport(Callback):
    """After ``test``: print the table and write ``test_metrics.json`` into the run's folder."""

    def __init__(self) -> None:
        self.json_path: Optional[Path] = None

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = getattr(pl_module, "last_report", None)
        out_dir = run_folder(trainer)
        if not isinstance(report, EvalReport) or report.stage != "test" or not trainer.is_global_zero:
            return
        print(format_report(report), flush=True)
        values = {**report.as_dict(), "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None}
        self.json_path = write_into_run(out_dir, "test_metrics.json", json.dumps(values, indent=2))
        print(f"Test metrics written to {self.json_path}", flush=True)
