"""Ctrl-C and SIGTERM during ``fit`` leave a resumable ``last.ckpt`` behind.

Lightning turns SIGTERM into an exception after the current step and Ctrl-C into KeyboardInterrupt; both pass
through ``on_exception``. Other exceptions (a non-finite loss, a crash) save nothing here: their weights may be
bad, and the checkpoints from the last good validation stay as they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException


class InterruptCheckpoint(Callback):
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or trainer.state.fn != "fit":
            return
        ckpt_cb = trainer.checkpoint_callback
        if ckpt_cb is None or ckpt_cb.dirpath is None or trainer.global_step == 0:
            return
        path = Path(ckpt_cb.dirpath) / "last.ckpt"
        trainer.save_checkpoint(path)  # Lightning writes it atomically (temporary file, then rename)
        if trainer.is_global_zero:
            what = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C"
            print(
                f"\n{what}: saved a resumable checkpoint at global step {trainer.global_step} to {path}.\n"
                "Resume with: python -m vgg_lightning fit --ckpt_path last (plus the options you started with)",
                file=sys.stderr,
                flush=True,
            )
