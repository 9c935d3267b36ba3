"""Checkpoint files: finding them by name, reading them safely, writing them whole.

- Lightning resolves ``ckpt_path="last"``/``"best"`` only inside the current run, but each new command starts a
  new ``version_N``; users mean "the last/best checkpoint of my latest run", so we look there.
- ``read`` is the one way the CLI reads a checkpoint: ``weights_only`` (a pickled call is refused, never run) and
  memory-mapped (only what is used is read); a file that is not a checkpoint is one message naming it.
- ``CheckpointFiles`` is the Trainer's checkpoint writer: each file is written beside its destination, flushed and
  renamed, so a full disk or a kill leaves the previous files whole.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from typing_extensions import override

from vgg_lightning.errors import DataError
from vgg_lightning.files import display_name, write_bytes_atomically


class CheckpointNotFound(FileNotFoundError):
    pass


class UnreadableCheckpoint(DataError):
    """The file is not a checkpoint this project can read safely (truncated, garbled, or it holds code)."""


_WRITTEN_BY_FIT = "Give a checkpoint written by this project's `fit` (lightning_logs/version_N/checkpoints/*.ckpt)"


def read(path: Path | str) -> dict[str, Any]:
    """A checkpoint's contents, read with ``weights_only=True`` and memory-mapped (tensors are read when used).
    UnreadableCheckpoint names the file when it is truncated, not a checkpoint, or holds anything but tensors and
    plain values (a pickled function call is refused, never run)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        first_line = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        if "Unsupported global" in str(e) or "weights_only" in str(e):
            why = "it holds Python objects other than tensors and plain values (possibly code), which are never loaded"
        else:
            why = f"it is truncated or not a PyTorch checkpoint ({first_line})"
        raise UnreadableCheckpoint(
            f"checkpoint '{display_name(path)}' cannot be read: {why}. {_WRITTEN_BY_FIT}"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UnreadableCheckpoint(
            f"checkpoint '{display_name(path)}' is a PyTorch file but not a Lightning checkpoint (no state_dict)."
            f" {_WRITTEN_BY_FIT}"
        )
    return ckpt


class CheckpointFiles(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing each file atomically beside its destination (Lightning's own goes
    through the system's temp folder and a move, which across file systems is a copy that a full disk cuts short).
    Loads are ``weights_only`` unless Lightning is told otherwise."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if not _is_local_file_protocol(path) or storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        hint = "give --trainer.default_root_dir on a disk with room (resume with --ckpt_path FILE)"
        write_bytes_atomically(Path(path), buffer.getbuffer(), hint=hint)

    @override
    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None) -> dict:
        if map_location is None:
            map_location = lambda storage, loc: storage  # noqa: E731 (Lightning's default)
        return super().load_checkpoint(path, map_location, True if weights_only is None else weights_only)


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


def latest_run_with_checkpoints(log_root: Path) -> Optional[Path]:
    """The newest run folder with any checkpoint (a run killed before its first last.ckpt may have a best one)."""
    for run in reversed(run_dirs(log_root)):
        if any((run / "checkpoints").glob("*.ckpt")):
            return run
    return None


def _monitor_state(path: Path) -> Optional[tuple[str, float, Optional[str]]]:
    """(mode, this file's monitored score, the best path recorded) from the best-checkpoint callback's state saved
    in ``path``; None when the file has none. The mode is part of the callback's state key."""
    state = read(path).get("callbacks", {})
    for key, value in state.items():
        if not (key.startswith("ModelCheckpoint") and isinstance(value, dict) and value.get("monitor")):
            continue
        mode = "min" if "'mode': 'min'" in key else "max"
        score = value.get("current_score")
        best_path = value.get("best_model_path") or None
        return mode, (float(score) if score is not None else float("nan")), best_path
    return None


def best_of_run(run: Path) -> Optional[Path]:
    """The run's best checkpoint by its monitored value, read from each checkpoint file in ``run/checkpoints``.

    Not only from ``last.ckpt``'s record: after a crash (SIGKILL, a non-finite loss) ``last.ckpt`` can be older
    than the newest best checkpoint, whose predecessor, the one it names, was deleted."""
    folder = run / "checkpoints"
    scored: list[tuple[float, float, Path]] = []
    mode = "max"
    for path in sorted(folder.glob("*.ckpt")):
        try:
            found = _monitor_state(path)
        except Exception:  # a file that is not a checkpoint (or a truncated one) is not a candidate
            continue
        if found is None:
            continue
        mode, score, best_path = found
        # The best-checkpoint callback saves a file right after recording it as the best, with its own score;
        # last.ckpt records the latest validation's score, which belongs to a file only if it is that file.
        if path.name == "last.ckpt" or (best_path and Path(best_path).name != path.name):
            continue
        if score == score:  # not NaN
            scored.append((score, path.stat().st_mtime, path))
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda t: (sign * t[0], t[1]))[2]


def resolve(ckpt_path: str, log_root: Path) -> Path:
    """A concrete file for ``last``, ``best`` or a path; CheckpointNotFound with advice otherwise."""
    if ckpt_path not in ("last", "best"):
        path = Path(ckpt_path)
        if not path.is_file():
            raise CheckpointNotFound(f"checkpoint '{ckpt_path}' does not exist")
        return path
    if ckpt_path == "last":
        last = latest_with(log_root)
        if last is None:
            raise CheckpointNotFound(
                f"--ckpt_path last: no run in '{log_root}' has checkpoints/last.ckpt; train one with `fit` first"
                " or give a checkpoint's path"
            )
        return last
    run = latest_run_with_checkpoints(log_root)
    if run is None:
        raise CheckpointNotFound(
            f"--ckpt_path best: no run in '{log_root}' has checkpoints; train one with `fit` first or give a"
            " checkpoint's path"
        )
    best = best_of_run(run)
    if best is None:
        raise CheckpointNotFound(f"--ckpt_path best: {run} holds no checkpoint with a monitored score")
    return best


def run_version(ckpt: Path, log_root: Path) -> Optional[int]:
    """N when ``ckpt`` lies in ``log_root/version_N/checkpoints/``."""
    run = ckpt.resolve().parent.parent
    if ckpt.resolve().parent.name == "checkpoints" and run.parent == log_root.resolve():
        m = re.fullmatch(r"version_(\d+)", run.name)
        return int(m.group(1)) if m else None
    return None
