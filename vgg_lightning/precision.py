"""Precision and memory format chosen for the machine at hand, each said in one line at the start of a run.

On CPUs, bf16 is fast only with native bf16 instructions (AVX512_BF16 or AMX): elsewhere oneDNN emulates it
and a VGG step ran 15x slower than fp32 (2-core AVX2 EPYC, bench: 12.6 vs 192 images/s). So a CPU gets
``bf16-mixed`` only where the hardware has them and oneDNN may use them (``ONEDNN_MAX_CPU_ISA`` can forbid it).
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Union

import torch
from lightning.fabric.utilities.distributed import _suggested_max_num_threads


def cpu_capability() -> str:
    """ATen's vector ISA for this process (``AVX512``, ``AVX2``, ``DEFAULT``; ``ATEN_CPU_CAPABILITY`` lowers it)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16() -> bool:
    """The CPU has bf16 instructions (AVX512_BF16 or AMX) and oneDNN is allowed to use them."""
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    onednn = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    isa_allows = (
        isa_cap in ("ALL", "DEFAULT") or "AVX512_CORE_BF16" in isa_cap or "AMX" in isa_cap or "AVX10" in isa_cap
    )
    return bool(hardware and onednn and isa_allows)


def cpu_bf16_name() -> str:
    return "AMX" if torch.cpu._is_amx_tile_supported() else "AVX512_BF16"


def on_gpu(accelerator: object) -> bool:
    """Whether a run with this ``trainer.accelerator`` trains on a CUDA GPU."""
    return str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def auto_precision(accelerator: object) -> str:
    """bf16 mixed where the GPU or CPU does bf16 natively, fp16 mixed on older GPUs, 32-bit elsewhere."""
    if on_gpu(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def prefers_channels_last(device: Union[torch.device, str]) -> bool:
    """NHWC is the faster layout for these convolutions on CUDA and on every CPU we measured
    (2-core EPYC, fp32: 1.37x with AVX2, 1.18x with AVX-512; see the README's speed table)."""
    return torch.device(device).type in ("cuda", "cpu")


def use_tf32(accelerator: object) -> None:
    """TF32 for the matmuls autocast leaves in fp32, on GPUs; set before the Trainer starts, which otherwise prints
    a paragraph asking for it on the run's first screen."""
    if on_gpu(accelerator) and torch.get_float32_matmul_precision() == "highest":
        torch.set_float32_matmul_precision("high")


def cpu_processes(accelerator: object, devices: object) -> int:
    """How many processes a run on a CPU starts (``trainer.devices``: a count; ``auto`` is one); 1 on a GPU."""
    if on_gpu(accelerator):
        return 1
    text = str(devices).strip()
    return int(text) if text.isdigit() and int(text) > 0 else 1


def threads_per_process(processes: int) -> int:
    """The threads each process computes with: Lightning gives each of N processes on a CPU the cores // N (at
    least one) when it launches them, unless OMP_NUM_THREADS already says."""
    if processes <= 1 or "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    return _suggested_max_num_threads(processes)


def describe(
    accelerator: object, precision: str, chosen: bool, channels_last: Optional[bool] = None, processes: int = 1
) -> str:
    """One line: where the run goes, with which precision and memory format, and why when we chose it."""
    gpu = on_gpu(accelerator)
    if channels_last is None:
        channels_last = prefers_channels_last("cuda" if gpu else "cpu")
    layout = "channels_last" if channels_last else "NCHW"
    how = "" if chosen else " (as asked)"
    if gpu:
        name = torch.cuda.get_device_name()
        bf16 = "with bf16" if torch.cuda.is_bf16_supported() else "without bf16"
        tf32 = ", TF32 for fp32 matmuls" if torch.get_float32_matmul_precision() != "highest" else ""
        return f"GPU {name} {bf16}: {precision}{how}, {layout}{tf32}"
    isa = cpu_capability()
    if cpu_has_native_bf16():
        kind = f"CPU with bf16 instructions ({cpu_bf16_name()}, {isa})"
    else:
        kind = f"CPU without bf16 instructions ({isa})"
    threads = threads_per_process(processes)
    threads_text = f"{threads} thread{'s' if threads != 1 else ''}"
    where = f"{processes} processes (DDP) of {threads_text} each" if processes > 1 else threads_text
    return f"{kind}, {where}: {precision}{how}, {layout}"


def warn_if_slow(accelerator: object, precision: str) -> None:
    """An explicit bf16 on a CPU that emulates it still runs, with a warning that it will be slow."""
    if not on_gpu(accelerator) and str(precision).startswith("bf16") and not cpu_has_native_bf16():
        warnings.warn(
            f"--trainer.precision {precision} on a CPU without bf16 instructions ({cpu_capability()}): oneDNN emulates"
            " bf16 there, measured 15x slower than 32-true. Leave trainer.precision unset to get 32-true.",
            stacklevel=2,
        )
