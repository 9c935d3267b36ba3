"""Per-epoch extras with a fixed cost (TensorBoard figures, rewriting last.ckpt), paced by the epoch's speed.

On a CPU an epoch takes a minute and drawing the figures 0.2-0.7 s, so they come every epoch; on a fast GPU an
epoch takes half a second, and the same figures every epoch would cost as much as training. So each extra runs
when its own measured cost is at most ``share`` of the time since it last ran, and always at the end of training:
the same rule gives "every epoch" on a CPU and "every few seconds" on a GPU.

Under DDP each process has its own clock, so an extra that every rank takes part in (a checkpoint save waits for
all ranks) takes rank 0's decision, broadcast: ranks that decided apart would wait for each other forever.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from vgg_lightning.progress import is_last_validation


class Pace:
    """Decides whether an extra is due; ``ran(seconds)`` records what it cost."""

    def __init__(self, share: float = 0.05) -> None:
        self.share = share
        self.cost = 0.0  # seconds the extra took last time (0: not measured yet, so it runs)
        self.total = 0.0  # seconds it took in all
        self.last = time.perf_counter()

    def due(self, trainer: L.Trainer, all_ranks: bool = False) -> bool:
        """Whether the extra should run now. ``all_ranks``: every rank calls this at the same point and gets rank 0's
        answer (for extras that are collective operations, like saving a checkpoint)."""
        due = is_last_validation(trainer) or self.cost <= self.share * (time.perf_counter() - self.last)
        if all_ranks and trainer.world_size > 1:
            due = bool(trainer.strategy.broadcast(due, src=0))
        return due

    def ran(self, seconds: float) -> None:
        self.cost, self.last = seconds, time.perf_counter()
        self.total += seconds


class SanityTiming(Callback):
    """Times the sanity-check validation: ``sanity_s_per_batch`` (None until measured) estimates what a validation
    batch costs before the first real validation has run. The first batch is left out when there are more: on a GPU
    it carries the warm-up (cudnn autotuning, allocations), measured on an H200 as seconds against milliseconds for
    the next, which made a 1-minute run forecast at 5. Subclasses set ``clock``."""

    clock: Callable[[], float] = time.monotonic
    sanity_s_per_batch: Optional[float] = None
    _sanity_start = 0.0
    _sanity_ends: list[float] = []

    @override
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sanity_start = self.clock()
        self._sanity_ends = []

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
        if trainer.sanity_checking:
            if pl_module.device.type == "cuda":  # the batch's kernels, not only their launch
                torch.cuda.synchronize(pl_module.device)
            self._sanity_ends.append(self.clock())

    @override
    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ends = self._sanity_ends
        if len(ends) >= 2:
            self.sanity_s_per_batch = (ends[-1] - ends[0]) / (len(ends) - 1)
        elif ends:
            self.sanity_s_per_batch = ends[0] - self._sanity_start
