"""``python -m vgg_lightning export``: a checkpoint as ONNX or TorchScript, checked against PyTorch.

The exported model maps images to class logits (apply softmax for probabilities). With ``--input uint8`` it
takes raw ``uint8`` images (N, 3, S, S), RGB, 0-255 (S: the run's image size, 32 for CIFAR), and normalizes them
itself; with ``--input float`` it takes images already normalized as in training: ``(x / 255 - mean) / std``
with the run's mean and std.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn
from typing_extensions import override

from vgg_lightning import checkpoints
from vgg_lightning.data.augment import normalization_tensors
from vgg_lightning.files import atomic_path
from vgg_lightning.messages import log

# The check: exported logits must match PyTorch's within this (fp32 on CPU).
ATOL, RTOL = 1e-4, 1e-4


class ExportWrapper(nn.Module):
    def __init__(self, net: nn.Module, mean, std, raw_uint8: bool) -> None:
        super().__init__()
        self.net, self.raw_uint8 = net, raw_uint8
        mean_255, std_255 = normalization_tensors(mean, std)
        self.register_buffer("mean", mean_255)
        self.register_buffer("std", std_255)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.raw_uint8:
            x = (x.float() - self.mean) / self.std
        return self.net(x)


def _fail(message: str) -> None:
    log.error(f"error: {message}")
    raise SystemExit(1)


def load_for_export(path: Path, raw_uint8: bool) -> tuple[ExportWrapper, list[str], int]:
    """(the wrapped network, class names, image size) of a checkpoint."""
    from vgg_lightning.module import VGGClassifier

    model = VGGClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
    mean, std = model.normalization()
    net = model.net.to(memory_format=torch.contiguous_format)
    return ExportWrapper(net, mean, std, raw_uint8).eval(), model.class_names(), int(model.hparams.image_size)


def example_batch(raw_uint8: bool, n: int = 8, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if raw_uint8:
        return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return torch.randn(n, 3, size, size, generator=g)


def export_torchscript(wrapper: ExportWrapper, example: torch.Tensor, out: Path):
    """Write the file; return a function that runs the written file."""
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example)
    traced.save(str(out))
    loaded = torch.jit.load(str(out))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(x)

    return run


def export_onnx(wrapper: ExportWrapper, example: torch.Tensor, out: Path):
    """Write the file; return a function that runs the written file in onnxruntime."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
        import onnxscript  # noqa: F401
    except ImportError as e:
        _fail(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing).\n"
            "  Install them with: pip install 'vgg_lightning[export]'   (or: pip install onnx onnxscript onnxruntime)"
        )
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    program.save(str(out))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def export(
    ckpt_path: str,
    format: Literal["onnx", "torchscript"] = "onnx",
    output: Optional[str] = None,
    input: Literal["uint8", "float"] = "uint8",
) -> Path:
    """Export a checkpoint and check the exported model's logits against PyTorch's on a batch.

    Args:
        ckpt_path: a checkpoint file, or ``last``/``best`` of the newest run in lightning_logs/.
        format: ``onnx`` (needs the ``export`` extra) or ``torchscript``.
        output: file to write; default: beside the checkpoint, ``model.onnx`` or ``model.pt``.
        input: ``uint8`` for raw 0-255 RGB images (normalized inside), ``float`` for normalized images.
    """
    try:
        ckpt = checkpoints.resolve(ckpt_path, Path("lightning_logs"))
    except checkpoints.CheckpointNotFound as e:
        _fail(str(e))
    wrapper, names, size = load_for_export(ckpt, input == "uint8")
    out = Path(output) if output else ckpt.parent / ("model.onnx" if format == "onnx" else "model.pt")
    example = example_batch(input == "uint8", size=size)
    with atomic_path(out) as tmp:  # written only once the check below passed
        run = (export_onnx if format == "onnx" else export_torchscript)(wrapper, example, tmp)
        # Two batch sizes: the second checks that the batch dimension really is free.
        diff = 0.0
        for batch in (example, example_batch(input == "uint8", n=3, size=size)):
            with torch.no_grad():
                expected = wrapper(batch)
            got = run(batch)
            diff = max(diff, (got - expected).abs().max().item())
            if got.shape != expected.shape or not torch.allclose(got, expected, atol=ATOL, rtol=RTOL):
                _fail(
                    f"the exported model's logits differ from PyTorch's by up to {diff:.2e} "
                    f"(allowed: atol {ATOL}, rtol {RTOL}); nothing was written"
                )
    print(f"Exported {ckpt} as {format} to {out}")
    shape = f"(N, 3, {size}, {size})"
    print(
        f"  input: {f'uint8 {shape}, RGB 0-255' if input == 'uint8' else f'float {shape}, normalized'}; "
        f"output: logits (N, {len(names)}); classes: {', '.join(names)}"
    )
    print(
        f"  checked on batches of {len(example)} and 3 images: max |logit difference| {diff:.2e}"
        f" (tolerance atol {ATOL}, rtol {RTOL})"
    )
    return out
