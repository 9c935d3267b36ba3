"""DDP on two CPU processes (gloo), run as a user runs it: progress bar, logger and checkpoints on."""

import csv
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vgg_lightning.cli import main
from vgg_lightning.runlog import read_scalars

from .helpers.data import write_tree
from .helpers.runs import DDP, ddp_args, finish, ranks, run_cli, tiny, wait_for


def test_ddp_time_budget_one_plan_for_all_ranks(cifar10_dir, tmp_path):
    started = time.monotonic()
    args = [
        "fit",
        *ddp_args(
            cifar10_dir,
            "--trainer.max_time",
            "00:00:00:25",
            "--trainer.max_epochs",
            "1000",
            "--model.optim.lr",
            "0.05",
            # the first half of the plan on 16x16 images: every rank must switch at the same step
            "--model.net.arch",
            "vgg7",
            "--data.early_size",
            "16",
            "--trainer.callbacks+=tests.helpers.RecordRank",
        ),
    ]
    _, err = finish(run_cli(args, tmp_path))
    took = time.monotonic() - started
    assert took <= 1.05 * 25, took  # inside the budget, child start-up included
    assert "budget 25.0 s: " in err and "the planned budget of 25.0 s ended the run" in err
    a, b = ranks(tmp_path)
    assert a["global_step"] == b["global_step"] > 30  # one plan: both ranks stopped at the same step
    small = a["sides"].count(16)
    assert a["sides"] == b["sides"] == [16] * small + [32] * (a["global_step"] - small)  # one switch, the same
    # Both sizes trained. Not about half: this tiny net's step barely shrinks with its pixels, so until the switch
    # the plan took full-size steps for 4 times the small ones' time, planned too few, switched early and grew.
    assert 0 < small < a["global_step"]
    assert a["lr"] == b["lr"] == [pytest.approx(0.05 / 25 / 1e4, rel=1e-3)] * 2  # annealed on both
    run = tmp_path / "lightning_logs" / "version_0"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == a["global_step"]
    assert read_scalars(run)["lr-SGD/pg1"][-1][1] == pytest.approx(0.05 / 25 / 1e4, rel=1e-3)


def test_ddp_paced_checkpoints_over_many_short_epochs(cifar10_dir, tmp_path):
    # 5 steps an epoch per rank, 15 epochs: last.ckpt and figures decided every fraction of a second
    args = [
        "fit",
        *ddp_args(cifar10_dir, "--trainer.max_epochs", "15", "--trainer.callbacks+=tests.helpers.RecordRank"),
    ]
    _, err = finish(run_cli(args, tmp_path))
    # The first screen: our one line for the processes and threads, none of DDP's own start-up lines per rank.
    assert re.search(r"CPU .*, 2 processes \(DDP\) of \d+ threads? each: ", err), err[:2000]
    for noise in ("Initializing distributed", "[rank: 1] Seed set to", "All distributed processes registered"):
        assert noise not in err, noise
    last = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 75 and last["epoch"] == 14
    assert [r["global_step"] for r in ranks(tmp_path)] == [75, 75]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads which files a process maps from /proc")
def test_ddp_on_class_folders_maps_one_cache_and_each_rank_reads_its_own_shard(tmp_path):
    root = write_tree(tmp_path / "photos", "train", 24)  # 3 classes x 24
    cache = tmp_path / "cache"
    # resized crops: each rank reads the photos' sizes to choose the decode size, and must choose the same
    args = ["--data.dataset", "folder", "--data.cache_dir", str(cache), "--data.val_size", "8"]
    args += ["--data.crop", "resized"]
    proc = run_cli(["fit", *ddp_args(root, *args, "--trainer.callbacks+=tests.helpers.RecordRank")], tmp_path)
    _, err = finish(proc)
    pixels = list(cache.glob("*.pixels"))
    assert len(pixels) == 1 and err.count(f"decoded {root / 'train'}:") == 1  # once, by one process of the node
    assert pixels[0].name.endswith("-40px.pixels")  # the photos' median short side (41), not 32 / sqrt(0.35) -> 56
    r0, r1 = ranks(tmp_path)
    assert (
        r0["mapped"] == r1["mapped"] == [str(pixels[0].resolve())]
    )  # both map the one file: the page cache holds it once
    assert len(r0["indices"][0]) == len(r1["indices"][0]) == 32 and not set(r0["indices"][0]) & set(r1["indices"][0])


def write_pngs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        colour = rng.integers(0, 256, size=3)
        pixels = np.clip(colour + rng.integers(-30, 30, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"img_{i:02d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ddp_predict_writes_each_file_once_with_its_own_prediction(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3")]) == 0
    run = tmp_path / "lightning_logs" / "version_0"
    write_pngs(tmp_path / "photos", 13)  # odd: the second rank's shard is padded with a repeated image
    predict = ["predict", "--ckpt_path", "last", "--data.predict_path", "photos", "--data.batch_size", "4"]
    assert main([*predict, "--trainer.enable_progress_bar", "false"]) == 0
    single = read_rows(run / "predictions.csv")
    (run / "predictions.csv").unlink()
    finish(run_cli([*predict, *DDP], tmp_path))
    double = read_rows(run / "predictions.csv")
    assert len(single) == len(double) == 13
    assert [r["path"] for r in double] == [r["path"] for r in single]  # each file once, in order
    for one, two in zip(single, double):
        assert one["predicted"] == two["predicted"]
        assert float(one["probability"]) == pytest.approx(float(two["probability"]), abs=1e-4)


def test_ddp_sigterm_saves_a_checkpoint_all_ranks_take_part_in(cifar10_dir, tmp_path):
    # batch 4: 20 steps an epoch per rank, so the signal lands mid-epoch
    proc = run_cli(["fit", *ddp_args(cifar10_dir, "--data.batch_size", "4", "--trainer.max_epochs", "20")], tmp_path)
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    wait_for(ckpt, proc, timeout=180)
    first = torch.load(ckpt, weights_only=True)["global_step"]
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM: saved a resumable checkpoint" in err
    stopped = torch.load(ckpt, weights_only=True)["global_step"]
    assert first < stopped < 400


def test_ddp_sigterm_ends_a_run_whose_rank_hangs(cifar10_dir, tmp_path):
    args = [
        "fit",
        *ddp_args(cifar10_dir, "--trainer.max_epochs", "20", "--trainer.callbacks+=tests.helpers.BlockRank1"),
    ]
    proc = run_cli(args, tmp_path, extra_env={"VGG_LIGHTNING_STOP_GRACE_S": "5"})
    marker = tmp_path / "stuck"
    wait_for(marker, proc, timeout=180)
    time.sleep(0.5)
    while not marker.read_text():
        time.sleep(0.05)
    stuck_pid = int(marker.read_text())
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except Exception as e:
        proc.kill()
        os.kill(stuck_pid, signal.SIGKILL)
        raise AssertionError("SIGTERM did not end a run with a hung rank within 60 s") from e
    assert proc.returncode == 128 + signal.SIGTERM
    assert "after SIGTERM/Ctrl-C, waiting on another process" in err
    time.sleep(0.5)
    assert not alive(stuck_pid)  # the hung rank was ended too


def alive(pid: int) -> bool:
    """Running (a killed process whose parent is gone may linger as a zombie until it is reaped: not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
