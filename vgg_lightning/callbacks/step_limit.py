"""``--trainer.max_steps`` that ends a run mid-epoch: its last weights are validated and checkpointed all the same.

Lightning validates at epoch ends, so a run that max_steps ends inside an epoch stops without a last validation:
no best checkpoint of its final weights, and ModelCheckpoint warns that it could not find ``val/acc``. Asking the
trainer to stop at that step instead makes Lightning validate first, as it does for early stopping (a time budget
ends its runs through the same ``stop_validated``). Every DDP rank counts the same steps, so all ranks stop together.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


def stop_validated(trainer: L.Trainer) -> Optional[int]:
    """Ask the trainer to stop after this step with its last weights validated (and so checkpointed), also in an
    epoch that would not validate. Returns the ``check_val_every_n_epoch`` it replaced, to restore after the fit
    (None when it was 1 already)."""
    trainer.should_stop = True
    every = trainer.check_val_every_n_epoch
    if every in (None, 1):
        return None
    trainer.check_val_every_n_epoch = 1
    return every


class ValidateAtMaxSteps(Callback):
    def __init__(self) -> None:
        self._user_check_val_every: Optional[int] = None

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        limit = trainer.max_steps
        if limit is None or limit < 0 or trainer.global_step < limit or trainer.should_stop:
            return
        replaced = stop_validated(trainer)
        if replaced is not None:
            self._user_check_val_every = replaced

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._user_check_val_every is not None:
            trainer.check_val_every_n_epoch = self._user_check_val_every
