"""``--trainer.max_steps`` that ends a run mid-epoch: its last weights are validated and checkpointed all the same.

Lightning validates at epoch ends, so a run that max_steps ends inside an epoch stops without a last validation:
no best checkpoint of its final weights, and ModelCheckpoint warns that it could not find ``val/acc``. Asking the
trainer to stop at that step instead makes Lightning validate first, as it does for early stopping (a time budget
ends its runs through the same ``ValidatedStop``). Every DDP rank counts the same steps, so all ranks stop together.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class ValidatedStop:
    """Asks the trainer to stop after this step with its last weights validated (and so checkpointed), also in an
    epoch that would not validate; ``restore`` puts the user's ``check_val_every_n_epoch`` back after the fit."""

    def __init__(self) -> None:
        self._replaced: Optional[int] = None

    def stop(self, trainer: L.Trainer) -> None:
        trainer.should_stop = True
        if trainer.check_val_every_n_epoch not in (None, 1):
            self._replaced = trainer.check_val_every_n_epoch
            trainer.check_val_every_n_epoch = 1

    def restore(self, trainer: L.Trainer) -> None:
        if self._replaced is not None:
            trainer.check_val_every_n_epoch = self._replaced


class ValidateAtMaxSteps(Callback):
    def __init__(self) -> None:
        self._validated_stop = ValidatedStop()

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        limit = trainer.max_steps
        if limit is None or limit < 0 or trainer.global_step < limit or trainer.should_stop:
            return
        self._validated_stop.stop(trainer)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated_stop.restore(trainer)
