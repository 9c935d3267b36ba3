"""The GPU measurements the recipes need, as one prepared run (for a machine with a GPU, minutes counted).

    python -m vgg_lightning.tools.gpu_report --data_dir DIR --out OUT_DIR

Runs, each timed from the shell's point of view (start-up and imports included) with its output in OUT_DIR:
the bench (Lightning vs a plain loop, batch 512, bf16; fused SGD on and off), ``fit`` with ``configs/fast.yaml``
and with the default recipe (the package's ``default.yaml``) on CIFAR-10 as class folders (``DIR/train/<class>/*``)
with the phase table of ``callbacks.PhaseTimer``, and the blog article's run (``configs/blog_vgg16.yaml``, 20
epochs). Run it from the project's folder (the recipes are its ``configs/*.yaml``). ``--only`` picks some of them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional


def _fit(config: Optional[str], data_dir: str) -> list[str]:
    recipe = ["--config", str(Path("configs", config).resolve())] if config else []  # None: the default alone
    return [
        "-m",
        "vgg_lightning",
        "fit",
        *recipe,
        "--data.dataset",
        "folder",
        "--data.data_dir",
        data_dir,
        "--data.val_size",
        "5000",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=vgg_lightning.callbacks.PhaseTimer",
    ]


def runs(data_dir: str) -> dict[str, list[str]]:
    bench = [
        "-m",
        "vgg_lightning.tools.bench",
        "--batch_size",
        "512",
        "--precision",
        "bf16-mixed",
        "--steps",
        "60",
        "--warmup",
        "15",
        "--repeats",
        "3",
    ]
    return {
        "bench_fused": [*bench, "--fused", "true"],
        "bench_unfused": [*bench, "--fused", "false"],
        "fit_fast": _fit("fast.yaml", data_dir),
        "fit_default": _fit(None, data_dir),
        "fit_blog": _fit("blog_vgg16.yaml", data_dir),
    }


def main(
    data_dir: str,
    out: str = "gpu_report",
    only: Optional[list[str]] = None,
    timeout: int = 600,
) -> None:
    """Run the measurements; each writes OUT/<name>.log and a line to OUT/summary.txt.

    Args:
        data_dir: the class-folder copy of CIFAR-10 (train/<class>/*.jpg).
        out: folder for the logs.
        only: names of the runs to do (bench_fused, bench_unfused, fit_fast, fit_default, fit_blog); default all.
        timeout: seconds each run may take.
    """
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, args in runs(str(Path(data_dir).resolve())).items():  # the runs work inside out_dir
        if only and name not in only:
            continue
        t0 = time.monotonic()
        with open(out_dir / f"{name}.log", "w") as log:
            try:
                rc = subprocess.run(
                    [sys.executable, *args], cwd=out_dir, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        line = f"{name}: exit {rc}, {time.monotonic() - t0:.1f} s wall, from the shell's point of view"
        print(line, flush=True)
        with open(out_dir / "summary.txt", "a") as summary:
            summary.write(line + "\n")


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(main, as_positional=False)
