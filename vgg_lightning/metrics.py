"""Training-stage metric: loss and top-1 accuracy as on-device running sums; an evaluation epoch's report.

A GPU step of VGG-16-BN takes a few milliseconds, about what torchmetrics' MulticlassAccuracy plus MeanMetric
cost in Python per update. This metric adds three sums on the device per step and nothing else (no argument
checks, no host syncs); ``compute`` reads them once per epoch, summed across processes under DDP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torchmetrics import Metric
from typing_extensions import override


class RunningLossAccuracy(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @override
    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        n = target.shape[0]
        self.loss_sum += loss.detach().float() * n
        self.correct += (logits.detach().argmax(1) == target).sum()
        self.count += n

    @override
    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp(min=1)
        return {"loss": self.loss_sum / count, "acc": self.correct.float() / count}


@dataclass
class EvalReport:
    """One validation or test epoch's numbers, as the model computed them (synced across processes)."""

    stage: str  # "val" or "test"
    loss: float
    acc: float
    acc_top5: Optional[float]  # None with fewer than 6 classes
    per_class: dict[str, float]  # accuracy of each class, by name
    confusion: list[list[int]]  # rows: true class, columns: predicted
    class_names: list[str]
    num_images: int

    def as_dict(self) -> dict:
        """The fields worth writing out (``test_metrics.json``): all but the stage, no top-5 when there is none."""
        values = {k: v for k, v in asdict(self).items() if k != "stage"}
        if self.acc_top5 is None:
            values.pop("acc_top5")
        return values
