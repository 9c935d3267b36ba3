"""Callbacks the tests put into real CLI runs."""

import lightning as L


class StopAfterEpoch(L.Callback):
    """Ends fit cleanly after the given epoch, as an interrupted run would have stopped there."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= self.epoch:
            trainer.should_stop = True
