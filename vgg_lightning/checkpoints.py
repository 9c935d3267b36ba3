"""Finding checkpoints by name: ``last`` and ``best`` across runs in ``lightning_logs/``.

Lightning resolves ``ckpt_path="last"``/``"best"`` only inside the current run, but each new command starts a
new ``version_N``; users mean "the last/best checkpoint of my latest run", so we look there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch


class CheckpointNotFound(FileNotFoundError):
    pass


def run_dirs(log_root: Path) -> list[Path]:
    """``version_N`` folders under ``log_root``, oldest first (by N)."""
    if not log_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in log_root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def latest_with(log_root: Path, name: str = "last.ckpt") -> Optional[Path]:
    """The newest run's ``checkpoints/<name>``."""
    for run in reversed(run_dirs(log_root)):
        path = run / "checkpoints" / name
        if path.is_file():
            return path
    return None


def best_of_run(last_ckpt: Path) -> Optional[Path]:
    """The best checkpoint a run recorded (ModelCheckpoint's state inside its ``last.ckpt``)."""
    # mmap: only the callbacks' small state is read, not the weights
    state = torch.load(last_ckpt, map_location="cpu", weights_only=True, mmap=True).get("callbacks", {})
    for key, value in state.items():
        if key.startswith("ModelCheckpoint") and value.get("monitor") and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            # The run folder may have moved since; look beside last.ckpt first.
            for candidate in (last_ckpt.parent / best.name, best):
                if candidate.is_file():
                    return candidate
    return None


def resolve(ckpt_path: str, log_root: Path) -> Path:
    """A concrete file for ``last``, ``best`` or a path; CheckpointNotFound with advice otherwise."""
    if ckpt_path not in ("last", "best"):
        path = Path(ckpt_path)
        if not path.is_file():
            raise CheckpointNotFound(f"checkpoint '{ckpt_path}' does not exist")
        return path
    last = latest_with(log_root)
    if last is None:
        raise CheckpointNotFound(
            f"--ckpt_path {ckpt_path}: no run in '{log_root}' has checkpoints/last.ckpt; train one with `fit` first"
            " or give a checkpoint's path"
        )
    if ckpt_path == "last":
        return last
    best = best_of_run(last)
    if best is None:
        raise CheckpointNotFound(f"--ckpt_path best: the run of {last} recorded no best checkpoint")
    return best


def run_version(ckpt: Path, log_root: Path) -> Optional[int]:
    """N when ``ckpt`` lies in ``log_root/version_N/checkpoints/``."""
    run = ckpt.resolve().parent.parent
    if ckpt.resolve().parent.name == "checkpoints" and run.parent == log_root.resolve():
        m = re.fullmatch(r"version_(\d+)", run.name)
        return int(m.group(1)) if m else None
    return None
