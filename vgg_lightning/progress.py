"""Where a fit stands: what the callbacks and the model ask of the Trainer's loop."""

from __future__ import annotations

import lightning as L


def is_last_validation(trainer: L.Trainer) -> bool:
    """Whether this validation ends the fit (or is a validate command): the one that must always get its extras."""
    if not trainer.training and trainer.state.fn != "fit":
        return True
    if trainer.should_stop:  # a time budget's last step, early stopping, Ctrl-C
        return True
    if trainer.max_epochs not in (None, -1) and trainer.current_epoch + 1 >= trainer.max_epochs:
        return True
    return trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
