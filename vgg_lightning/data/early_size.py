"""Smaller training crops first: the first share of a run's optimizer steps trains on ``size``-pixel crops (the data
module makes them: random windows of the shifted image, or the random-resized crop made at that size), the rest at
full size; evaluation is always at full size. The convolutions' work goes with the pixels, so a 24x24 step costs
about (24/32)^2 = 0.56 of a 32x32 one and a time budget fits more steps (``callbacks.budget`` counts each step by
``cost``).

The switch is a share of the steps the schedule is sized for, which a time budget re-plans while it runs. Once a
step trained at full size, the switch stays where it happened: a later re-plan never sends the run back to small
images. Every DDP process sees the same global step and plan, so all switch at the same step.
"""

from __future__ import annotations

from typing import Optional


class EarlySize:
    """The first ``fraction`` of ``total`` optimizer steps at ``size`` pixels, then ``full``."""

    def __init__(self, size: int, fraction: float, full: int) -> None:
        if not 0 < size < full:
            raise ValueError(f"the early image size must be between 0 and the image size {full}, got {size}")
        if not 0 < fraction < 1:
            raise ValueError(f"the early share of the steps must be a fraction 0 < f < 1, got {fraction}")
        self.size, self.fraction, self.full = size, fraction, full
        self.switched_at: Optional[int] = None  # the first step trained at full size

    @property
    def cost(self) -> float:
        """A small step's cost relative to a full one: the share of the pixels (what the convolutions scale with)."""
        return (self.size / self.full) ** 2

    def switch_step(self, total: int) -> int:
        """The first full-size step of a run of ``total`` steps."""
        return self.switched_at if self.switched_at is not None else round(self.fraction * total)

    def size_at(self, step: int, total: int) -> int:
        """The side of the images step ``step`` (0-based) trains on; from the switch on, the switch is kept."""
        if step < self.switch_step(total):
            return self.size
        if self.switched_at is None:
            self.switched_at = step
        return self.full

    def work(self, first: int, count: int, total: int) -> float:
        """Steps ``first`` .. ``first + count - 1`` of a ``total``-step run, in full-size steps."""
        small = max(0, min(first + count, self.switch_step(total)) - first)
        return small * self.cost + (count - small)

    def state_dict(self) -> dict[str, Optional[int]]:
        return {"switched_at": self.switched_at}

    def load_state_dict(self, state: dict[str, Optional[int]]) -> None:
        self.switched_at = state.get("switched_at")
