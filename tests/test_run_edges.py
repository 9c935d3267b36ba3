"""The edges of a run, each ending in a run that works or one message with nothing lost or half-written: runs started
together, a full disk, a killed decode, file names that are not UTF-8, refused resumes, the resumed run's screen,
checkpoints from elsewhere."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from vgg_lightning.cli import main
from vgg_lightning.data import image_folders, pixel_cache
from vgg_lightning.loggers import TensorBoardLogger, claim_version

from .helpers.data import COLOURS, tiny_folder_args, write_image, write_tree
from .helpers.runs import REPO, tiny


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its contents."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fit_short(data_dir, *extra) -> list[str]:
    return ["fit", *tiny(data_dir, "--trainer.limit_train_batches", "3", *extra)]


# -- runs started together -----------------------------------------------------------------------------------------
def _claim(root: str) -> int:
    return claim_version(Path(root))


def test_runs_started_together_get_their_own_folders(tmp_path):
    root = tmp_path / "lightning_logs"
    with multiprocessing.get_context("fork").Pool(10) as pool:
        versions = pool.map(_claim, [str(root)] * 10)
    assert sorted(versions) == list(range(10))
    # Two runs' loggers that both listed the folder before either wrote: Lightning's would both pick version_10.
    a = TensorBoardLogger(str(tmp_path), name="lightning_logs")
    b = TensorBoardLogger(str(tmp_path), name="lightning_logs")
    assert (a.version, b.version) == (10, 11)
    assert (root / "version_10").is_dir() and (root / "version_11").is_dir()


# -- a full disk ---------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (needs root and the right to mount; skipped where that is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: the full-disk test needs a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not allowed here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free."""
    with open(disk / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(0, shutil.disk_usage(disk).free - leave))
        except OSError:
            pass


def test_a_full_disk_keeps_the_earlier_checkpoints_whole(cifar10_dir, small_disk, monkeypatch, capsys):
    monkeypatch.chdir(small_disk)
    args = fit_short(cifar10_dir, "--model.optim.schedule", "constant")
    assert main([*args, "--trainer.max_epochs", "1"]) == 0
    folder = small_disk / "lightning_logs" / "version_0" / "checkpoints"
    before = snapshot(folder)
    assert "last.ckpt" in before and len(before) == 2
    fill(small_disk, leave=200_000)  # room for the logs, not for a checkpoint (about 1.3 MB)
    capsys.readouterr()
    assert main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 1
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "it needs about 1." in err, err[-2000:]
    assert "--trainer.default_root_dir" in err and "Traceback" not in err
    assert snapshot(folder) == before  # no truncated file, no temporary file, the earlier ones as they were
    for name in before:
        assert torch.load(folder / name, weights_only=True)["global_step"] == 3


# -- a killed decode -----------------------------------------------------------------------------------------------
def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_decode_workers_end_with_a_killed_run(tmp_path):
    script = (
        "import os, time\n"
        "from vgg_lightning.data import images\n"
        "def stuck(args):\n"
        "    os.write(1, f'{os.getpid()}\\n'.encode())  # one write: the two workers' lines do not interleave\n"
        "    time.sleep(120)\n"
        "images._decode_chunk = stuck\n"
        "images._decode_in_pool([(0, ['a']), (1, ['b'])], 32, 2, lambda start, result: None)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    workers = [int(proc.stdout.readline()) for _ in range(2)]
    proc.kill()  # kill -9 of the run while its workers decode
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_running(p) for p in workers):
        time.sleep(0.05)
    orphans = [p for p in workers if _running(p)]
    for p in orphans:
        os.kill(p, signal.SIGKILL)
    assert not orphans, "decode workers outlived the killed run"


def test_a_dead_builds_partial_cache_is_cleared_and_the_cache_is_group_readable(tmp_path):
    root = write_tree(tmp_path / "photos", "train", 4, classes=("bird", "cat"))
    names = image_folders.class_names(root)
    cache = tmp_path / "cache"
    cache.mkdir()
    path = pixel_cache.pixel_path(image_folders.cache_base(cache, root / "train", 32))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead = cache / f"{path.name}.{ended.pid}.k2j4.partial"  # a build killed while saving
    dead.write_bytes(b"\0" * 4096)
    live = cache / f"{path.name}.{os.getppid()}.x7q1.partial"  # another process writing right now
    live.write_bytes(b"\0" * 4096)
    old_umask = os.umask(0o022)
    try:
        image_folders.load_split(root, "train", names, 32, cache)
    finally:
        os.umask(old_umask)
    assert path.is_file() and not dead.exists() and live.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as a plain open() under umask 022 makes it


# -- file names ----------------------------------------------------------------------------------------------------
def test_file_names_that_are_not_utf8_are_read_and_named_with_escapes(tmp_path, monkeypatch, capsys):
    root = write_tree(tmp_path / "photos", "train", 8, classes=("bird", "cat"))
    odd = os.fsdecode(b"old-share-\xff\xfe.png")
    write_image(root / "train" / "bird" / odd, COLOURS["bird"])
    (root / "train" / "cat" / os.fsdecode(b"broken-\xff.jpg")).write_bytes(b"not an image")
    names = image_folders.class_names(root)
    split = image_folders.load_split(root, "train", names, 32, tmp_path / "cache")
    assert f"bird/{odd}" in split.files and len(split.files) == 17
    err = capsys.readouterr().err
    assert "broken-\\xff.jpg: not a readable image" in err and "1 unreadable file skipped" in err
    assert image_folders.load_split(root, "train", names, 32, tmp_path / "cache").files == split.files  # cached
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny_folder_args(root, tmp_path, "--trainer.fast_dev_run", "true")]) == 0


# -- refused resumes -----------------------------------------------------------------------------------------------
def test_a_refused_resume_writes_nothing(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = fit_short(cifar10_dir, "--trainer.max_epochs", "1")
    assert main(args) == 0
    logs = tmp_path / "lightning_logs"
    before = snapshot(logs)
    for other in (["--data.batch_size", "8"], ["--trainer.max_epochs", "2"]):
        capsys.readouterr()
        assert main([*args, *other, "--ckpt_path", "last"]) == 2, other
        err = capsys.readouterr().err
        assert "resume with" in err and "config.yaml" in err and "Traceback" not in err
        assert snapshot(logs) == before, other  # no rewritten config.yaml, no new event file, no new folder


# -- the resumed run's screen --------------------------------------------------------------------------------------
def test_resumed_runs_report_their_epochs_right(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *tiny(cifar10_dir, "--model.optim.schedule", "constant")]
    assert main([*args, "--trainer.max_epochs", "2", "--trainer.callbacks+=tests.helpers.SigtermAt"]) == 143
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0  # from step 3 of 10
    took = time.perf_counter() - t0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(" | ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert float(lines[0].rsplit("| ", 1)[1].removesuffix(" s")) <= took  # the epoch's time, not the clock's
    # Resumed where the last run ended: one new epoch, no empty line for the epoch that was done.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--trainer.max_epochs", "3", "--ckpt_path", "last"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(" | ")[0] for line in lines] == ["epoch 3/3"]
    assert not [w for w in caught if "compute" in str(w.message)]


def test_a_run_without_validation_does_not_warn_about_its_monitor(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*fit_short(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0")]) == 0
    said = capsys.readouterr().err + " ".join(str(w.message) for w in caught)
    assert "val/acc" not in said
    assert (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


# -- checkpoints from elsewhere ------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_truncated_and_foreign_checkpoints_are_one_message(cifar10_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(fit_short(cifar10_dir, "--trainer.max_epochs", "1")) == 0
    good = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, hostile)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "notes.ckpt"
    foreign.write_text("not a checkpoint\n")
    tensors = tmp_path / "tensors.pt"
    torch.save({"weight": torch.zeros(3)}, tensors)
    for path, why in (
        (hostile, "never loaded"),
        (truncated, "truncated or not a PyTorch checkpoint"),
        (foreign, "truncated or not a PyTorch checkpoint"),
        (tensors, "not a Lightning checkpoint"),
    ):
        for command in ("test", "fit"):
            capsys.readouterr()
            extra = ["--trainer.max_epochs", "2"] if command == "fit" else []
            assert main([command, *tiny(cifar10_dir, *extra), "--ckpt_path", str(path)]) == 1, (command, path)
            err = capsys.readouterr().err
            assert f"checkpoint '{path}' cannot be read" in err or "not a Lightning checkpoint" in err, err[-1500:]
            assert why in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err[-1500:]
    assert not marker.exists()
