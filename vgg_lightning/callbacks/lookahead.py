"""Lookahead on the weights (airbench's): a slow copy that the trained weights are pulled back to every few steps.

    python -m vgg_lightning fit ... --trainer.callbacks+=vgg_lightning.callbacks.Lookahead \\
        --trainer.callbacks.decay 0.95 --trainer.callbacks.every 5

Every ``every`` optimizer steps the slow copy moves toward the trained weights and the weights are reset to it,
with a decay of ``decay ** every`` ramped in as (progress of the schedule)^3; the last step ends on the slow copy.
The network's parameters and its floating-point buffers (BatchNorm's statistics) take part. The slow copy travels
in checkpoints (the callback's state), so a resumed run goes on with it.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from vgg_lightning import schedules


def lookahead_tensors(pl_module: L.LightningModule) -> list[torch.Tensor]:
    """The tensors Lookahead averages: the network's parameters, then its floating-point buffers."""
    net = getattr(pl_module, "net", pl_module)
    return [p.data for p in net.parameters()] + [b for b in net.buffers() if b.is_floating_point()]


class Lookahead(Callback):
    def __init__(self, decay: float = 0.95, every: int = 5) -> None:
        if not 0 <= decay <= 1 or every < 1:
            raise ValueError(f"Lookahead needs 0 <= decay <= 1 and every >= 1, got decay={decay}, every={every}")
        self.decay, self.every = decay, every
        self.slow: Optional[list[torch.Tensor]] = None
        self._done_at = -1  # the optimizer step last acted on (accumulated batches share one)

    @override
    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step  # optimizer steps taken
        total = max(1, int(schedules.run_steps(trainer)))
        last = step >= total
        if step == self._done_at or (step % self.every and not last):
            return
        self._done_at = step
        fast = lookahead_tensors(pl_module)
        if self.slow is None:
            self.slow = [t.detach().clone() for t in fast]
            return
        decay = 1.0 if last else self.decay**self.every * min(1.0, step / total) ** 3
        for slow, f in zip(self.slow, fast):
            slow.lerp_(f, 1.0 - decay)
            f.copy_(slow)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"slow": [t.cpu() for t in self.slow] if self.slow is not None else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore(state_dict.get("slow"))

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.slow is None:  # checkpoints from when Lookahead was a model option kept it at the top level
            self._restore(checkpoint.get("lookahead_slow"))

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.slow is not None:
            self.slow = [t.to(pl_module.device) for t in self.slow]

    def _restore(self, slow: Optional[list[torch.Tensor]]) -> None:
        if slow is not None:
            self.slow = [t.clone() for t in slow]
