"""Faults, hostile input, determinism and DDP: each test fails when the behaviour it names is broken."""

import hashlib
import os
import signal
import tarfile
import time
from pathlib import Path

import pytest
import torch

from vgg_lightning.cli import main
from vgg_lightning.data.datamodule import ImageDataModule

from .helpers.runs import ddp_args, finish, ranks, run_cli, tiny, wait_for


def mirror(data_dir: Path, tmp_path: Path) -> tuple[str, str]:
    """A file:// mirror of the tiny CIFAR-10 copy as a .tar.gz, with its MD5."""
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_and_extracts(cifar10_dir, tmp_path):
    url, md5 = mirror(cifar10_dir, tmp_path)
    target = tmp_path / "fresh"
    dm = ImageDataModule(data_dir=str(target), archive_url=url, archive_md5=md5, val_size=50)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set.labels) == 150
    assert [p.name for p in target.iterdir()] == ["cifar-10-batches-py"]  # no temporary files left


def test_download_with_wrong_md5_leaves_nothing(cifar10_dir, tmp_path):
    from vgg_lightning.data.cifar_files import DataError

    url, _ = mirror(cifar10_dir, tmp_path)
    target = tmp_path / "fresh"
    dm = ImageDataModule(data_dir=str(target), archive_url=url, archive_md5="0" * 32)
    with pytest.raises(DataError, match="MD5"):
        dm.prepare_data()
    assert not target.exists()


def long_fit_args(data_dir, epochs=4):
    # batch 4: 40 steps per epoch, so a kill lands mid-epoch
    return ["fit", *tiny(data_dir, "--data.batch_size", "4", "--trainer.max_epochs", str(epochs))]


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_sigkill_then_resume_matches_an_uninterrupted_run(cifar10_dir, tmp_path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir(), cut_dir.mkdir()
    ref = run_cli(long_fit_args(cifar10_dir), ref_dir)
    proc = run_cli(long_fit_args(cifar10_dir), cut_dir)
    ckpt_dir = cut_dir / "lightning_logs" / "version_0" / "checkpoints"
    wait_for(ckpt_dir / "last.ckpt", proc)
    time.sleep(0.5)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for ckpt in ckpt_dir.iterdir():  # no file left truncated
        torch.load(ckpt, map_location="cpu", weights_only=True)
    killed_at = torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < killed_at < 160
    resumed = run_cli([*long_fit_args(cifar10_dir), "--ckpt_path", "last"], cut_dir)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert ref.wait(timeout=300) == 0
    # Same weights and optimizer state: epoch, step, optimizer, schedule, data order and augmentation RNG all
    # went on from the checkpoint.
    same_final_weights(ref_dir, cut_dir)


def same_final_weights(ref_dir: Path, cut_dir: Path) -> None:
    a, b = final_state(ref_dir / "lightning_logs" / "version_0"), final_state(cut_dir / "lightning_logs" / "version_0")
    assert (a["global_step"], b["global_step"]) == (160, 160)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(cifar10_dir, tmp_path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir(), cut_dir.mkdir()
    ref = run_cli(long_fit_args(cifar10_dir), ref_dir)
    proc = run_cli(long_fit_args(cifar10_dir), cut_dir)
    ckpt = cut_dir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    wait_for(ckpt, proc)
    epoch_end_step = torch.load(ckpt, weights_only=True)["global_step"]
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "SIGTERM: saved a resumable checkpoint" in err and "--ckpt_path last" in err
    stopped = torch.load(ckpt, weights_only=True)
    stopped_at = stopped["global_step"]
    assert epoch_end_step < stopped_at < 160  # saved at the interruption, not at the last epoch end
    assert stopped_at % 40 != 0  # mid-epoch (40 steps an epoch)
    assert stopped["ImageDataModule"]["train_loader"] == {"epoch": stopped_at // 40, "batches_served": stopped_at % 40}
    resumed = run_cli([*long_fit_args(cifar10_dir), "--ckpt_path", "last"], cut_dir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert ref.wait(timeout=300) == 0
    # The resumed epoch saw the batches the interrupted one had not (the loader is stateful), in the same order
    # and with the same augmentation draws: the same weights, bit for bit.
    same_final_weights(ref_dir, cut_dir)


def test_non_finite_loss_stops_with_step_and_keeps_good_checkpoints(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny(cifar10_dir, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "3")
    assert main(["fit", *args, "--trainer.callbacks+=tests.helpers.PoisonWeights"]) == 1
    err = capsys.readouterr().err
    assert "NaN or infinite at global step 3" in err and "--ckpt_path last" in err
    ckpts = list((tmp_path / "lightning_logs" / "version_0" / "checkpoints").iterdir())
    assert ckpts
    for ckpt in ckpts:
        state = torch.load(ckpt, weights_only=True)
        assert state["global_step"] == 3
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def weights_after_one_epoch(data_dir, workdir: Path, seed: int) -> dict:
    workdir.mkdir()
    os.chdir(workdir)
    args = tiny(
        data_dir, "--trainer.max_epochs", "1", "--seed_everything", str(seed), "--trainer.deterministic", "true"
    )
    assert main(["fit", *args]) == 0
    state = torch.load(workdir / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    return state


def test_seeded_runs_are_identical(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = weights_after_one_epoch(cifar10_dir, tmp_path / "a", 7)
    b = weights_after_one_epoch(cifar10_dir, tmp_path / "b", 7)
    c = weights_after_one_epoch(cifar10_dir, tmp_path / "c", 8)
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    cb_a = next(v for k, v in a["callbacks"].items() if k.startswith("ModelCheckpoint"))
    cb_b = next(v for k, v in b["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert cb_a["best_model_score"] == cb_b["best_model_score"]
    assert not all(torch.equal(v, c["state_dict"][k]) for k, v in a["state_dict"].items())


def test_ddp_on_two_cpu_processes(cifar10_dir, tmp_path):
    url, md5 = mirror(cifar10_dir, tmp_path)
    # The user's defaults (progress bar, logger, checkpoints): the bar alone once made the ranks hang.
    args = [
        "fit",
        *ddp_args(tmp_path / "data_ddp"),
        "--trainer.max_epochs",
        "1",
        "--data.download",
        "true",
        "--data.archive_url",
        url,
        "--data.archive_md5",
        md5,
        "--trainer.callbacks+=tests.helpers.RecordRank",
    ]
    _, err = finish(run_cli(args, tmp_path), timeout=300)
    assert err.count("Downloading file://") == 1  # prepared once, by one process
    seen = ranks(tmp_path)
    assert seen[0]["world_size"] == seen[1]["world_size"] == 2
    shard0, shard1 = set(seen[0]["indices"][0]), set(seen[1]["indices"][0])
    assert len(shard0) == len(shard1) == 80 and not shard0 & shard1  # 160 training images, split in two
    assert seen[0]["val_acc"] == seen[1]["val_acc"] and len(seen[0]["val_acc"]) == 1  # synced metric


def _grace_with_a_signal(monkeypatch, handled: bool) -> list:
    """A SignalGrace armed in this process, a SIGTERM that Python's handler swallows, and os._exit recorded."""
    from vgg_lightning.callbacks import SignalGrace, reliability

    exits = []
    monkeypatch.setattr(reliability.os, "_exit", exits.append)
    previous = signal.signal(signal.SIGTERM, lambda *a: None)  # as Lightning's handler: the signal is noted
    try:
        grace = SignalGrace(grace_s=0.5)
        grace.setup(None, None, "fit")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        if handled:
            grace.on_exception(None, None, KeyboardInterrupt())  # the fit handled it: not stuck
        time.sleep(1.0)
        if not handled:
            grace.teardown(None, None, "fit")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return exits


def test_signal_grace_ends_a_stuck_process_only(monkeypatch):
    assert _grace_with_a_signal(monkeypatch, handled=False) == [128 + signal.SIGTERM]  # stuck: ended
    assert _grace_with_a_signal(monkeypatch, handled=True) == []  # handled in time: the process goes on
