"""The run's TensorBoard logger: Lightning's, with a run folder that is claimed, not guessed, and written lazily.

- Lightning names a new run ``version_<highest + 1>`` by listing the folder: two runs started together both see
  the same highest and write into one folder (one run's checkpoints overwritten). Here global rank 0 claims the
  folder with ``mkdir``, which only one process can win; a loser takes the next number.
- Lightning opens the event file while it sets the run up, before the model has checked its options: a command
  refused then (a resume with another batch size) would leave an empty event file in the run it refused. Here the
  file is opened by the first thing actually logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only


def claim_version(root: Path, start: int = 0) -> int:
    """The first free ``version_N`` (N >= ``start``) under ``root``, created by this call: a folder that another
    process creates at the same moment is skipped, never shared."""
    root.mkdir(parents=True, exist_ok=True)
    version = start
    while True:
        try:
            (root / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


class _DeferredWriter:
    """Stands for the SummaryWriter until something is logged; flushing or closing an unopened one does nothing."""

    def __init__(self, open_writer: Callable[[], Any]) -> None:
        self._open_writer = open_writer
        self._writer: Optional[Any] = None

    @property
    def opened(self) -> bool:
        return self._writer is not None

    def __getattr__(self, name: str) -> Any:
        if self._writer is None:
            if name in ("flush", "close"):
                return lambda *args, **kwargs: None
            self._writer = self._open_writer()
        return getattr(self._writer, name)


_CLAIMED: list[Path] = []  # run folders this process created


def release_unused_claims() -> None:
    """Remove the run folders this process claimed that are still empty (the command ended before writing)."""
    while _CLAIMED:
        folder = _CLAIMED.pop()
        if folder.is_dir() and not any(folder.iterdir()):
            os.rmdir(folder)


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger (same options, same files), with an atomically claimed run folder and an event
    file opened on the first log call."""

    def _get_next_version(self) -> int:
        version = super()._get_next_version()
        if rank_zero_only.rank != 0 or not _is_local_file_protocol(self.root_dir):
            return version  # other ranks are told rank 0's folder (trainer.log_dir is broadcast)
        version = claim_version(Path(self.root_dir), version)
        _CLAIMED.append(Path(self.root_dir) / f"version_{version}")
        return version

    @property
    def experiment(self) -> Any:
        if self._experiment is None and rank_zero_only.rank == 0:
            self._experiment = _DeferredWriter(self._open_writer)
        return super().experiment

    def _open_writer(self) -> Any:
        stand_in, self._experiment = self._experiment, None
        try:
            return _LightningTensorBoardLogger.experiment.fget(self)  # type: ignore[attr-defined]
        finally:
            self._experiment = stand_in
