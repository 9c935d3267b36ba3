"""What the tests share. ``tests.helpers.<Callback>`` names a callback for ``--trainer.callbacks+=`` in CLI runs.

- ``callbacks``: callbacks the tests put into real runs (stop, poison, record per rank, hang a rank)
- ``data``: tiny CIFAR files and class-folder trees
- ``runs``: the tiny net's options and ways to run the CLI as a subprocess
"""

from tests.helpers.callbacks import (
    BlockRank1,
    ImageSides,
    PoisonWeights,
    RecordRank,
    SigtermAt,
    StopAfterEpoch,
    ValidationSteps,
)

__all__ = ["BlockRank1", "ImageSides", "PoisonWeights", "RecordRank", "SigtermAt", "StopAfterEpoch", "ValidationSteps"]
