"""Which test-time views pay: every shift of the validation images, and its mirror, through trained models.

    python -m vgg_lightning.tools.tta_views RUN/checkpoints/last.ckpt [MORE.ckpt ...] [--data_dir DIR] [--max_shift 2]

Each checkpoint's validation split is rebuilt from the data options saved in it (``--data_dir`` where the data
has moved since). The logits of every shift by -max_shift..max_shift pixels in both directions (reflected
borders, as ``--model.tta.shift`` does) and of its mirror are computed once; the table then shows the accuracy of
named view sets, weighted means of those logits, per model and on average, against ``--model.tta.shift 2``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from vgg_lightning import tta
from vgg_lightning.checkpoints import read as read_checkpoint
from vgg_lightning.data.augment import normalize
from vgg_lightning.data.datamodule import ImageDataModule
from vgg_lightning.errors import ConfigError, DataError
from vgg_lightning.module import VGGClassifier
from vgg_lightning.precision import auto_precision, prefers_channels_last
from vgg_lightning.tta import Views


def view_sets(max_shift: int) -> dict[str, Views]:
    """Named view sets that need shifts of at most ``max_shift``; the first is ``tta.shift 2``'s (the reference)."""
    diag = [(a, b) for a in (-1, 1) for b in (-1, 1)]
    axes = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    grid = range(-max_shift, max_shift + 1)
    sets: dict[str, Views] = {
        "tta.shift 2: (0,0) 1/2, (-2,-2) and (2,2) 1/4": tta.views(2),
        "mirror only (tta.shift 0)": tta.views(0),
        "tta.shift 2's views, equal weights": [(1 / 3, (0, 0)), (1 / 3, (-2, -2)), (1 / 3, (2, 2))],
        "tta.shift 1: (0,0) 1/2, (-1,-1) and (1,1) 1/4": tta.views(1),
        "(0,0) 1/2, 4 diagonal shifts of 1, 1/8 each": [(0.5, (0, 0))] + [(0.125, s) for s in diag],
        "(0,0) 1/2, 4 diagonal shifts of 2, 1/8 each": [(0.5, (0, 0))] + [(0.125, (2 * a, 2 * b)) for a, b in diag],
        "(0,0) 1/2, 4 shifts of 2 along the axes, 1/8 each": [(0.5, (0, 0))]
        + [(0.125, (2 * a, 2 * b)) for a, b in axes],
        "(0,0) 1/2, shifts of 1 and 2 on the diagonal, 1/8 each": [(0.5, (0, 0))]
        + [(0.125, (s, s)) for s in (-2, -1, 1, 2)],
        "3x3 grid of shifts by 2, equal": [(1 / 9, (a, b)) for a in (-2, 0, 2) for b in (-2, 0, 2)],
    }
    if max_shift > 0:
        sets[f"all {len(grid) ** 2} shifts, equal"] = [(1 / len(grid) ** 2, (a, b)) for a in grid for b in grid]
    return {name: v for name, v in sets.items() if all(max(abs(a), abs(b)) <= max_shift for _, (a, b) in v)}


@torch.no_grad()
def shifted_logits(
    model: VGGClassifier, images: torch.Tensor, mean, std, max_shift: int, batch_size: int = 500
) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Logits (float32, CPU) of each (dy, dx, mirrored) view of uint8 ``images``, in the model's precision."""
    device = model.device
    bf16 = auto_precision(device.type) == "bf16-mixed"
    fmt = torch.channels_last if prefers_channels_last(device) else torch.contiguous_format
    net = model.net.to(memory_format=fmt).eval()
    m = max_shift
    out: dict[tuple[int, int, bool], list[torch.Tensor]] = {}
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size].to(device), mean, std)
        padded = tta.pad(x, m)
        for dy in range(-m, m + 1):
            for dx in range(-m, m + 1):
                view = tta.shifted(padded, dy, dx, m, x.shape[-2:]).contiguous(memory_format=fmt)
                for mirrored in (False, True):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        logits = net(view.flip(3) if mirrored else view)
                    out.setdefault((dy, dx, mirrored), []).append(logits.float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def accuracy(logits: dict[tuple[int, int, bool], torch.Tensor], labels: torch.Tensor, views: Views) -> float:
    mixed = sum(w * (logits[(dy, dx, False)] + logits[(dy, dx, True)]) / 2 for w, (dy, dx) in views)
    return (mixed.argmax(1) == labels).float().mean().item()


def _validation_split(ckpt: dict, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    saved = {k: v for k, v in (ckpt.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    if not saved:
        raise ConfigError("the checkpoint holds no data options (was it written by `fit`?)")
    saved.update(download=False, **({"data_dir": data_dir} if data_dir else {}))
    dm = ImageDataModule(**saved)
    dm.prepare_data()
    dm.setup("fit")
    if dm.val_set is None or len(dm.val_set) == 0:
        raise ConfigError(f"the run's data options give no validation split (val_size {saved.get('val_size')})")
    return dm.to_image_size(dm.val_set.images()), dm.val_set.labels


def run(checkpoints: list[str], data_dir: str | None = None, max_shift: int = 2) -> dict[str, list[float]]:
    """Accuracy of each view set on each checkpoint's validation split; prints the table and returns it.

    Args:
        checkpoints: ``.ckpt`` files written by ``fit``.
        data_dir: where the runs' data lies now, if it has moved since they were trained.
        max_shift: largest shift in pixels, each way (the view sets that need more are left out).
    """
    if max_shift < 0 or max_shift > 8:
        raise ConfigError(f"--max_shift must be between 0 and 8, got {max_shift}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sets = view_sets(max_shift)
    table: dict[str, list[float]] = {name: [] for name in sets}
    for path in checkpoints:
        if not Path(path).is_file():
            raise ConfigError(f"checkpoint '{path}' does not exist")
        images, labels = _validation_split(read_checkpoint(path), data_dir)
        model = VGGClassifier.load_from_checkpoint(path, map_location=device, weights_only=True).eval()
        mean, std = model.normalization()  # the run's own, from the data module's state in the checkpoint
        logits = shifted_logits(model, images, mean, std, max_shift)
        for name, views in sets.items():
            table[name].append(accuracy(logits, labels, views))
        print(f"{path}: {len(labels)} validation images, {len(logits)} passes", flush=True)
    ref = next(iter(table.values()))  # "mirror only" is in every selection, so the table is never empty
    width = max(len(n) for n in sets)
    print(f"{'views (each with its mirror)':{width}s}  {'val acc % per checkpoint':>24s}  {'mean':>6s}  vs 1st row")
    for name, accs in table.items():
        mean_acc = statistics.mean(accs)
        delta = mean_acc - statistics.mean(ref)
        per = " ".join(f"{100 * a:.2f}" for a in accs)
        print(f"{name:{width}s}  {per:>24s}  {100 * mean_acc:6.2f}  {100 * delta:+.2f}")
    return table


def main(args: list[str] | None = None) -> None:
    from jsonargparse import ArgumentParser

    from vgg_lightning.errors import report

    parser = ArgumentParser(prog="python -m vgg_lightning.tools.tta_views", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoints written by fit")
    parser.add_function_arguments(run, skip={"checkpoints"})
    cfg = parser.parse_args(args)
    try:
        run(cfg.checkpoints, data_dir=cfg.data_dir, max_shift=cfg.max_shift)
    except (ConfigError, DataError) as e:
        raise SystemExit(report(e)) from None


if __name__ == "__main__":
    main()
