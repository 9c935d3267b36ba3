"""Precision and memory format chosen for the CPU at hand, with the CPU's bf16 support faked both ways."""

import warnings

import pytest
import torch

from vgg_lightning import precision


@pytest.fixture
def cpu(monkeypatch):
    """Fake a CPU: with native bf16 (avx512_bf16) or without (AVX2 only, as oneDNN would report it)."""

    def fake(native_bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16, raising=False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512" if native_bf16 else "AVX2")
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    return fake


def test_cpu_with_native_bf16_gets_bf16(cpu):
    cpu(True)
    assert precision.auto_precision("auto") == "bf16-mixed" == precision.auto_precision("cpu")
    line = precision.describe("auto", "bf16-mixed", chosen=True)
    assert (
        line.startswith("CPU with bf16 instructions (AVX512_BF16") and "bf16-mixed" in line and "channels_last" in line
    )


def test_cpu_without_bf16_gets_32_bit(cpu):
    cpu(False)
    assert precision.auto_precision("auto") == "32-true"
    line = precision.describe("auto", "32-true", chosen=True)
    assert line.startswith("CPU without bf16 instructions (AVX2)") and "32-true" in line


def test_ddp_on_a_cpu_names_its_processes_and_their_threads(cpu, monkeypatch):
    """Lightning gives each of N processes on a CPU the cores // N threads when it launches them (unless
    OMP_NUM_THREADS says): the first line, said before the launch, counts them the same way."""
    cpu(False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("lightning.fabric.utilities.distributed._num_cpus_available", lambda: 2)
    assert precision.cpu_processes("auto", 2) == precision.cpu_processes("cpu", "2") == 2
    assert precision.cpu_processes("auto", "auto") == precision.cpu_processes("cpu", 1) == 1
    line = precision.describe("auto", "32-true", chosen=True, processes=2)
    assert line == "CPU without bf16 instructions (AVX2), 2 processes (DDP) of 1 thread each: 32-true, channels_last"
    monkeypatch.setattr("lightning.fabric.utilities.distributed._num_cpus_available", lambda: 16)
    assert "2 processes (DDP) of 8 threads each" in precision.describe("auto", "32-true", chosen=True, processes=2)


def test_onednn_isa_cap_turns_bf16_off(cpu, monkeypatch):
    cpu(True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # AVX-512 without its bf16 extension
    assert precision.auto_precision("cpu") == "32-true"


def test_a_gpu_gets_tf32_before_the_trainer_starts(monkeypatch):
    """Lightning prints a paragraph asking for TF32 when a CUDA trainer starts with the 'highest' setting (seen on
    an H200); the CLI sets it first and the device line says so. CUDA faked; the setting restored after."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake GPU")
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert "TF32" not in precision.describe("auto", "bf16-mixed", chosen=True)
        precision.use_tf32("cpu")
        assert torch.get_float32_matmul_precision() == "highest"
        precision.use_tf32("auto")
        assert torch.get_float32_matmul_precision() == "high"
        line = precision.describe("auto", "bf16-mixed", chosen=True)
        assert line == "GPU Fake GPU with bf16: bf16-mixed, channels_last, TF32 for fp32 matmuls"
    finally:
        torch.set_float32_matmul_precision(before)


def test_explicit_bf16_on_a_cpu_without_it_warns(cpu):
    cpu(False)
    with pytest.warns(UserWarning, match="15x slower"):
        precision.warn_if_slow("auto", "bf16-mixed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.warn_if_slow("auto", "32-true")
    cpu(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.warn_if_slow("auto", "bf16-mixed")


def test_the_cli_prints_one_line_for_its_choice(cpu, cifar10_dir, tmp_path, monkeypatch, capsys):
    from vgg_lightning.cli import main

    from .helpers.runs import tiny

    cpu(False)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny(cifar10_dir, "--trainer.fast_dev_run", "1")]) == 0
    err = capsys.readouterr().err
    assert "CPU without bf16 instructions (AVX2), " in err and ": 32-true, channels_last" in err
