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

import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from vgg_lightning.callbacks.pacing import Pace
from vgg_lightning.messages import log, say


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
        if trainer.sanity_checking or not self.pace.due(trainer, all_ranks=True):
            return
        t0 = time.perf_counter()
        hook(trainer, pl_module)
        self.pace.ran(time.perf_counter() - t0)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paced(super().on_validation_end, trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paced(super().on_train_epoch_end, trainer, pl_module)


class InterruptCheckpoint(Callback):
    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or trainer.state.fn != "fit":
            return
        ckpt_cb = trainer.checkpoint_callback
        if ckpt_cb is None or ckpt_cb.dirpath is None or trainer.global_step == 0:
            return
        path = Path(ckpt_cb.dirpath) / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint, written whole (CheckpointFiles)
        what = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C"
        say(
            f"\n{what}: saved a resumable checkpoint at global step {trainer.global_step} to {path}.\n"
            "Resume with: python -m vgg_lightning fit --ckpt_path last (plus the options you started with)"
        )


class SignalGrace(Callback):
    """Ends ``fit`` when a SIGTERM or Ctrl-C has not ended it within ``grace_s`` seconds.

    Normally a signal ends the run at the next step, on every rank at the same step (Lightning broadcasts rank 0's
    signal), after InterruptCheckpoint saved a checkpoint all ranks took part in. But Python runs signal handlers
    only between bytecodes of the main thread: a process waiting in a collective operation for a rank that will
    never join (a crashed or hung process) would ignore the signal forever. The signal's byte still reaches a pipe
    (``signal.set_wakeup_fd``), which a thread watches; if the process is still there after the grace period it
    says so, kills the rank processes it launched, and exits without a checkpoint (one could not be written with
    a rank missing). ``VGG_LIGHTNING_STOP_GRACE_S`` sets the grace (default 60 s)."""

    def __init__(self, grace_s: Optional[float] = None) -> None:
        self.grace_s = float(os.environ.get("VGG_LIGHTNING_STOP_GRACE_S", 60)) if grace_s is None else grace_s
        self._signalled = False  # this process got SIGTERM (under DDP: not acted on until all ranks agree)
        self._trainer: Optional[L.Trainer] = None
        self._pipe: Optional[tuple[int, int]] = None
        self._previous_fd = -1
        # Set once the fit has ended or has handled its exception (InterruptCheckpoint, listed before this
        # callback, saved by then): from there on the process is not stuck, and a signal must not end it later
        # (a notebook's kernel goes on after an interrupted fit).
        self._disarmed = threading.Event()

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._pipe is not None or threading.current_thread() is not threading.main_thread():
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:  # not allowed here (another thread owns the signals)
            os.close(read_fd), os.close(write_fd)
            return
        self._trainer, self._pipe = trainer, (read_fd, write_fd)
        self._disarmed.clear()
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True, name="signal-grace").start()

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Under DDP, Lightning's SIGTERM handler runs a collective operation inside the handler, wherever the main
        # thread happens to be, and forwards the signal to the other ranks, which then stop at other batches: the
        # ranks can wait in different collectives for ever (seen once in four runs). Here the handler only notes
        # the signal; every rank then learns it at the same step (on_train_batch_end) and stops there.
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            self._signalled = False
            signal.signal(signal.SIGTERM, self._note_signal)

    def _note_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(self._signalled, all=False):
            # Lightning stops every rank at the end of this step (SIGTERMException); InterruptCheckpoint saves.
            trainer._signal_connector.received_sigterm = True

    def _watch(self, read_fd: int) -> None:
        stop_signals = {int(signal.SIGTERM), int(signal.SIGINT)}
        try:
            while True:
                data = os.read(read_fd, 64)
                if not data:
                    return  # the pipe was closed: the fit ended
                if stop_signals & set(data):
                    if not self._disarmed.wait(self.grace_s):
                        self._give_up()
                    return
        except OSError:
            return
        finally:
            os.close(read_fd)

    def _give_up(self) -> None:
        trainer = self._trainer
        launcher = getattr(trainer.strategy, "launcher", None) if trainer is not None else None
        for proc in getattr(launcher, "procs", None) or []:  # the other ranks this process started
            with contextlib.suppress(Exception):
                proc.kill()
        rank = trainer.global_rank if trainer is not None else 0
        log.warning(  # from every process that hangs: each says which rank it is
            f"\nrank {rank}: still running {self.grace_s:.0f} s after SIGTERM/Ctrl-C, waiting on another process that"
            " does not answer; ended without a new checkpoint (it needs every process).\n"
            "Resume from the last one with: python -m vgg_lightning fit --ckpt_path last"
        )
        os._exit(128 + int(signal.SIGTERM))

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._disarmed.set()  # the exception is being handled: the main thread is not stuck
        self._release()

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._disarmed.set()
        self._release()

    def _release(self) -> None:
        if self._pipe is None:
            return
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._previous_fd)
        read_fd, write_fd = self._pipe
        os.close(write_fd)  # the watching thread reads end-of-file and ends
        self._pipe, self._trainer = None, None


class RNGStates(Callback):
    """Saves the RNG states in each checkpoint and restores them on resume."""

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # numpy's state as plain types, so the checkpoint still loads with weights_only=True
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
        }

    @override
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

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
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

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)
