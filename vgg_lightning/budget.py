"""``--trainer.max_time`` as a budget the run plans for, not a guillotine.

Lightning's own ``max_time`` stops training wherever the clock runs out, often with the learning rate still high
in a OneCycle or cosine schedule, which leaves a poor model. Here the budget is planned: after timing the first
steps (and the sanity validation), the run decides how many optimizer steps fit, counting one validation and
checkpoint per epoch end and a final one, sizes the schedule to exactly that many steps, and ends with the
learning rate annealed, a last validation and a checkpoint, inside the budget. The plan is refined at each epoch
start with the measured cost of the epoch end, saved in checkpoints, and kept by ``fit --ckpt_path last``.
``max_epochs``/``max_steps`` stay upper bounds. The clock starts when the command starts.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor

from vgg_lightning import schedules

# Steps timed before the first plan: the first few (allocation, autotuning) are left out.
SKIP_STEPS, MEASURE_STEPS = 10, 20
# Kept free at the end for noise in step times and for the process to exit.
RESERVE_FRACTION, RESERVE_MIN_S = 0.01, 2.0
# The plan is refined from the recent step times every this share of the budget (a CPU's speed drifts).
REPLAN_EVERY = 0.05


def parse_duration(value: Any) -> float:
    """Seconds from Lightning's max_time forms: ``DD:HH:MM:SS``, a timedelta, or a dict of timedelta fields."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return timedelta(**value).total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    days, hours, minutes, seconds = (int(v) for v in str(value).strip().split(":"))
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()


def plan_steps(
    remaining_s: float, step_s: float, epoch_end_s: float, steps_per_epoch: int, done_in_epoch: int,
    cap: Optional[int] = None,
) -> int:  # fmt: skip
    """How many more optimizer steps fit into ``remaining_s``, each epoch end (a partial last epoch included)
    costing ``epoch_end_s``. ``done_in_epoch`` steps of the current epoch are already done."""

    def cost(n: int) -> float:
        epoch_ends = math.ceil((done_in_epoch + n) / steps_per_epoch) if n > 0 else 0
        return n * step_s + epoch_ends * epoch_end_s

    # cost() grows with n: the largest n that fits, by bisection
    low, high = 0, max(0, int(remaining_s / max(step_s, 1e-9)))
    if cap is not None:
        high = max(0, min(high, cap))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= remaining_s else (low, mid - 1)
    return low


class TimeBudget(Callback):
    """Plans the optimizer steps that fit into ``seconds`` from ``started`` (a ``clock`` reading)."""

    def __init__(self, seconds: float, started: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        self.seconds = float(seconds)
        self.clock = clock
        self.started = clock() if started is None else started
        self.planned_steps: Optional[int] = None
        self.resumed = False
        self._step_times: list[float] = []
        self._planned_at: Optional[float] = None  # clock reading of the latest plan
        self._times_at_plan = 0  # len(_step_times) then
        self._last_batch_start: Optional[float] = None
        self._last_batch_end: Optional[float] = None
        self._epoch_end_s: Optional[float] = None
        self._sanity_start = 0.0
        self._sanity_s_per_batch: Optional[float] = None
        self._user_max_epochs: Optional[int] = None  # the upper bounds given, before plans changed max_epochs
        self._user_max_steps: Optional[int] = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._user_max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        self._user_max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None

    # -- measuring ----------------------------------------------------------------------------------------------
    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sanity_start = self.clock()

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = sum(trainer.num_sanity_val_batches) if trainer.num_sanity_val_batches else 0
        if batches:
            self._sanity_s_per_batch = (self.clock() - self._sanity_start) / batches

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        now = self.clock()
        if batch_idx == 0 and self._last_batch_end is not None:
            # From the last step of the previous epoch to here: validation, checkpoints, figures, epoch hooks.
            # The most expensive one so far: figures and checkpoints need not come at every epoch end.
            self._epoch_end_s = max(self._epoch_end_s or 0.0, now - self._last_batch_end)
            self._last_batch_start = None
            if not self.resumed:
                self._plan(trainer, pl_module, now, at_batch_end=False)
        elif self._last_batch_start is not None:
            self._step_times.append(now - self._last_batch_start)
        self._last_batch_start = now
        if self.planned_steps is not None and trainer.global_step == self.planned_steps - 1:
            self._log_final_lr(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        self._last_batch_end = self.clock()
        timed = len(self._step_times) - SKIP_STEPS
        if self.planned_steps is None and timed >= MEASURE_STEPS:
            self._plan(trainer, pl_module, self._last_batch_end)
        elif (self._planned_at is not None and not self.resumed and trainer.global_step < self.planned_steps
              and self._last_batch_end - self._planned_at >= REPLAN_EVERY * self.seconds):  # fmt: skip
            self._plan(trainer, pl_module, self._last_batch_end)
        if self.planned_steps is not None and trainer.global_step >= self.planned_steps:
            trainer.should_stop = True  # Lightning then validates, checkpoints and ends the fit

    # -- planning -----------------------------------------------------------------------------------------------
    def _epoch_end_estimate(self, trainer: L.Trainer) -> float:
        if self._epoch_end_s is not None:
            return self._epoch_end_s
        if self._sanity_s_per_batch is not None and trainer.num_val_batches:
            return self._sanity_s_per_batch * sum(trainer.num_val_batches)
        return 0.0  # no validation to pay for; the first epoch end's real cost refines the plan

    def _plan(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float, at_batch_end: bool = True) -> None:
        recent = self._step_times[max(SKIP_STEPS, self._times_at_plan):]
        times = recent if len(recent) >= MEASURE_STEPS else (self._step_times[SKIP_STEPS:] or self._step_times)
        if not times:
            return
        self._planned_at, self._times_at_plan = now, len(self._step_times)
        step_s = sum(times) / len(times)
        per_epoch = max(1, int(trainer.num_training_batches))
        remaining = self.seconds - (now - self.started)
        remaining -= max(RESERVE_MIN_S, RESERVE_FRACTION * self.seconds)
        caps = [self._user_max_epochs * per_epoch if self._user_max_epochs else None, self._user_max_steps]
        done = trainer.global_step
        cap = min((c - done for c in caps if c is not None), default=None)
        # Steps of this epoch done (every epoch has per_epoch); after its last step its end is still to come.
        done_in_epoch = (done - 1) % per_epoch + 1 if at_batch_end and done else done % per_epoch
        more = plan_steps(remaining, step_s, self._epoch_end_estimate(trainer), per_epoch, done_in_epoch, cap)
        first, before = self.planned_steps is None, self.planned_steps or 0
        # At a step's start that step runs anyway; after it, zero more steps means: stop now.
        self.planned_steps = done + max(more, 0 if at_batch_end else 1)
        trainer.fit_loop.max_epochs = math.ceil(self.planned_steps / per_epoch)
        pl_module.schedule_steps = self.planned_steps
        for config in trainer.lr_scheduler_configs:
            schedules.resize(config.scheduler, self.planned_steps)
        changed = abs(self.planned_steps - before) > 0.02 * max(before, 1)
        if trainer.is_global_zero and (first or (changed and trainer.progress_bar_callback is None)):
            images = getattr(trainer.datamodule, "hparams", {}).get("batch_size", 0) * trainer.world_size
            rate = f" at {images / step_s:,.0f} img/s measured" if images else f" at {step_s:.3f} s a step"
            what = "budget" if first else "budget re-planned"
            print(
                f"{what} {_fmt(self.seconds)}: {self.planned_steps:,} steps = {self.planned_steps / per_epoch:.1f} epochs"
                f"{rate}, {self._epoch_end_estimate(trainer):.1f} s per epoch end (validation, checkpoints);"
                f" {_fmt(now - self.started)} used so far",
                file=sys.stderr, flush=True,
            )  # fmt: skip

    @staticmethod
    def _log_final_lr(trainer: L.Trainer) -> None:
        """The last step's learning rate, under LearningRateMonitor's names: the curve ends where it annealed to,
        whatever log_every_n_steps is."""
        if not any(isinstance(cb, LearningRateMonitor) for cb in trainer.callbacks):
            return
        stats = {}
        for opt in trainer.optimizers:
            name = f"lr-{type(opt).__name__}"
            groups = opt.param_groups
            for i, group in enumerate(groups):
                stats[f"{name}/pg{i + 1}" if len(groups) > 1 else name] = group["lr"]
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer.global_step)

    # -- checkpoints: a resumed run keeps the plan ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "planned_steps": self.planned_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_steps = state_dict.get("planned_steps")
        self.resumed = self.planned_steps is not None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Before configure_optimizers, so the module sizes its schedule by the plan, not by max_epochs.
        self.load_state_dict(checkpoint.get("callbacks", {}).get(self.state_key, {}))
        if self.resumed:
            pl_module.schedule_steps = self.planned_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.resumed:
            trainer.fit_loop.max_epochs = math.ceil(self.planned_steps / max(1, int(trainer.num_training_batches)))


def _fmt(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds >= 60:
        return f"{int(seconds // 60)} min {seconds % 60:02.0f} s" if seconds % 60 >= 1 else f"{int(seconds // 60)} min"
    return f"{seconds:.1f} s"
