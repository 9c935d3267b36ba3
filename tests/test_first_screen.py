"""What a Lightning user sees and expects: the first screen, where runs go, which weights are evaluated."""

import subprocess
import sys

import pytest
import torch

from vgg_lightning.cli import main
from vgg_lightning.data.image_sets import ImageSet
from vgg_lightning.module import VGGClassifier

from .helpers.runs import tiny


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "vgg_lightning", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_first_screen_is_the_users_run(cifar10_dir, tmp_path):
    args = [a for a in tiny(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2")]
    args[args.index("--trainer.enable_model_summary") + 1] = "true"
    r = run_cli("fit", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    screen = r.stdout + r.stderr
    for noise in ("litlogger", "LeafSpec", "is not supported by the model summary", "GPU available", "TPU available"):
        assert noise not in screen, noise
    assert screen.count("bf16 instructions") == 1  # one line for the device and precision chosen, with why
    header = next(line for line in screen.splitlines() if "| Name" in line and "FLOPs" in line)
    summary = next(line for line in screen.splitlines() if line.startswith("0 | net"))
    flops = summary.split("|")[[c.strip() for c in header.split("|")].index("FLOPs")].strip()
    assert flops not in ("0", "")  # example_input_array lets the summary count FLOPs


def test_vgg16_summary_counts_its_flops():
    from lightning.pytorch.utilities.model_summary import ModelSummary

    summary = ModelSummary(VGGClassifier(net=dict(arch="vgg16")), max_depth=1)
    assert summary.total_flops == pytest.approx(2 * 0.314e9, rel=0.03)  # 0.31 GMAC for one 32x32 image


def test_help_names_the_command(tmp_path):
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m vgg_lightning")


def test_default_root_dir_moves_runs(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny(
        cifar10_dir,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.default_root_dir",
        "runs",
    )
    assert main(["fit", *args]) == 0
    assert (tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "lightning_logs").exists()
    capsys.readouterr()
    assert main(["test", *tiny(cifar10_dir, "--trainer.default_root_dir", "runs")]) == 0  # best found there
    assert "runs/lightning_logs/version_0/checkpoints/epoch000" in capsys.readouterr().err


def test_evaluation_defaults_to_the_newest_best_and_says_so(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["test", *tiny(cifar10_dir)]) == 2  # no run yet: one message, no random-weight table
    err = capsys.readouterr().err
    assert "train one with `python -m vgg_lightning fit` first" in err and "--ckpt_path" in err
    assert main(["fit", *tiny(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2")]) == 0
    capsys.readouterr()
    for command in ("test", "validate", "predict"):
        assert main([command, *tiny(cifar10_dir)]) == 0
        err = capsys.readouterr().err
        assert "weights: lightning_logs/version_0/checkpoints/epoch000-val_acc" in err and "newest run's best" in err
    assert main(["test", *tiny(cifar10_dir, "--ckpt_path", "untrained")]) == 0  # on purpose only
    assert "weights: freshly initialized, untrained" in capsys.readouterr().err


def test_checkpointing_off_is_respected(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = tiny(
        cifar10_dir,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.enable_checkpointing",
        "false",
    )
    assert main(["fit", *args]) == 0
    assert (tmp_path / "lightning_logs" / "version_0").is_dir()
    assert not list(tmp_path.rglob("*.ckpt"))


def test_loader_state_resumes_mid_epoch():
    from vgg_lightning.data.loader import TensorBatchLoader

    images = torch.zeros(100, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(100)
    full = TensorBatchLoader(ImageSet(images, labels), batch_size=10, shuffle=True, drop_last=True, seed=1)
    full.set_epoch(3)
    order = [y for _, y in full]
    cut = TensorBatchLoader(ImageSet(images, labels), batch_size=10, shuffle=True, drop_last=True, seed=1)
    cut.set_epoch(3)
    it = iter(cut)
    seen = [next(it)[1] for _ in range(4)]
    state = cut.state_dict()
    assert state == {"epoch": 3, "batches_served": 4}
    resumed = TensorBatchLoader(ImageSet(images, labels), batch_size=10, shuffle=True, drop_last=True, seed=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)
    rest = [y for _, y in resumed]
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, order)) and len(seen + rest) == 10
    assert len([y for _, y in resumed]) == 10  # the next iteration is a whole epoch again


def test_a_message_during_a_progress_bar_gets_a_line_of_its_own(monkeypatch):
    """The forecast line ("expected: about ...") is said a few dozen steps into the first epoch, while the bar is
    drawn: on a terminal both streams share the screen, and the message must not land inside the bar's line."""
    import io

    from tqdm import tqdm

    from vgg_lightning.messages import say

    screen = io.StringIO()  # stdout (the bar) and stderr (the message) on one terminal
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    bar = tqdm(total=100, file=sys.stdout, ncols=60, mininterval=0)
    bar.update(30)
    say("expected: about 1 h 10 min for 40 epochs")
    bar.update(10)
    bar.close()
    text = screen.getvalue()
    before, after = text.split("expected: about 1 h 10 min for 40 epochs\n")
    assert before.rstrip(" ").endswith("\r")  # the bar's line was cleared first: the message starts its own line
    assert "40/100" in after  # and the bar goes on below it
