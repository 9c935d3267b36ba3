"""Time as the user reads it and as the callbacks measure it: one duration format, one step clock."""

from __future__ import annotations

import time
from typing import Callable, Optional


def format_duration(seconds: Optional[float], whole_minutes: bool = False) -> str:
    """``40.0 s``, ``14 min 48 s``, ``1 h 10 min``; ``whole_minutes`` rounds to minutes (``17 min``; ``45 s``
    below half a minute), for forecasts and plans."""
    seconds = max(0.0, seconds or 0.0)
    minutes = round(seconds / 60)
    if whole_minutes and minutes < 1:
        return f"{seconds:.0f} s"
    if whole_minutes or seconds >= 3600:
        return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
    if seconds >= 60:
        rest = seconds % 60
        return f"{int(seconds // 60)} min {rest:02.0f} s" if rest >= 1 else f"{int(seconds // 60)} min"
    return f"{seconds:.1f} s"


class StepClock:
    """Training steps timed from one batch's start to the next within an epoch (data, forward, backward, optimizer
    and the step's hooks: what a step costs), with the validations that ran inside an interval taken out.
    ``times`` holds one entry per timed interval; the first batch of an epoch starts a new chain. ``durations``
    holds each batch's own time, start to end, where ``batch_end`` is called too (the step's compute alone)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.times: list[float] = []
        self.durations: list[float] = []
        self._last: Optional[float] = None
        self._validation = 0.0  # validation seconds inside the current interval

    def batch_start(self, batch_idx: int) -> float:
        """Call at each training batch's start; returns the clock's reading."""
        now = self.clock()
        if batch_idx > 0 and self._last is not None:
            self.times.append(now - self._last - self._validation)
        self._last, self._validation = now, 0.0
        return now

    def batch_end(self) -> float:
        """Call at each training batch's end; returns the clock's reading."""
        now = self.clock()
        if self._last is not None:
            self.durations.append(now - self._last)
        return now

    def validated(self, seconds: float) -> None:
        """A validation of ``seconds`` ran inside the current interval: not step time."""
        self._validation += seconds

    @property
    def validation_in_interval(self) -> float:
        """Validation seconds inside the interval since the last batch started (at an epoch's first batch: the
        previous epoch's own validation)."""
        return self._validation
