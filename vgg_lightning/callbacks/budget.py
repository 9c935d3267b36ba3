"""``--trainer.max_time`` as a budget the run plans for, not a guillotine.

Lightning's own ``max_time`` stops training wherever the clock runs out, often with the learning rate still high
in a OneCycle or cosine schedule, which leaves a poor model. Here the budget is planned: after timing the first
steps (and the sanity validation), the run decides how many optimizer steps fit, counting the extra time of every
epoch (checkpoints, figures), of every validation (every epoch, or every ``check_val_every_n_epoch``) and of the
final one, sizes the schedule to exactly that many steps, and ends with the learning rate annealed, a last
validation and a checkpoint, inside the budget. The plan is refined as
the run measures its real speed, saved in checkpoints, and kept by ``fit --ckpt_path last``.
``max_epochs``/``max_steps`` stay upper bounds. The clock starts when the command starts.

Under DDP there is one plan for all processes: rank 0's clock and step times decide it, every rank re-plans at
the same global step, and the plan is broadcast, so all ranks stop at the same step (a rank that stopped alone
would wait forever in the next collective operation).

Resuming (``fit --ckpt_path last``): without ``max_time``, or with the budget the run started with, the run goes on
with its plan (same steps, same schedule). A different ``max_time`` re-plans the steps left into the new time,
counted from this command's start. A run whose plan is finished has nothing left to train, and says so.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any, Callable, Optional

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from typing_extensions import override

from vgg_lightning import quiet, schedules
from vgg_lightning.callbacks.pacing import SanityTiming
from vgg_lightning.callbacks.step_limit import ValidatedStop
from vgg_lightning.clock import StepClock, format_duration
from vgg_lightning.messages import say

# Steps timed before the first plan: the first few (allocation, autotuning) are left out.
SKIP_STEPS, MEASURE_STEPS = 10, 20
# Kept free at the end for noise in step times and for the process to exit.
RESERVE_FRACTION, RESERVE_MIN_S = 0.01, 2.0
# The plan is refined from the recent step times every this share of the budget (a CPU's speed drifts).
REPLAN_EVERY = 0.05
LIGHTNING_STOP_MESSAGE = "`Trainer.fit` stopped: "


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


def validations(epoch: int, epoch_ends: int, every: int) -> int:
    """How many of the epochs ``epoch`` .. ``epoch + epoch_ends - 1`` (0-based) validate, with validation every
    ``every`` epochs; the last one always does (the run's final model is validated)."""
    if epoch_ends <= 0:
        return 0
    end = epoch + epoch_ends
    return end // every - epoch // every + (1 if end % every else 0)


def plan_steps(
    remaining_s: float,
    step_s: float,
    epoch_end_s: float,
    steps_per_epoch: int,
    done_in_epoch: int,
    cap: Optional[int] = None,
    work: Optional[Callable[[int], float]] = None,
    validation_s: float = 0.0,
    validate_every: int = 1,
    epoch: int = 0,
) -> int:
    """How many more optimizer steps fit into ``remaining_s``, each epoch end (a partial last epoch included)
    costing ``epoch_end_s``, and each validating epoch ``validation_s`` more: every ``validate_every`` epochs
    counting from the current one, ``epoch`` (0-based), and the last. ``done_in_epoch`` steps of the current
    epoch are already done. ``work(n)``: the next ``n`` steps counted in steps of ``step_s`` (they may cost less,
    e.g. on smaller images), growing with ``n``."""

    def cost(n: int) -> float:
        epoch_ends = math.ceil((done_in_epoch + n) / steps_per_epoch) if n > 0 else 0
        validated = validations(epoch, epoch_ends, validate_every) * validation_s
        return (work(n) if work is not None else n) * step_s + epoch_ends * epoch_end_s + validated

    # cost() grows with n: the largest n that fits, by bisection
    low, high = 0, max(0, int(remaining_s / max(step_s, 1e-9)))
    for _ in range(64 if work is not None else 0):  # cheaper steps: more than that may fit
        if cost(high + 1) > remaining_s:
            break
        high = 2 * high + 1
    if cap is not None:
        high = max(0, min(high, cap))
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= remaining_s else (low, mid - 1)
    return low


class TimeBudget(SanityTiming):
    """Plans the optimizer steps that fit into ``seconds`` from ``started`` (a ``clock`` reading).

    ``seconds`` None: no budget given, but the resumed checkpoint has a plan, which is kept."""

    def __init__(
        self, seconds: Optional[float], started: Optional[float] = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = None if seconds is None else float(seconds)
        self.clock = clock
        self.started = clock() if started is None else started
        self.planned_steps: Optional[int] = None
        self.resumed = False  # going on with a checkpoint's plan, unchanged
        self._saved_seconds: Optional[float] = None  # the budget the checkpoint's plan was made for
        self._first_plan_done = False
        self._steps = StepClock(clock)  # seconds per batch, validations inside an interval taken out
        self._costs: list[float] = []  # each timed batch's cost in full-size batches (data.early_size's are less)
        self._batch_cost = 1.0  # the running batch's
        self._times_at_plan = 0  # len(self._steps.times) at the latest plan
        self._next_replan_step: Optional[int] = None  # global step of the next timed re-plan (same on every rank)
        self._last_batch_end: Optional[float] = None
        self._val_start: Optional[float] = None
        self._val_in_epoch = 0.0  # validation seconds in the current epoch
        self._epoch_extra_s: Optional[float] = None  # most expensive epoch end so far, its validation left out
        self._validation_s: Optional[float] = None  # most expensive validating epoch's validations (mid-epoch too)
        self._epoch_start_step = 0
        self._start_step = 0  # global step when this command's training started
        self._printed_steps: Optional[int] = None  # the plan last shown to the user
        self._user_max_epochs: Optional[int] = None  # the upper bounds given, before plans changed max_epochs
        self._user_max_steps: Optional[int] = None
        self._validated_stop = ValidatedStop()

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The model sizes its schedule by ``schedule_steps`` when set (configure_optimizers comes after this hook).
        # A run that only the budget ends starts with a placeholder length; the first plan sets the real one.
        no_end = trainer.max_epochs in (None, -1) and trainer.max_steps in (None, -1)
        if stage == "fit" and no_end and getattr(pl_module, "schedule_steps", 0) is None:
            pl_module.schedule_steps = schedules.UNPLANNED_STEPS

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._user_max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        self._user_max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None

    # -- units: the plan counts optimizer steps; with gradient accumulation one takes several batches ------------
    @staticmethod
    def _accumulate(trainer: L.Trainer) -> int:
        return max(1, int(trainer.accumulate_grad_batches))

    def _steps_per_epoch(self, trainer: L.Trainer) -> int:
        # Lightning steps the optimizer at the end of an epoch even when the last accumulation is incomplete.
        return max(1, math.ceil(int(trainer.num_training_batches) / self._accumulate(trainer)))

    # -- measuring ----------------------------------------------------------------------------------------------
    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val_start = self.clock()

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is not None and not trainer.sanity_checking:
            seconds = self.clock() - self._val_start
            self._val_in_epoch += seconds
            self._steps.validated(seconds)
            self._val_start = None

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start_step = trainer.global_step

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        at_epoch_end = self._steps.validation_in_interval  # at batch 0: the previous epoch's own validation
        timed = len(self._steps.times)
        now = self._steps.batch_start(batch_idx)  # a mid-epoch validation in an interval is not step time
        if len(self._steps.times) > timed:  # the previous batch's time
            self._costs.append(self._batch_cost)
        train_work = getattr(trainer.datamodule, "train_work", None)  # this step's, as the data module made it
        self._batch_cost = train_work(trainer.global_step, 1) if train_work is not None else 1.0
        if batch_idx == 0 and self._last_batch_end is not None:
            # From the last step of the previous epoch to here, less its validation: checkpoints, figures, epoch
            # hooks. Apart from that, the validations it ran (at its end and mid-epoch), if it validated: epochs
            # without one (check_val_every_n_epoch) cost less. The most expensive epoch so far counts for each.
            extra = now - self._last_batch_end - at_epoch_end
            self._epoch_extra_s = max(self._epoch_extra_s or 0.0, extra)
            if self._val_in_epoch > 0:
                self._validation_s = max(self._validation_s or 0.0, self._val_in_epoch)
            if not self.resumed:
                self._plan(trainer, pl_module, at_batch_end=False)
        if batch_idx == 0:
            self._val_in_epoch = 0.0
        if self.planned_steps is not None and trainer.global_step == self.planned_steps - 1:
            self._log_final_lr(trainer)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._last_batch_end = self.clock()
        if not self.resumed:
            # Step counts, not clock readings, decide when to plan: the same on every rank.
            if not self._first_plan_done and len(self._steps.times) - SKIP_STEPS >= MEASURE_STEPS:
                self._plan(trainer, pl_module)
            elif (
                self._next_replan_step is not None
                and trainer.global_step >= self._next_replan_step
                and trainer.global_step < self.planned_steps
            ):
                self._plan(trainer, pl_module)
        if self.planned_steps is not None and trainer.global_step >= self.planned_steps:
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        # Lightning then validates, checkpoints and ends the fit, also in an epoch that would not validate.
        self._validated_stop.stop(trainer)
        # Lightning would close with "`max_epochs=N` reached": the plan set N; the budget's own line says why.
        quiet.drop_upstream(LIGHTNING_STOP_MESSAGE)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        quiet.allow_upstream(LIGHTNING_STOP_MESSAGE)  # said (or not) by now; later fits in this process say it
        self._validated_stop.restore(trainer)
        trained = trainer.global_step > self._start_step
        if trained and self.planned_steps is not None and trainer.global_step >= self.planned_steps:
            what = (
                f"the planned budget of {format_duration(self.seconds)}" if self.seconds else "the resumed run's plan"
            )
            used = f"; {format_duration(self.clock() - self.started)} used" if self.seconds else ""
            say(f"{what} ended the run after {trainer.global_step:,} steps{used}")

    # -- planning -----------------------------------------------------------------------------------------------
    def _validation_estimate(self, trainer: L.Trainer) -> float:
        """Seconds of validation in an epoch that validates: measured, or from the sanity check until then."""
        if self._validation_s is not None:
            return self._validation_s
        if self.sanity_s_per_batch is not None and trainer.num_val_batches:
            check_every = trainer.val_check_batch
            runs = 1
            if isinstance(check_every, (int, float)) and math.isfinite(check_every) and check_every > 0:
                runs = max(1, int(trainer.num_training_batches // check_every))
            return self.sanity_s_per_batch * sum(trainer.num_val_batches) * runs
        return 0.0  # no validation to pay for; the first validation's real cost refines the plan

    @staticmethod
    def _validate_every(trainer: L.Trainer) -> int:
        # None: validations every val_check_interval batches across epochs, counted as every epoch's
        return max(1, int(trainer.check_val_every_n_epoch or 1))

    def _final_extra_s(self, trainer: L.Trainer) -> float:
        """What the last validation costs beyond the others: its test-time augmentation's extra passes (the mirror,
        and the shifted views with ``tta.shift``) with ``tta.flip: final``."""
        module = trainer.lightning_module
        options = getattr(module, "tta_options", None)
        if getattr(options, "flip", None) != "final" or self.sanity_s_per_batch is None or not trainer.num_val_batches:
            return 0.0
        passes = module.tta_passes() if hasattr(module, "tta_passes") else 2
        return self.sanity_s_per_batch * sum(trainer.num_val_batches) * (passes - 1)

    def _compute_plan(self, trainer: L.Trainer, at_batch_end: bool) -> Optional[dict[str, Any]]:
        """Rank 0's plan from its own clock and step times (None while nothing was timed)."""
        # Each time in full-size batches: a smaller image's step counts for more (data.early_size).
        all_times = [t / c for t, c in zip(self._steps.times, self._costs)]
        recent = all_times[max(SKIP_STEPS, self._times_at_plan) :]
        times = recent if len(recent) >= MEASURE_STEPS else (all_times[SKIP_STEPS:] or all_times)
        if not times or self.seconds is None:
            return None
        now = self.clock()
        step_s = sum(times) / len(times) * self._accumulate(trainer)  # seconds per full-size optimizer step
        per_epoch = self._steps_per_epoch(trainer)
        remaining = self.seconds - (now - self.started)
        remaining -= max(RESERVE_MIN_S, RESERVE_FRACTION * self.seconds) + self._final_extra_s(trainer)
        caps = [self._user_max_epochs * per_epoch if self._user_max_epochs else None, self._user_max_steps]
        done = trainer.global_step
        cap = min((c - done for c in caps if c is not None), default=None)
        # Steps of this epoch done; after its last step, that epoch's end is still to come.
        done_in_epoch = done - self._epoch_start_step
        if not at_batch_end:
            done_in_epoch = 0
        extra = self._epoch_extra_s or 0.0  # the first epoch end's real cost refines the plan
        validation = self._validation_estimate(trainer)
        every = self._validate_every(trainer)
        train_work = getattr(trainer.datamodule, "train_work", None)
        work = (lambda n: train_work(done, n, done + n)) if train_work is not None else None
        more = plan_steps(
            remaining, step_s, extra, per_epoch, done_in_epoch, cap, work, validation, every, trainer.current_epoch
        )
        # At a step's start that step runs anyway; after it, zero more steps means: stop now.
        planned = done + max(more, 0 if at_batch_end else 1)
        replan_every = max(1, round(REPLAN_EVERY * self.seconds / max(step_s, 1e-9)))
        return {
            "planned": planned,
            "step_s": step_s,
            "extra_s": extra,
            "validation_s": validation,
            "validate_every": every,
            "used_s": now - self.started,
            "next_replan": done + replan_every,
            "times": len(self._steps.times),
        }

    def _plan(self, trainer: L.Trainer, pl_module: L.LightningModule, at_batch_end: bool = True) -> None:
        plan = self._compute_plan(trainer, at_batch_end) if trainer.is_global_zero else None
        if trainer.world_size > 1:
            plan = trainer.strategy.broadcast(plan, src=0)  # every rank calls this at the same global step
        if plan is None:
            return
        first = not self._first_plan_done
        self._first_plan_done = True
        self._times_at_plan = len(self._steps.times)
        self._next_replan_step = plan["next_replan"]
        self.planned_steps = plan["planned"]
        per_epoch = self._steps_per_epoch(trainer)
        trainer.fit_loop.max_epochs = math.ceil(self.planned_steps / per_epoch)
        pl_module.schedule_steps = self.planned_steps
        for config in trainer.lr_scheduler_configs:
            schedules.resize(config.scheduler, self.planned_steps)
        # A re-plan is news only when it moves what the user expects (the epochs reached) by more than 5%.
        printed = self._printed_steps or 1
        changed = abs(self.planned_steps - printed) > 0.05 * printed
        if first or (changed and trainer.progress_bar_callback is None):
            self._printed_steps = self.planned_steps
            images = getattr(trainer.datamodule, "hparams", {}).get("batch_size", 0) * trainer.world_size
            images *= self._accumulate(trainer)
            rate = (
                f" at {images / plan['step_s']:,.0f} img/s measured" if images else f" at {plan['step_s']:.3f} s a step"
            )
            if getattr(trainer.datamodule, "early", None) is not None:
                rate += " at full size"  # data.early_size's smaller steps run faster; the plan counts them so
            what = "budget" if first else "budget re-planned"
            epochs = self.planned_steps / per_epoch
            if plan["validate_every"] == 1:
                ends = f"{plan['extra_s'] + plan['validation_s']:.1f} s per epoch end (validation, checkpoints)"
            else:
                ends = (
                    f"{plan['extra_s']:.1f} s per epoch end, {plan['validation_s']:.1f} s per validation (every"
                    f" {plan['validate_every']} epochs and the last)"
                )
            say(
                f"{what} {format_duration(self.seconds)}: {self.planned_steps:,} steps = {epochs:.1f} epochs{rate},"
                f" {ends}; {format_duration(plan['used_s'])} used so far"
            )

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

    # -- checkpoints: a resumed run keeps the plan, or re-plans into a new budget ------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        seconds = self.seconds if self.seconds is not None else self._saved_seconds
        return {"seconds": seconds, "planned_steps": self.planned_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_steps = state_dict.get("planned_steps")
        self._saved_seconds = state_dict.get("seconds")
        same_budget = self.seconds is None or (
            self._saved_seconds is not None and abs(self.seconds - self._saved_seconds) < 0.5
        )
        self.resumed = self.planned_steps is not None and same_budget

    @override
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Before configure_optimizers, so the module sizes its schedule by the plan, not by max_epochs.
        self.load_state_dict(checkpoint.get("callbacks", {}).get(self.state_key, {}))
        if self.planned_steps is not None:
            pl_module.schedule_steps = self.planned_steps

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        if self.planned_steps is None:
            return  # a new run: the first timed steps make the plan
        done = trainer.global_step
        trainer.fit_loop.max_epochs = math.ceil(self.planned_steps / self._steps_per_epoch(trainer))
        if done >= self.planned_steps:
            self.resumed = True  # nothing to re-plan: the schedule has annealed
            message = (
                f"nothing left to train: this run finished its planned {self.planned_steps:,} steps (its learning rate"
                " has annealed). Evaluate it with `test`/`validate`, or start a new run without --ckpt_path."
            )
            trainer.should_stop = True
        elif self.resumed:
            message = (
                f"resumed at step {done:,} of a budgeted run: keeping its plan of {self.planned_steps:,} steps"
                f" ({self.planned_steps - done:,} to go; budget {format_duration(self._saved_seconds)} as before)."
                " Another"
                " --trainer.max_time re-plans the steps left into that time."
            )
        else:
            message = (
                f"resumed at step {done:,} of a run planned for {self.planned_steps:,} steps"
                f" ({format_duration(self._saved_seconds or 0)}): re-planning the steps left into the new budget of"
                f" {format_duration(self.seconds)}, counted from this command's start"
            )
        say(message)
