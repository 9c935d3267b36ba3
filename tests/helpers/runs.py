"""Running the command line the way the tests do: a tiny net on tiny data, in process or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def tiny_net(data_dir, *extra):
    """The tiny net and data, with the user's defaults for everything else (progress bar, logger, checkpoints)."""
    return [
        "--data.data_dir", str(data_dir), "--data.download", "false", "--data.val_size", "40",
        "--data.batch_size", "16", "--model.arch", "vgg11", "--model.width", "0.125", *extra,
    ]  # fmt: skip


def tiny(data_dir, *extra):
    """``tiny_net`` without a progress bar or model summary, for quiet in-process runs."""
    return tiny_net(
        data_dir, "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra
    )


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
