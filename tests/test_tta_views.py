"""The test-time view study: its view sets score what the model's own TTA options score."""

import subprocess
import sys

import pytest
import torch

from vgg_lightning.cli import main
from vgg_lightning.data.augment import normalize
from vgg_lightning.data.datamodule import ImageDataModule
from vgg_lightning.module import VGGClassifier
from vgg_lightning.tools import tta_views

from .helpers.runs import tiny


def test_view_sets_match_the_models_tta_options(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3")]) == 0
    ckpt = str(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    monkeypatch.setattr(tta_views, "auto_precision", lambda device_type: "32-true")  # fp32 on both sides
    table = tta_views.run([ckpt, ckpt], max_shift=2)
    out = capsys.readouterr().out
    assert "50 passes" in out and "all 25 shifts, equal" in out

    dm = ImageDataModule(data_dir=str(cifar10_dir), download=False, val_size=40, batch_size=16)
    dm.setup("fit")
    images, labels = dm.val_set.images(), dm.val_set.labels
    x = normalize(images, dm.mean, dm.std)
    for shift, name in [(2, "tta.shift 2: (0,0) 1/2, (-2,-2) and (2,2) 1/4"), (0, "mirror only (tta.shift 0)")]:
        model = VGGClassifier.load_from_checkpoint(ckpt, tta=dict(flip=True, shift=shift), weights_only=True).eval()
        with torch.no_grad():
            expected = (model.predict_logits(x).argmax(1) == labels).float().mean().item()
        assert table[name] == [pytest.approx(expected)] * 2


def test_view_sets_keep_within_the_largest_shift():
    assert set(tta_views.view_sets(0)) == {"mirror only (tta.shift 0)"}
    one = tta_views.view_sets(1)
    assert "tta.shift 1: (0,0) 1/2, (-1,-1) and (1,1) 1/4" in one and "3x3 grid of shifts by 2, equal" not in one
    for views in tta_views.view_sets(2).values():
        assert sum(w for w, _ in views) == pytest.approx(1.0)


def test_a_missing_checkpoint_is_one_message(tmp_path):
    cmd = [sys.executable, "-m", "vgg_lightning.tools.tta_views", str(tmp_path / "nope.ckpt")]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope.ckpt' does not exist" in r.stderr and "Traceback" not in r.stderr
