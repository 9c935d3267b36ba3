"""What keeps a run safe to stop, resume and trust: last.ckpt, interrupts, RNG states, the non-finite loss watch.

- Ctrl-C and SIGTERM during ``fit`` leave a resumable ``last.ckpt`` behind. Lightning turns SIGTERM into an
  exception after the current step and Ctrl-C into KeyboardInterrupt; both pass through ``on_exception``. Other
  exceptions (a non-finite loss, a crash) save nothing here: their weights may be bad, and the checkpoints from
  the last good validation stay as they are.
- The torch/CUDA/numpy/python RNG states travel with every checkpoint, so a resumed run draws the same
  augmentations as an uninterrupted one (the data order is a function of seed and epoch, see the data module).
- A NaN or infinite training loss stops the run, naming the step.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vgg_lightning.pacing import Pace


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, for resuming: rewritten after an epoch when its write time is at most 5% of the time since
    the previous write (every epoch on a CPU; every few seconds when GPU epochs take under a second), and always
    after the last. Ctrl-C and SIGTERM save one at the current step (InterruptCheckpoint). (ModelCheckpoint's own
    save_last, in Lightning 2.6, rewrites it only when the monitored metric improved, so resuming could repeat
    epochs.)"""

    def __init__(self, share: float = 0.05) -> None:
        super().__init__(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
        self.pace = Pace(share)

    def _paced(self, hook, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.pace.due(trainer):
            return
        t0 = time.perf_counter()
        hook(trainer, pl_module)
        self.pace.ran(time.perf_counter() - t0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paced(super().on_validation_end, trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paced(super().on_train_epoch_end, trainer, pl_module)


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


class RNGStates(Callback):
    """Saves the RNG states in each checkpoint and restores them on resume."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # numpy's state as plain types, so the checkpoint still loads with weights_only=True
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states or trainer.state.fn != "fit":
            return
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        kind, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(states["python"])


def _numpy_state_to_plain(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


class NonFiniteLossWatch(Callback):
    """Flags a non-finite training loss on the device every step and raises NonFiniteLossError.

    Reading the flag back stalls a GPU, so there it is read every ``gpu_check_every`` steps (and before each
    validation, so no checkpoint stores bad weights); on a CPU, every step."""

    def __init__(self, gpu_check_every: int = 32) -> None:
        self.gpu_check_every = gpu_check_every
        self._first_bad_step: Optional[torch.Tensor] = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self._first_bad_step is None or self._first_bad_step.device != loss.device:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        step = trainer.global_step - 1  # the optimizer step that produced this loss
        bad = ~torch.isfinite(loss.detach())
        self._first_bad_step = torch.where(bad & (self._first_bad_step < 0), step, self._first_bad_step)
        if loss.device.type != "cuda" or step % self.gpu_check_every == 0:
            self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        if self._first_bad_step is not None and (step := int(self._first_bad_step)) >= 0:
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite at global step {step} (epoch {trainer.current_epoch})"
            )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)
