"""Checkpoints at the edges: the best one after a crash, a checkpoint that does not fit the data, resuming from an
earlier state of a run, evaluating a budgeted run."""

import shutil
import unicodedata

import pytest
import torch

from vgg_lightning import checkpoints
from vgg_lightning.cli import main

from .helpers.callbacks import ValidationSteps
from .helpers.data import tiny_folder_args, write_tree
from .helpers.runs import run_cli, tiny


def fit_epochs(data_dir, epochs, *extra):
    args = tiny(data_dir, "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", "3", *extra)
    assert main(["fit", *args]) == 0


def score_of(path):
    state = torch.load(path, weights_only=True)["callbacks"]
    return float(next(v for k, v in state.items() if k.startswith("ModelCheckpoint"))["current_score"])


def test_best_survives_a_stale_last_ckpt_and_ignores_older_runs(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fit_epochs(cifar10_dir, 1)  # version_0: an older run
    fit_epochs(cifar10_dir, 3, "--checkpoint.save_top_k", "-1")  # version_1: a file per epoch
    folder = tmp_path / "lightning_logs" / "version_1" / "checkpoints"
    epochs = sorted(p for p in folder.iterdir() if p.name != "last.ckpt")
    assert len(epochs) == 3
    # On a tie Lightning keeps the first file that reached the score as its best (a later one must beat it).
    best = max(epochs, key=lambda p: (score_of(p), -p.stat().st_mtime))
    # A crash: last.ckpt is from before the newest best, and names a best file that is gone.
    last = torch.load(folder / "last.ckpt", weights_only=True)
    key = next(k for k in last["callbacks"] if k.startswith("ModelCheckpoint"))
    last["callbacks"][key]["best_model_path"] = str(folder / "epoch000-val_acc0.0000.ckpt")
    torch.save(last, folder / "last.ckpt")
    assert checkpoints.resolve("best", tmp_path / "lightning_logs") == best
    assert main(["test", *tiny(cifar10_dir)]) == 0  # the evaluation default: the newest run's best
    assert f"weights: {best.relative_to(tmp_path)} (the newest run's best" in capsys.readouterr().err
    # Killed before its first last.ckpt: the newest run's own best still wins over an older run's files.
    (folder / "last.ckpt").unlink()
    assert checkpoints.resolve("best", tmp_path / "lightning_logs") == best


def test_a_checkpoint_for_other_classes_stops_before_any_work(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fit_epochs(cifar10_dir, 1)
    ckpt = str(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    three = write_tree(tmp_path / "three", "train", 4)  # bird, cat, dog
    args = tiny_folder_args(three, tmp_path, "--ckpt_path", ckpt)
    assert main(["validate", *args]) == 2
    err = capsys.readouterr().err
    assert "checkpoint (10): airplane, automobile" in err and "data       (3): bird, cat, dog" in err
    assert "Traceback" not in err and "size mismatch" not in err
    # The same count with other names: refused too, not reported under the wrong names.
    ten = write_tree(tmp_path / "ten", "train", 2, classes=("bird", "cat", "dog"))
    for i in range(7):
        shutil.copytree(ten / "train" / "bird", ten / "train" / f"other{i}")
    assert main(["test", *tiny_folder_args(ten, tmp_path, "--ckpt_path", ckpt)]) == 2
    assert "trained on other classes" in capsys.readouterr().err


def test_nfd_folder_names_are_the_same_classes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    nfc = unicodedata.normalize("NFC", "éclair")
    nfd = unicodedata.normalize("NFD", "éclair")
    trained = tmp_path / "linux"
    for name, colour in ((nfc, "cat"), ("fig", "dog")):
        write_tree(trained / "_tmp", "train", 6, classes=(colour,))
        shutil.move(trained / "_tmp" / "train" / colour, trained / "train" / name)
    copied = tmp_path / "mac"  # the same folders as macOS names them: NFD
    shutil.copytree(trained / "train" / nfc, copied / "train" / nfd)
    shutil.copytree(trained / "train" / "fig", copied / "train" / "fig")
    args = tiny_folder_args(trained, tmp_path, "--data.val_size", "4", "--trainer.max_epochs", "1")
    assert main(["fit", *args]) == 0
    capsys.readouterr()
    assert main(["validate", *tiny_folder_args(copied, tmp_path, "--data.val_size", "4", "--ckpt_path", "last")]) == 0
    out = capsys.readouterr().out
    assert f"val/acc_class/{nfc}" in out and "val/acc_class/fig" in out


def test_fit_from_an_earlier_state_starts_a_new_run(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fit_epochs(cifar10_dir, 2, "--checkpoint.save_top_k", "-1")
    run0 = tmp_path / "lightning_logs" / "version_0"
    before = {p: p.read_bytes() for p in (run0 / "checkpoints" / "last.ckpt", run0 / "config.yaml")}
    first_epoch = next((run0 / "checkpoints").glob("epoch000-*.ckpt"))
    capsys.readouterr()
    args = tiny(cifar10_dir, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3")
    assert main(["fit", *args, "--ckpt_path", str(first_epoch)]) == 0
    assert "logging into a new run folder" in capsys.readouterr().err
    assert all(p.read_bytes() == data for p, data in before.items())  # the earlier run is untouched
    resumed = torch.load(tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert (resumed["epoch"], resumed["global_step"]) == (1, 6)  # went on from epoch 0's end


def test_evaluating_a_budgeted_run_keeps_the_first_screen(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit_epochs(cifar10_dir, 1)
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    state = torch.load(folder / "last.ckpt", weights_only=True)
    state["callbacks"]["TimeBudget"] = {"seconds": 900.0, "planned_steps": 3}  # as a budgeted fit saves it
    torch.save(state, folder / "last.ckpt")
    proc = run_cli(["test", *tiny(cifar10_dir, "--ckpt_path", "last")], tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Test results on 40 images" in out
    assert "Be aware" not in err and "TimeBudget" not in err


@pytest.mark.parametrize(
    "max_steps, budget, validated", [(15, [], [10, 15]), (5, [], [5]), (5, ["--trainer.max_time", "00:00:10:00"], [5])]
)
def test_max_steps_inside_an_epoch_ends_validated_and_checkpointed(
    max_steps, budget, validated, cifar10_dir, tmp_path, monkeypatch, recwarn
):
    """10 steps an epoch. Lightning alone validates only at epoch ends: max_steps 15 ended with epoch 0's val/acc
    printed again for step 15 and a checkpoint named after it; max_steps 5 with no validation at all, no best
    checkpoint and ModelCheckpoint's warning that val/acc was never logged; so did max_steps 5 under a time budget
    (as in `--config configs/cpu.yaml --trainer.max_steps 5`), which plans only after 30 steps."""
    monkeypatch.chdir(tmp_path)
    ValidationSteps.seen = []
    args = tiny(
        cifar10_dir,
        *("--trainer.max_steps", str(max_steps), "--checkpoint.save_top_k", "-1", *budget),
        "--trainer.callbacks+=tests.helpers.ValidationSteps",
    )
    assert main(["fit", *args]) == 0
    assert ValidationSteps.seen == validated
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    saved = sorted(torch.load(p, weights_only=True)["global_step"] for p in folder.glob("epoch*.ckpt"))
    assert saved == validated  # one checkpoint per validation, the last of them at max_steps
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == max_steps
    assert not [w for w in recwarn if "could not find the monitored key" in str(w.message)]
