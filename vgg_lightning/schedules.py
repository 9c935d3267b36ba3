"""Per-step learning-rate schedules whose length can be set after training has started.

A time budget (``budget.py``) learns how many steps fit only after timing the first ones, so the schedule's
length must be changeable then. Each schedule is a callable object for ``LambdaLR``: its ``total_steps`` is saved
in the scheduler's state dict (LambdaLR keeps a callable object's attributes) and comes back on resume.
"""

from __future__ import annotations

import math

import torch

# A schedule's length before a time budget's first plan, when nothing else bounds the run (max_epochs -1): the
# plan, a few dozen steps in, resizes it; until then the schedule is in its warm-up either way.
UNPLANNED_STEPS = 10**9


def run_steps(trainer) -> float:
    """The optimizer steps the run's schedule is sized for (a time budget's plan included; without a schedule, the
    plan), else Lightning's estimate from max_epochs/max_steps: ``inf`` for a run without an end."""
    module = trainer.lightning_module
    length = module.schedule_length() if hasattr(module, "schedule_length") else None
    return length or getattr(module, "schedule_steps", None) or trainer.estimated_stepping_batches


def _cos(start: float, end: float, pct: float) -> float:
    """Cosine from ``start`` (pct 0) to ``end`` (pct 1)."""
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


class OneCycle:
    """``torch.optim.lr_scheduler.OneCycleLR``'s cosine shape (cycle_momentum off) as a factor of the peak lr:
    from peak/25 up to the peak over ``warmup`` of the steps, then down to peak/25/1e4 at the last step."""

    def __init__(self, total_steps: int, warmup: float, div_factor: float = 25.0, final_div_factor: float = 1e4):
        self.total_steps, self.warmup = total_steps, warmup
        self.div_factor, self.final_div_factor = div_factor, final_div_factor

    def __call__(self, step: int) -> float:
        start, final = 1 / self.div_factor, 1 / self.div_factor / self.final_div_factor
        peak_step = float(max(self.warmup, 1e-3) * self.total_steps) - 1
        last_step = self.total_steps - 1
        if step <= peak_step:
            return _cos(start, 1.0, step / peak_step) if peak_step > 0 else 1.0
        return _cos(1.0, final, min(1.0, (step - peak_step) / max(last_step - peak_step, 1e-9)))


class _WarmupThenDown:
    """Linear warm-up over ``warmup`` of the steps, then ``down`` (1 at its start, 0 at its end) to 0 at the
    last step."""

    def __init__(self, total_steps: int, warmup: float):
        self.total_steps, self.warmup = total_steps, warmup

    def __call__(self, step: int) -> float:
        warm = int(self.warmup * self.total_steps)
        if step < warm:
            return (step + 1) / warm
        return self.down(min(1.0, (step - warm) / max(1, self.total_steps - 1 - warm)))

    @staticmethod
    def down(pct: float) -> float:
        raise NotImplementedError


class WarmupCosine(_WarmupThenDown):
    """Linear warm-up over ``warmup`` of the steps, then a cosine down to 0 at the last step."""

    @staticmethod
    def down(pct: float) -> float:
        return _cos(1.0, 0.0, pct)


class WarmupLinear(_WarmupThenDown):
    """Linear warm-up over ``warmup`` of the steps, then a straight line down to 0 at the last step: more steps
    at a useful learning rate than a cosine's long tail (measured no better in cpu.yaml's 15-minute runs)."""

    @staticmethod
    def down(pct: float) -> float:
        return 1.0 - pct


SHAPES = {"onecycle": OneCycle, "cosine": WarmupCosine, "linear": WarmupLinear}


def build(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, SHAPES[kind](total_steps, warmup))


def total_steps(scheduler: torch.optim.lr_scheduler.LRScheduler) -> int:
    return scheduler.lr_lambdas[0].total_steps  # type: ignore[attr-defined]


def resize(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Stretch or shrink the schedule to ``steps`` in all; the learning rate follows from the next step on."""
    for shape in scheduler.lr_lambdas:  # type: ignore[attr-defined]
        shape.total_steps = steps
