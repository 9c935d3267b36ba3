"""The command line end to end, in-process (fast) and as a subprocess where the exit status matters."""

import urllib.error

import pytest
import torch

from vgg_lightning.cli import main
from vgg_lightning.module import VGGClassifier

from .helpers.runs import run_cli_to_end, tiny


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fit_fast_dev_run(cifar10_dir, workdir):
    from vgg_lightning.cli import build_cli

    torch.manual_seed(0)
    cli = build_cli(tiny(cifar10_dir, "--trainer.fast_dev_run", "2"), run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2  # two training batches ...
    assert cli.model.last_report.stage == "val" and cli.model.last_report.num_images == 32  # ... two val batches
    changed = [k for k, v in cli.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)  # it trained
    assert not (workdir / "lightning_logs").exists()  # fast_dev_run writes no logs or checkpoints
    assert main(["fit", *tiny(cifar10_dir, "--trainer.fast_dev_run", "2")]) == 0  # and the command itself


def test_cifar100_links_num_classes(cifar100_dir, workdir):
    args = tiny(
        cifar100_dir,
        "--data.dataset",
        "cifar100",
        "--data.val_size",
        "20",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
    )
    assert main(["fit", *args]) == 0
    model = VGGClassifier.load_from_checkpoint(workdir / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert model.hparams.num_classes == 100
    assert model.net.classifier[-1].out_features == 100


@pytest.fixture
def trained_run(cifar10_dir, workdir):
    """One short epoch: 3 training steps, full validation."""
    assert main(["fit", *tiny(cifar10_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3")]) == 0
    return workdir / "lightning_logs" / "version_0"


def test_fit_writes_the_run(trained_run):
    files = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "hparams.yaml", "checkpoints"} <= files
    assert any(name.startswith("events.out.tfevents") for name in files)
    ckpts = {p.name for p in (trained_run / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("epoch000-val_acc") for n in ckpts)
    config = (trained_run / "config.yaml").read_text()
    assert "arch: vgg11" in config
    assert "num_classes: 10" in (trained_run / "hparams.yaml").read_text()  # linked from the data module


def test_checkpoint_rebuilds_the_model(trained_run):
    path = trained_run / "checkpoints" / "last.ckpt"
    model = VGGClassifier.load_from_checkpoint(path, weights_only=True)
    assert model.net_options.arch == "vgg11" and model.net_options.width == 0.125
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_evaluate_and_predict_from_checkpoints(trained_run, cifar10_dir, capsys):
    assert main(["validate", *tiny(cifar10_dir, "--ckpt_path", "last")]) == 0
    assert "val/acc" in capsys.readouterr().out
    assert main(["test", *tiny(cifar10_dir, "--ckpt_path", "best")]) == 0
    out = capsys.readouterr().out
    assert "Test results on 40 images" in out and "top-1 accuracy" in out
    assert "test/acc" not in out  # one table: Lightning's own (test/acc, test/loss, ...) is not printed too
    assert main(["predict", *tiny(cifar10_dir, "--ckpt_path", "last")]) == 0
    out = capsys.readouterr().out
    truth = next(line for line in out.splitlines() if line.startswith("GroundTruth:"))
    pred = next(line for line in out.splitlines() if line.startswith("Predicted:"))
    assert len(truth.split()) - 1 == len(pred.split()) - 1 == 40  # the tiny test set has 40 images (< 64)
    assert "Accuracy of the network on the 40 test images" in out
    rows = (trained_run / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,predicted,probability,top3,label" and len(rows) == 41
    # evaluation commands log into the run the checkpoint came from and keep fit's config
    assert not (trained_run.parent / "version_1").exists()
    assert (trained_run / "test_config.yaml").is_file() and "arch: vgg11" in (trained_run / "config.yaml").read_text()


def test_resume_from_last(cifar10_dir, workdir):
    args = tiny(cifar10_dir, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3")
    assert main(["fit", *args, "--trainer.callbacks+=tests.helpers.StopAfterEpoch"]) == 0
    last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    before = torch.load(last, weights_only=True)
    assert before["global_step"] == 3 and before["epoch"] == 0  # saved at the end of epoch 0's validation
    assert main(["fit", *args, "--ckpt_path", "last"]) == 0
    after = torch.load(last, weights_only=True)
    assert after["global_step"] == 6 and after["epoch"] == 1  # saved at the end of epoch 1's validation
    assert after["lr_schedulers"][0]["last_epoch"] == 6  # the schedule went on, not restarted
    assert not (workdir / "lightning_logs" / "version_1").exists()  # logging went on in the same run


def test_ckpt_last_without_runs(cifar10_dir, workdir, capsys):
    assert main(["fit", *tiny(cifar10_dir, "--ckpt_path", "last")]) == 2
    assert "no run in" in capsys.readouterr().err


def test_offline_message(workdir, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    assert main(["fit", "--data.data_dir", "nowhere", "--trainer.max_epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "data_dir 'nowhere'" in err and "cifar-10-python.tar.gz" in err and "data_batch_1" in err
    assert "tar -xzf" in err and "Traceback" not in err


def test_missing_data_subprocess(workdir):
    r = run_cli_to_end("fit", "--data.data_dir", str(workdir / "empty"), "--data.download", "false", cwd=workdir)
    assert r.returncode == 1
    assert "download is off" in r.stderr and "Traceback" not in r.stderr
    assert not (workdir / "lightning_logs").exists() or not any((workdir / "lightning_logs").rglob("*.ckpt"))


def test_help_and_print_config(workdir, capsys):
    for args in (["--help"], ["fit", "--print_config", "--model.optim.lr", "0.05"]):
        with pytest.raises(SystemExit) as e:  # both print and exit
            main(args)
        assert e.value.code in (0, None)
        out = capsys.readouterr().out
        if args == ["--help"]:
            assert all(sub in out for sub in ("fit", "validate", "test", "predict"))
    assert "arch: vgg16" in out and "lr: 0.05" in out and "dataset: cifar10" in out


def exit_status(args: list[str], capsys) -> tuple[int, str]:
    """The command's exit status and stderr, run in this process (a parse error exits through SystemExit)."""
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "option",
    [
        ["--model.net.arch", "vgg15"],
        ["--data.batch_size", "0"],
        ["--model.optim.lr", "-0.1"],
        ["--data.dataset", "mnist"],
        ["--model.optim.name", "rmsprop"],
        ["--model.net.stage_widths", "[1, 0.5]"],
        ["--model.optim.name", "muon", "--model.net.batch_norm", "false"],
        ["--model.optim.muon_momentum", "0.6"],  # without --model.optim.name muon
        ["--model.net.activation", "gelu", "--model.net.arch", "blog_vgg16"],
    ],
)
def test_bad_options_exit_2(option, workdir, capsys):
    code, err = exit_status(["fit", *option], capsys)
    assert code == 2, err
    assert option[0].lstrip("-") in err or option[1] in err
    assert not (workdir / "lightning_logs").exists()


def test_data_dir_that_is_a_file(workdir, capsys):
    (workdir / "afile").write_text("x")
    code, err = exit_status(["fit", "--data.data_dir", "afile"], capsys)
    assert code == 2 and "is a file" in err and "Traceback" not in err


def test_resume_with_another_schedule_length_is_refused(cifar10_dir, workdir, capsys):
    args = tiny(cifar10_dir, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3")
    assert main(["fit", *args, "--trainer.callbacks+=tests.helpers.StopAfterEpoch"]) == 0
    longer = tiny(cifar10_dir, "--trainer.max_epochs", "5", "--trainer.limit_train_batches", "3")
    assert main(["fit", *longer, "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert "sized for 6 steps" in err and "this run's for 15" in err and "--trainer.max_epochs" in err


def test_fit_without_a_logger(cifar10_dir, workdir):
    args = tiny(
        cifar10_dir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.logger", "false"
    )
    assert main(["fit", *args]) == 0
    assert (workdir / "checkpoints" / "last.ckpt").is_file() and not (workdir / "lightning_logs").exists()


@pytest.mark.parametrize(
    "config",
    ["default.yaml", "cpu.yaml", "cpu_fp32.yaml", "cpu_photos.yaml", "photos.yaml", "fast.yaml", "blog_vgg16.yaml"],
)
def test_every_recipe_loads_and_opens_with_its_header(config, workdir, capsys):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    path = root / "vgg_lightning" / config if config == "default.yaml" else root / "configs" / config
    header = path.read_text().splitlines()[:3]
    assert all(line.startswith("# ") for line in header)  # what it is, its number, how it was measured
    assert "Measured" in header[2] and "results.md" in header[2]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # --print_config prints and exits
        main(["fit", "--config", str(path), "--print_config"])
    out = capsys.readouterr().out
    assert e.value.code in (0, None) and "vgg_lightning.callbacks.EpochSummary" in out  # from default.yaml
