"""Pictures for TensorBoard after validation epochs: predictions on validation images and the confusion matrix."""

from __future__ import annotations

import time
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from vgg_lightning.callbacks.pacing import Pace
from vgg_lightning.data.augment import denormalize
from vgg_lightning.metrics import EvalReport


def prediction_grid(images: torch.Tensor, preds: list[int], labels: list[int], names: list[str], cols: int = 4):
    """A figure of uint8 images titled "predicted (true)", wrong ones in red, sized for TensorBoard's image card.

    TensorBoard shrinks an image to its card (about 350-450 px wide at a 1400 px window), so the figure is drawn
    about that wide, each thumbnail at twice its size with 11 px labels: readable without zooming. One image and one
    axes with text on it: 64 subplots took 2.3 s to draw on a 2-core CPU, this about 0.2 s.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = max(1, (n + cols - 1) // cols)
    side = images.shape[-1]
    scale = max(1, 64 // side)  # thumbnails 64 px or more
    thumb = side * scale
    cell_w, cell_h = thumb + 40, thumb + 34  # room for a label as wide as "automobile" and two lines under it
    canvas = torch.full((3, rows * cell_h, cols * cell_w), 255, dtype=torch.uint8)
    big = images.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = r * cell_h + 2, c * cell_w + 20
        canvas[:, top : top + thumb, left : left + thumb] = big[i]
    dpi = 100
    fig = plt.figure(figsize=(canvas.shape[2] / dpi, (canvas.shape[1] + 24) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, canvas.shape[1] / (canvas.shape[1] + 24)))
    ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    points = 11 * 72 / dpi  # 11 px
    for i in range(n):
        r, c = divmod(i, cols)
        wrong = preds[i] != labels[i]
        text = f"{names[preds[i]]}\n({names[labels[i]]})" if wrong else names[preds[i]]
        ax.text(
            c * cell_w + cell_w / 2,
            r * cell_h + thumb + 3,
            text,
            ha="center",
            va="top",
            fontsize=points,
            color="red" if wrong else "black",
            linespacing=1.0,
        )
    fig.suptitle("predicted (true, when wrong: red)", fontsize=points, y=0.995, va="top")
    return fig


def confusion_figure(matrix: list[list[int]], names: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = torch.tensor(matrix, dtype=torch.float)
    norm = m / m.sum(1, keepdim=True).clamp(min=1)
    # About 450 px for 10 classes, with 10-11 px text: readable in TensorBoard's card without zooming.
    size = max(4.5, min(20, len(names) * 0.45))
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 20:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7.5)
        ax.set_yticks(range(len(names)), names, fontsize=7.5)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j,
                    i,
                    int(m[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title("confusion matrix (validation)", fontsize=8)
    fig.tight_layout()
    return fig


class ValidationVisuals(Callback):
    """``val/predictions`` (the first validation images) and ``val/confusion_matrix`` figures, drawn when their
    drawing time is at most 5% of the time since they were last drawn, and always after the last validation."""

    def __init__(self, num_images: int = 16, share: float = 0.05) -> None:
        self.num_images = num_images
        self.pace = Pace(share)
        self.drawing = False  # this validation epoch's figures are due
        self.images: Optional[torch.Tensor] = None
        self.preds: list[int] = []
        self.labels: list[int] = []

    @staticmethod
    def _tensorboard(trainer: L.Trainer) -> Optional[Any]:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Rank 0 alone decides, collects and draws, with no collective operation in between (the forward pass
        # below is the plain module's, not DDP's): the other ranks need not agree.
        self.images, self.preds, self.labels = None, [], []
        self.drawing = (
            not trainer.sanity_checking
            and trainer.is_global_zero
            and self._tensorboard(trainer) is not None
            and self.pace.due(trainer)
        )

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        have = 0 if self.images is None else len(self.images)
        if not self.drawing or have >= self.num_images:
            return
        x, y = batch
        x, y = x[: self.num_images - have], y[: self.num_images - have]
        with torch.no_grad():
            self.preds += pl_module(x).argmax(1).tolist()
        self.labels += y.tolist()
        dm = trainer.datamodule
        images = denormalize(x, dm.mean, dm.std).cpu()
        self.images = images if self.images is None else torch.cat([self.images, images])

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        report = getattr(pl_module, "last_report", None)
        if not self.drawing or not isinstance(report, EvalReport) or report.stage != "val":
            return
        t0 = time.perf_counter()
        tb = self._tensorboard(trainer)
        names = report.class_names
        step = trainer.global_step
        if self.images is not None:
            tb.add_figure("val/predictions", prediction_grid(self.images, self.preds, self.labels, names), step)
        tb.add_figure("val/confusion_matrix", confusion_figure(report.confusion, names), step)
        self.pace.ran(time.perf_counter() - t0)
