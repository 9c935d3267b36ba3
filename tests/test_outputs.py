"""What users look at: test report, predictions on their images, TensorBoard pictures, curves, export."""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vgg_lightning.cli import main
from vgg_lightning.module import VGGClassifier

from .helpers.data import CIFAR10_NAMES, write_cifar10
from .helpers.runs import tiny


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One trained tiny run (2 epochs), shared by the tests below; 80 test images."""
    root = tmp_path_factory.mktemp("outputs")
    data_dir = root / "data"
    write_cifar10(data_dir, test=80)
    old = Path.cwd()
    import os

    os.chdir(root)
    try:
        args = tiny(data_dir, "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "2")
        assert main(["fit", *args]) == 0
    finally:
        os.chdir(old)
    return root, data_dir, root / "lightning_logs" / "version_0"


@pytest.fixture
def in_run(run, monkeypatch):
    root, data_dir, run_dir = run
    monkeypatch.chdir(root)
    return data_dir, run_dir


def test_test_prints_table_and_writes_json(in_run, capsys):
    data_dir, run_dir = in_run
    assert main(["test", *tiny(data_dir, "--ckpt_path", "best")]) == 0
    out = capsys.readouterr().out
    assert "Test results on 80 images" in out and "top-5 accuracy" in out
    for name in CIFAR10_NAMES:
        assert f"    {name}" in out
    report = json.loads((run_dir / "test_metrics.json").read_text())
    assert report["num_images"] == 80 and list(report["per_class"]) == CIFAR10_NAMES
    assert f"{100 * report['acc']:.2f} %" in out
    matrix = torch.tensor(report["confusion"])
    assert matrix.sum() == 80 and abs(matrix.diag().sum() / 80 - report["acc"]) < 1e-6
    assert report["checkpoint"].endswith(".ckpt") and "val_acc" in report["checkpoint"]


def test_predict_on_the_test_set_prints_64(in_run, capsys):
    data_dir, run_dir = in_run
    assert main(["predict", *tiny(data_dir, "--ckpt_path", "last")]) == 0
    out = capsys.readouterr().out
    truth = next(line for line in out.splitlines() if line.startswith("GroundTruth:")).split()[1:]
    pred = next(line for line in out.splitlines() if line.startswith("Predicted:")).split()[1:]
    assert len(truth) == len(pred) == 64 and set(truth) <= set(CIFAR10_NAMES)
    rows = list(csv.DictReader(open(run_dir / "predictions.csv")))
    assert len(rows) == 80 and [r["label"] for r in rows[:64]] == truth and [r["predicted"] for r in rows[:64]] == pred
    accuracy = sum(r["label"] == r["predicted"] for r in rows) / 80
    assert f"on the 80 test images: {100 * accuracy:.2f} %" in out


def test_predict_on_image_files(in_run, tmp_path, capsys):
    data_dir, run_dir = in_run
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(folder / "big.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (20, 40, 4), dtype=np.uint8), "RGBA").save(folder / "sub" / "alpha.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    args = tiny(tmp_path / "no-cifar-here", "--ckpt_path", "last", "--data.predict_path", str(folder))
    assert main(["predict", *args]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "notes.txt" in captured.err and "broken.png" in captured.err
    rows = list(csv.DictReader(open(run_dir / "predictions.csv")))
    assert [Path(r["path"]).name for r in rows] == ["big.jpg", "grey.png", "alpha.png"]
    for r in rows:
        assert r["predicted"] in CIFAR10_NAMES  # class names come from the checkpoint
        top3 = [part.split(":") for part in r["top3"].split(";")]
        assert len(top3) == 3 and top3[0][0] == r["predicted"] and float(top3[0][1]) == float(r["probability"])
    assert "big.jpg" in captured.out
    # a glob works too
    assert main(["predict", *args[:-1], str(folder / "*.png")]) == 0
    assert len(list(csv.DictReader(open(run_dir / "predictions.csv")))) == 1  # grey.png (broken.png skipped)


def test_image_preprocessing_matches_the_training_format(tmp_path):
    from vgg_lightning.data.images import load_image

    red = np.zeros((100, 60, 3), np.uint8)
    red[..., 0] = 200
    Image.fromarray(red).save(tmp_path / "red.png")
    x = load_image(tmp_path / "red.png")
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert int(x[0].min()) == 200 and int(x[1:].max()) == 0


def test_tensorboard_has_pictures_scalars_and_hparams(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, run_dir = run
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"val/predictions", "val/confusion_matrix"} <= set(tags["images"])
    # Drawn when cheap next to the epochs (on these sub-second epochs: not every epoch), always after the last.
    grids = acc.Images("val/predictions")
    assert 1 <= len(grids) <= 2 and grids[-1].step == 20  # 2 epochs of 10 steps: after the last validation
    grid = grids[-1]
    assert 350 <= grid.width <= 500 and 350 <= grid.height <= 500  # 4 x 4 images, about TensorBoard's card size
    scalars = set(tags["scalars"])
    expected = {
        "train/loss",
        "train/loss_epoch",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_top5",
        "train/epoch_time_s",
        "train/images_per_s",
        "hp/best_val_acc",
        "lr-SGD/pg1",
    }
    assert expected <= scalars
    assert {f"val/acc_class/{n}" for n in CIFAR10_NAMES} <= scalars
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    best = max(e.value for e in acc.Scalars("val/acc"))
    assert acc.Scalars("hp/best_val_acc")[-1].value == pytest.approx(best)


def test_plot_writes_a_png(run, tmp_path):
    import subprocess

    _, _, run_dir = run
    out = tmp_path / "curves.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vgg_lightning",
            "plot",
            str(run_dir),
            str(run_dir),
            "--output",
            str(out),
            "--labels",
            '["first", "second"]',
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1200, 450)
        assert len(set(img.convert("RGB").getdata())) > 50  # drawn curves, not a blank canvas
    from vgg_lightning.runlog import epoch_curves

    curves = epoch_curves(run_dir)
    assert [e for e, _ in curves["val/acc"]] == [1, 2] and [e for e, _ in curves["train/loss_epoch"]] == [1, 2]


def test_plot_rejects_a_folder_without_runs(tmp_path):
    import subprocess

    r = subprocess.run([sys.executable, "-m", "vgg_lightning", "plot", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and "no TensorBoard event files" in r.stderr


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_export_agrees_with_pytorch(in_run, tmp_path, fmt, kind, capsys):
    from vgg_lightning.export import export

    data_dir, run_dir = in_run
    out = export("best", format=fmt, output=str(tmp_path / f"model.{fmt}"), input=kind)
    assert "max |logit difference|" in capsys.readouterr().out
    model = VGGClassifier.load_from_checkpoint(next(run_dir.glob("checkpoints/epoch*.ckpt")), weights_only=True).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    normalized = (images.float() / 255 - mean) / std
    with torch.no_grad():
        expected = model.net(normalized)
    feed = images if kind == "uint8" else normalized
    if fmt == "torchscript":
        got = torch.jit.load(str(out))(feed)
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": feed.numpy()})[0])
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_export_without_onnx_says_how_to_install(in_run, tmp_path, monkeypatch, capsys):
    from vgg_lightning.export import export

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(SystemExit) as e:
        export("best", format="onnx", output=str(tmp_path / "m.onnx"))
    assert e.value.code == 1
    assert "pip install 'vgg_lightning[export]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_readme_snippet_classifies_an_image(in_run, tmp_path):
    """The README's three lines, run as written (paths adapted)."""
    data_dir, run_dir = in_run
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    snippet = readme.split("<!-- load-snippet -->")[1].split("```python")[1].split("```")[0]
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "my_cat.png")
    ckpt = next(run_dir.glob("checkpoints/epoch*.ckpt"))
    code = snippet.replace("lightning_logs/version_0/checkpoints/last.ckpt", str(ckpt)).replace(
        "my_cat.png", str(tmp_path / "my_cat.png")
    )
    scope: dict = {}
    exec(code, scope)
    assert scope["label"] in CIFAR10_NAMES


def test_phase_timer_splits_the_whole_command(cifar10_dir, tmp_path):
    import subprocess

    args = tiny(cifar10_dir, "--trainer.max_epochs", "2", "--trainer.callbacks+=vgg_lightning.callbacks.PhaseTimer")
    r = subprocess.run(
        [sys.executable, "-m", "vgg_lightning", "fit", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stderr[r.stderr.index("phase ") :].splitlines()
    rows = {line.rsplit(None, 2)[0].strip(): float(line.rsplit(None, 2)[1]) for line in table[1:-1]}
    assert {"validation", "figures", "checkpoint writes", "start-up, imports, options, data"} <= set(rows)
    assert rows["checkpoint writes"] > 0 and rows["validation"] > 0 and rows["figures"] > 0
    total = float(table[-1].split()[-1])
    assert abs(sum(rows.values()) - total) < 0.05 * total  # the phases add up to the whole command
