"""``python -m vgg_lightning plot RUN [RUN ...]``: loss and accuracy per epoch as a PNG, runs overlaid."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vgg_lightning.runlog import epoch_curves


def plot(runs: list[str], output: str = "curves.png", labels: Optional[list[str]] = None) -> Path:
    """Write loss and accuracy per epoch (train dashed, val solid) of one or more runs to a PNG.

    Args:
        runs: run folders, e.g. ``lightning_logs/version_0``.
        output: PNG file to write.
        labels: legend names, one per run; default: the folder names.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise SystemExit("error: give at least one run folder, e.g. lightning_logs/version_0")
    if labels is not None and len(labels) != len(runs):
        raise SystemExit(f"error: {len(labels)} labels given for {len(runs)} runs")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for i, run in enumerate(runs):
        try:
            curves = epoch_curves(Path(run))
        except FileNotFoundError as e:
            raise SystemExit(f"error: {e}") from None
        name = labels[i] if labels else Path(run).name
        color = f"C{i % 10}"
        for tag, ax in (
            ("train/loss_epoch", ax_loss),
            ("val/loss", ax_loss),
            ("train/acc", ax_acc),
            ("val/acc", ax_acc),
        ):
            if tag in curves:
                x, y = zip(*curves[tag])
                style = "--" if tag.startswith("train") else "-"
                ax.plot(x, y, style, color=color, marker="o", markersize=3, label=f"{name} {tag.split('/')[0]}")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "top-1 accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out}")
    return out


def main(args: list[str]) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m vgg_lightning plot", description=plot.__doc__)
    parser.add_argument("runs", nargs="+", help="run folders, e.g. lightning_logs/version_0")
    parser.add_argument("--output", default="curves.png", help="PNG file to write")
    parser.add_argument("--labels", type=Optional[list[str]], default=None, help="legend names, one per run")
    cfg = parser.parse_args(args)
    plot(cfg.runs, cfg.output, cfg.labels)
