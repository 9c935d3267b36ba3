"""``--trainer.max_steps`` that ends a run mid-epoch: its last weights are validated and checkpointed all the same.

Lightning validates at epoch ends, so a run that max_steps ends inside an epoch stops without a last validation:
no best checkpoint of its final weights, and ModelCheckpoint warns that it could not find ``val/acc``. Asking the
trainer to stop at that step instead makes Lightning validate first, as it does for early stopping. (A time budget
ends its runs the same way in ``budget.py``.) Every DDP rank counts the same steps, so all ranks stop together.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class ValidateAtMaxSteps(Callback):
    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        limit = trainer.max_steps
        if limit is None or limit < 0 or trainer.global_step < limit or trainer.should_stop:
            return
        trainer.should_stop = True
        if trainer.check_val_every_n_epoch not in (None, 1):
            trainer.check_val_every_n_epoch = 1  # the last weights are validated, also in an epoch that would not be
