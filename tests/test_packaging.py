"""An installed wheel behaves like the checkout: the defaults ship inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from vgg_lightning import cli
from vgg_lightning.cli import main

from .helpers.runs import REPO


def _run(args: list[str], cwd, pythonpath: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_runs_what_the_checkout_runs(tmp_path):
    wheels, site, elsewhere, src = (tmp_path / name for name in ("wheels", "site", "elsewhere", "src"))
    elsewhere.mkdir()
    # built from a copy: setuptools writes build/ and *.egg-info next to the sources
    shutil.copytree(REPO / "vgg_lightning", src / "vgg_lightning", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = ["-m", "pip", "--disable-pip-version-check", "-q"]
    built = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)], tmp_path, "")
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("vgg_lightning-*.whl")
    done = _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], tmp_path, "")
    assert done.returncode == 0, done.stderr[-2000:]
    where = _run(["-c", "import vgg_lightning; print(vgg_lightning.__file__)"], elsewhere, str(site))
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the wheel's copy, not the checkout
    installed = _run(["-m", "vgg_lightning", "fit", "--print_config"], elsewhere, str(site))
    checkout = _run(["-m", "vgg_lightning", "fit", "--print_config"], elsewhere, str(REPO))
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert installed.stdout == checkout.stdout
    for line in ("vgg_lightning.callbacks.EpochSummary", "max_epochs: 40", "label_smoothing: 0.1"):
        assert line in installed.stdout, line


def test_a_missing_defaults_file_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", tmp_path / "default.yaml")
    assert main(["fit", "--print_config"]) == 2
    assert "defaults file" in capsys.readouterr().err
