"""The project's Lightning callbacks. The always-on ones are listed in the package's ``default.yaml`` under
``trainer.callbacks`` (remove or replace them there, or add with ``--trainer.callbacks+=...``); the CLI adds in code
only those that follow from an option: the time budget (``--trainer.max_time``), the last validation at
``--trainer.max_steps``, the checkpoints (unless ``--trainer.enable_checkpointing false``) and the learning-rate
monitor (with a logger).

- ``budget``: ``TimeBudget``, ``--trainer.max_time`` as a plan, not a guillotine
- ``step_limit``: ``ValidateAtMaxSteps``, a run that ``--trainer.max_steps`` ends mid-epoch still ends validated
- ``lookahead``: ``Lookahead``, a slow copy of the weights the trained ones are pulled back to (airbench's)
- ``reliability``: ``LastCheckpoint``, ``InterruptCheckpoint``, ``SignalGrace``, ``RNGStates``, ``NonFiniteLossWatch``
- ``reporting``: ``EpochSummary``, ``RunForecast``, ``TestReport``, ``PredictionReport``: what the user reads
- ``visuals``: ``ValidationVisuals``, the TensorBoard figures
- ``timing``: ``PhaseTimer``, where a whole command's time goes
- ``pacing``: when the per-epoch extras above are due
"""

from vgg_lightning.callbacks.budget import TimeBudget
from vgg_lightning.callbacks.lookahead import Lookahead
from vgg_lightning.callbacks.reliability import (
    InterruptCheckpoint,
    LastCheckpoint,
    NonFiniteLossWatch,
    RNGStates,
    SignalGrace,
)
from vgg_lightning.callbacks.reporting import EpochSummary, PredictionReport, RunForecast, TestReport
from vgg_lightning.callbacks.step_limit import ValidateAtMaxSteps
from vgg_lightning.callbacks.timing import PhaseTimer
from vgg_lightning.callbacks.visuals import ValidationVisuals

__all__ = [
    "EpochSummary",
    "InterruptCheckpoint",
    "LastCheckpoint",
    "Lookahead",
    "NonFiniteLossWatch",
    "PhaseTimer",
    "PredictionReport",
    "RNGStates",
    "RunForecast",
    "SignalGrace",
    "TestReport",
    "TimeBudget",
    "ValidateAtMaxSteps",
    "ValidationVisuals",
]
