"""Running the command line the way the tests do: a tiny net on tiny data, in process or as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def tiny_net(data_dir, *extra):
    """The tiny net and data, with the user's defaults for everything else (progress bar, logger, checkpoints)."""
    return [
        "--data.data_dir", str(data_dir), "--data.download", "false", "--data.val_size", "40",
        "--data.batch_size", "16", "--model.net.arch", "vgg11", "--model.net.width", "0.125", *extra,
    ]  # fmt: skip


def tiny(data_dir, *extra):
    """``tiny_net`` without a progress bar or model summary, for quiet in-process runs."""
    return tiny_net(
        data_dir, "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra
    )


# Two CPU processes with the gloo backend: every collective DDP uses, without a GPU.
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def ddp_args(data_dir, *extra):
    """``tiny_net`` (the user's defaults: progress bar, logger, checkpoints) on two DDP processes."""
    return tiny_net(data_dir, *DDP, *extra)


def finish(proc, timeout=240):
    """Wait for a ``run_cli`` process; fail with its stderr's end if it hangs or exits non-zero."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except Exception as e:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run did not end in {timeout} s:\n{err[-3000:]}") from e
    assert proc.returncode == 0, err[-3000:]
    return out, err


def ranks(folder: Path) -> list[dict]:
    """What ``tests.helpers.RecordRank`` wrote for each of two DDP ranks."""
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


def fit_tiny(data_dir, model, callbacks=(), data_options=None, **trainer_options):
    """Fit ``model`` in this process on the tiny data (160 train / 40 val images, batch 16: 10 steps an epoch; more
    ``data_options`` for the data module) with a quiet CPU trainer (no logger, progress bar, summary or checkpoints
    unless ``trainer_options`` say so)."""
    import lightning as L

    from vgg_lightning.data.datamodule import ImageDataModule

    options = dict(download=False, val_size=40, batch_size=16, **(data_options or {}))
    data = ImageDataModule(data_dir=str(data_dir), **options)
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        **trainer_options,
    }
    trainer = L.Trainer(callbacks=list(callbacks), **options)
    trainer.fit(model, datamodule=data)
    return trainer


REPO = Path(__file__).resolve().parents[2]  # the repository root, for PYTHONPATH


def run_cli(args, cwd, extra_env=None, **kwargs):
    env = {**os.environ, **(extra_env or {}), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "vgg_lightning", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def run_cli_to_end(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "vgg_lightning", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
