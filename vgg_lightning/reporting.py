"""What ``predict`` shows: the seed article's GroundTruth/Predicted lines, accuracy, and a CSV of predictions."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def seed_lines(labels: torch.Tensor, preds: torch.Tensor, names: list[str], count: int = 64) -> list[str]:
    """The article's printout: ground truth and predictions for the first ``count`` images."""
    return [
        "GroundTruth: " + " ".join(f"{names[i]:>5s}" for i in labels[:count].tolist()),
        "Predicted:   " + " ".join(f"{names[i]:>5s}" for i in preds[:count].tolist()),
    ]


class PredictionReport(Callback):
    """Collects predict outputs and, at the end, writes ``predictions.csv`` and prints a summary."""

    def __init__(self) -> None:
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.csv_path: Optional[Path] = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.probs, self.labels = [], []

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.probs.append(outputs["probs"])
        self.labels.append(outputs["labels"])

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.probs or not trainer.is_global_zero:
            return
        probs, labels = torch.cat(self.probs), torch.cat(self.labels)
        names = list(getattr(trainer.datamodule, "class_names", None) or range(probs.shape[1]))
        names = [str(n) for n in names]
        top_p, top_i = probs.topk(min(3, probs.shape[1]), dim=1)
        out_dir = Path(trainer.log_dir) if trainer.log_dir else Path(".")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = out_dir / "predictions.csv"
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "label", "predicted", "probability", "top3"])
            for i in range(len(labels)):
                top3 = ";".join(f"{names[c]}:{p:.4f}" for c, p in zip(top_i[i].tolist(), top_p[i].tolist()))
                w.writerow([i, names[labels[i]], names[top_i[i, 0]], f"{top_p[i, 0]:.4f}", top3])
        tmp.replace(self.csv_path)
        preds = top_i[:, 0]
        for line in seed_lines(labels, preds, names):
            print(line)
        acc = (preds == labels).float().mean().item()
        print(f"Accuracy of the network on the {len(labels)} test images: {100 * acc:.2f} %")
        print(f"Predictions written to {self.csv_path}")


class EpochSummary(Callback):
    """One line per epoch (loss, accuracy, time) when the progress bar is off, e.g. in batch jobs' logs."""

    def __init__(self) -> None:
        self.start = 0.0

    def _active(self, trainer: L.Trainer) -> bool:
        return trainer.progress_bar_callback is None and trainer.is_global_zero

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before the module's own hook logs and resets the training metrics.
        if not self._active(trainer) or not hasattr(pl_module, "epoch_metrics"):
            return
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        train = pl_module.epoch_metrics("train")
        parts += [f"train loss {float(train['train/loss']):.4f}", f"train acc {float(train['train/acc']):.4f}"]
        m = trainer.callback_metrics
        for key, label in (("val/loss", "val loss"), ("val/acc", "val acc")):
            if key in m:
                parts.append(f"{label} {float(m[key]):.4f}")
        parts.append(f"{time.perf_counter() - self.start:.1f} s")
        print(" | ".join(parts), flush=True)
