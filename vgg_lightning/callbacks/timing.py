"""Where the seconds of a whole ``fit`` command go: start-up, data, warm-up, training, validation, figures, checkpoints.

    python -m vgg_lightning fit ... --trainer.callbacks+=vgg_lightning.callbacks.PhaseTimer

prints, when the process exits, one table from the command's start (imports included) to its end. On a GPU an
epoch takes under a second, so costs that are noise on a CPU (figures, checkpoint writes, start-up) decide how
long a user waits; this table shows them.
"""

from __future__ import annotations

import atexit
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from vgg_lightning.clock import StepClock


class PhaseTimer(Callback):
    def __init__(self) -> None:
        from vgg_lightning import STARTED

        self.started = STARTED
        self.t: dict[str, float] = {}
        self.seconds = {"validation": 0.0, "checkpoint writes": 0.0, "figures": 0.0}
        self._steps = StepClock(time.monotonic)  # each batch's own time, start to end
        self._val_start = 0.0
        self._printed = False

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.t["setup"] = time.monotonic()  # after the data module's prepare_data and setup
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def timed_save(*args: Any, **kwargs: Any) -> None:
            t0 = time.monotonic()
            save(*args, **kwargs)
            self.seconds["checkpoint writes"] += time.monotonic() - t0

        io.save_checkpoint = timed_save  # type: ignore[method-assign]
        atexit.register(self.report)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t["train start"] = time.monotonic()

    @property
    def steps(self) -> list[float]:
        return self._steps.durations

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._steps.batch_start(batch_idx)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._steps.batch_end()

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.monotonic()

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Callbacks run in list order: the figures (ValidationVisuals) and checkpoints come after this hook. The
        # sanity check counts in "model setup, summary, sanity check".
        if not trainer.sanity_checking:
            self.seconds["validation"] += time.monotonic() - self._val_start

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.t["fit end"] = time.monotonic()
        from vgg_lightning.callbacks.visuals import ValidationVisuals

        for cb in trainer.callbacks:
            if isinstance(cb, ValidationVisuals):
                self.seconds["figures"] = cb.pace.total

    def report(self) -> None:
        if self._printed or "fit end" not in self.t or not self.steps:
            return
        self._printed = True
        end = time.monotonic()
        steady = sorted(self.steps[1:])[len(self.steps[1:]) // 2] if len(self.steps) > 1 else self.steps[0]
        rows = [
            ("start-up, imports, options, data", self.t["setup"] - self.started),
            ("model setup, summary, sanity check", self.t["train start"] - self.t["setup"]),
            ("first step (warm-up beyond a typical step)", self.steps[0] - steady),
            (
                f"training steps ({len(self.steps)} x {1000 * steady:.1f} ms median)",
                sum(self.steps) - self.steps[0] + steady,
            ),
            ("validation", self.seconds["validation"]),
            ("figures", self.seconds["figures"]),
            ("checkpoint writes", self.seconds["checkpoint writes"]),
        ]
        fit = self.t["fit end"] - self.t["train start"]
        rows.append(("other fit-loop time (hooks, logging, epoch ends)", fit - sum(r[1] for r in rows[2:])))
        rows.append(("after fit (teardown) until exit", end - self.t["fit end"]))
        total = end - self.started
        width = max(len(r[0]) for r in rows)
        lines = [f"{'phase':<{width}}  {'seconds':>8}  {'share':>6}"]
        lines += [f"{name:<{width}}  {sec:8.2f}  {100 * sec / total:5.1f}%" for name, sec in rows]
        lines.append(f"{'whole command':<{width}}  {total:8.2f}")
        print("\n".join(lines), file=sys.stderr, flush=True)
