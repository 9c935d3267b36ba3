"""A recipe's variant for CPUs without bf16 (``cpu_fp32_config``): read after the recipe on such a machine only, and
what the user typed still wins."""

import sys

import pytest
import yaml

from vgg_lightning import precision, recipes
from vgg_lightning.cli import main


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "r").mkdir()
    main_file = tmp_path / "r" / "main.yaml"
    main_file.write_text(
        "cpu_fp32_config: main_fp32.yaml\nmodel:\n  net:\n    width: 0.125\n  label_smoothing: 0.1\n"
        "trainer:\n  max_steps: 1\n  limit_val_batches: 0\n"
    )
    (tmp_path / "r" / "main_fp32.yaml").write_text("model:\n  net:\n    arch: vgg13\n  label_smoothing: 0.2\n")
    return main_file


def test_the_variant_goes_right_after_its_recipe(recipe):
    args = ["fit", "--config", str(recipe), "--model.label_smoothing", "0.3"]
    new, line = recipes.with_fp32_variant(args)
    assert new == ["fit", "--config", str(recipe), "--config", str(recipe.parent / "main_fp32.yaml"), *args[3:]]
    assert "main_fp32.yaml over" in line and "CPUs without bf16" in line
    assert recipes.with_fp32_variant(["fit", f"--config={recipe}"])[0][2:] == [
        "--config",
        str(recipe.parent / "main_fp32.yaml"),
    ]
    assert recipes.with_fp32_variant(new) == (new, "")  # already given by hand: not twice
    assert recipes.with_fp32_variant(["fit", "--model.net.width", "1"]) == (["fit", "--model.net.width", "1"], "")


def test_a_missing_variant_is_one_message(recipe):
    recipe.write_text("cpu_fp32_config: nowhere.yaml\n")
    with pytest.raises(recipes.ConfigError, match="nowhere.yaml does not exist"):
        recipes.with_fp32_variant(["fit", "--config", str(recipe)])


def test_only_runs_in_fp32_on_a_cpu_take_the_variant(monkeypatch):
    monkeypatch.setattr(precision, "on_gpu", lambda accelerator: False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert recipes.trains_in_fp32_on_cpu({"accelerator": "cpu", "precision": None})
    assert not recipes.trains_in_fp32_on_cpu({"accelerator": "cpu", "precision": "bf16-mixed"})  # asked for bf16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert not recipes.trains_in_fp32_on_cpu({"accelerator": "cpu", "precision": None})  # the machine picks bf16
    assert recipes.trains_in_fp32_on_cpu({"accelerator": "cpu", "precision": "32-true"})
    monkeypatch.setattr(precision, "on_gpu", lambda accelerator: True)
    assert not recipes.trains_in_fp32_on_cpu({"accelerator": "auto", "precision": "32-true"})


def test_fit_on_a_cpu_without_bf16_trains_the_variant_and_keeps_typed_options(
    recipe, cifar10_dir, tmp_path, monkeypatch, capsys, recwarn
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    args = ["fit", "--config", str(recipe), "--data.data_dir", str(cifar10_dir), "--data.download", "false"]
    args += ["--data.val_size", "40", "--data.batch_size", "16", "--trainer.enable_progress_bar", "false"]
    # From the command line, as a user runs it: sys.argv holds the options and main reads them there.
    args += ["--trainer.enable_model_summary", "false", "--model.label_smoothing", "0.3"]
    monkeypatch.setattr(sys, "argv", ["vgg_lightning", *args])
    assert main() == 0
    saved = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["net"]["arch"] == "vgg13"  # from the variant
    assert saved["model"]["net"]["width"] == 0.125  # from the recipe, which the variant leaves alone
    assert saved["model"]["label_smoothing"] == 0.3  # typed: wins over both
    err = capsys.readouterr().err
    assert "recipe: " in err
    upstream = [str(w.message) for w in recwarn if "intended to run from within Python" in str(w.message)]
    assert upstream == []  # LightningCLI's warning for args given twice has no place on the first screen


def test_print_config_shows_the_variant_where_the_run_reads_it(recipe, monkeypatch, capsys):
    # --print_config exits inside LightningCLI's parse, before the run would put the variant in
    for native_bf16, arch in ((False, "vgg13"), (True, "vgg16")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native_bf16: native)
        args = ["fit", "--config", str(recipe), "--trainer.accelerator", "cpu", "--print_config"]
        with pytest.raises(SystemExit):
            main([*args, "--model.label_smoothing", "0.3"])
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["net"]["arch"] == arch  # the variant's without bf16; the default's with it
        assert printed["model"]["net"]["width"] == 0.125  # the recipe's either way
        assert printed["model"]["label_smoothing"] == 0.3  # typed: wins over both
