"""Reading a run's per-epoch curves back from its TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

CURVES = ("train/loss_epoch", "train/acc", "val/loss", "val/acc")


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a run as ``{tag: [(step, value), ...]}``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    if not any(run_dir.glob("events.out.tfevents*")):
        raise FileNotFoundError(f"{run_dir}: no TensorBoard event files (is it a lightning_logs/version_N folder?)")
    acc = EventAccumulator(str(run_dir), size_guidance={SCALARS: 0})
    acc.Reload()
    out: dict[str, list[tuple[int, float]]] = {}
    for tag in acc.Tags()["scalars"]:
        # A resumed run may log a step twice: keep the newest value of each step.
        latest = {e.step: e.value for e in acc.Scalars(tag)}
        out[tag] = sorted(latest.items())
    return out


def epoch_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch series ``{tag: [(epoch, value), ...]}`` (epochs from 1) for loss and accuracy."""
    scalars = read_scalars(run_dir)
    epoch_at = dict(scalars.get("epoch", []))
    curves: dict[str, list[tuple[int, float]]] = {}
    for tag in CURVES:
        points = {}
        for step, value in scalars.get(tag, []):
            if step in epoch_at:
                points[int(epoch_at[step]) + 1] = value
        if points:
            curves[tag] = sorted(points.items())
    return curves
