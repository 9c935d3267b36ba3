import pytest

from vgg_lightning.tools.bench import run


def test_bench_runs_both_loops_and_reports(cifar10_dir, capsys):
    summary = run(arch="vgg11", width=0.125, batch_size=8, steps=3, warmup=1, repeats=2, data_dir=str(cifar10_dir),
                  whiten="frozen_layer")  # fmt: skip
    out, err = capsys.readouterr()
    assert ", whiten frozen_layer" in out  # both loops train the net fit would build, whitened from the data
    for noise in ("GPU available", "litlogger", "`Trainer.fit` stopped", "LeafSpec"):
        assert noise not in out + err, noise  # the table is the bench's screen
    assert "CIFAR-10 files in" in out and "ratio lightning/plain" in out
    for loop in ("plain", "lightning"):
        assert summary[loop]["images_per_s"] > 0 and 0 <= summary[loop]["wait_share"] < 1
    assert summary["ratio"] == summary["lightning"]["images_per_s"] / summary["plain"]["images_per_s"]
    # the order alternates between repeats
    runs = [line.split(":")[0].split()[-1] for line in out.splitlines() if line.strip().startswith("run ")]
    assert runs == ["plain", "lightning", "lightning", "plain"]


@pytest.mark.parametrize("pool_before_bn", [False, True])
def test_bench_times_each_stage_of_the_network_it_trains(capsys, pool_before_bn):
    summary = run(arch="vgg11", width=0.125, stage_widths=[1, 1, 1, 1, 0.5], batch_size=4, steps=1, warmup=1,
                  repeats=1, stages=True, pool_before_bn=pool_before_bn)  # fmt: skip
    out = capsys.readouterr().out
    assert "stages [1, 1, 1, 1, 0.5]" in out and "time per stage" in out
    assert ("pooled before BN" in out) == pool_before_bn
    rows = summary["stages"]
    assert [r["stage"] for r in rows] == ["1", "2", "3", "4", "5", "head"]
    assert [r["channels"] for r in rows] == ["8", "16", "32,32", "64,64", "32,32", "-"]
    assert [r["input"] for r in rows] == ["3x32x32", "8x16x16", "16x8x8", "32x4x4", "64x2x2", "32x1x1"]
    # forward FLOPs per image: 3x3 convs at the stage's input resolution, then the 32 -> 10 linear head
    assert rows[0]["mflops"] == 2 * 3 * 8 * 9 * 32 * 32 / 1e6
    assert rows[4]["mflops"] == 2 * (64 * 32 + 32 * 32) * 9 * 2 * 2 / 1e6
    assert rows[5]["mflops"] == 2 * 32 * 10 / 1e6
    assert all(r["ms"] > 0 for r in rows)


def test_gpu_report_commands_parse(tmp_path):
    """The prepared GPU run is only run where a GPU is lent; here its commands must at least be valid."""
    import subprocess
    import sys

    from vgg_lightning.tools.gpu_report import runs

    commands = runs(str(tmp_path))
    assert set(commands) == {"bench_fused", "bench_unfused", "fit_fast", "fit_default", "fit_blog"}
    for name in ("fit_fast", "fit_blog"):
        r = subprocess.run(
            [sys.executable, *commands[name], "--print_config"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert "dataset: folder" in r.stdout and "vgg_lightning.callbacks.PhaseTimer" in r.stdout


def test_bench_takes_fits_optimizer_and_activation_in_both_loops(monkeypatch, capsys):
    import vgg_lightning.muon as muon
    from vgg_lightning.muon import MuonSGD

    made = []

    class Counted(MuonSGD):
        def __init__(self, *args, **kwargs):
            made.append(kwargs["ns_dtype"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(muon, "MuonSGD", Counted)  # both loops build it from vgg_lightning.muon
    run(arch="vgg11", width=0.125, activation="gelu", optimizer="muon", batch_size=4, steps=1, warmup=1, repeats=1,
        precision="32-true")  # fmt: skip
    out = capsys.readouterr().out
    assert "BN gelu" in out and "; muon;" in out
    assert len(made) == 2  # the plain loop's and the Lightning module's


def test_bench_serves_images_from_a_mapped_file_when_asked(capsys):
    summary = run(arch="vgg11", width=0.125, batch_size=4, steps=2, warmup=1, repeats=1, image_size=64, mapped=True)
    out = capsys.readouterr().out
    assert "served from a memory-mapped file" in out and "synthetic uint8 tensors (12 images)" in out
    assert summary["lightning"]["images_per_s"] > 0 and summary["plain"]["images_per_s"] > 0
