"""Lightning's ``fit`` path against a minimal hand-written PyTorch loop, same model and data path.

    python -m vgg_lightning.tools.bench                      # synthetic uint8 images
    python -m vgg_lightning.tools.bench --data_dir data   # CIFAR files, or a class-folder tree
    python -m vgg_lightning.tools.bench --stages true  # and the step's time stage by stage
    python -m vgg_lightning.tools.bench --help

Both loops train the same network with the same batch size, optimizer (Nesterov SGD, per-step OneCycle),
precision, memory format and on-device augmentation, from the same in-memory uint8 loader. After ``warmup``
steps, each times ``steps`` optimizer steps and prints images/s, the share of step time spent waiting for the
next batch, and peak memory. Each repeat runs both loops, the first of them alternating; medians are printed.
With ``--stages true`` it also times each stage of the network (the convolutions up to a pooling, then the head)
forward and backward on its own, which shows where a step's time goes as opposed to its FLOPs.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator, Literal, Optional

import lightning as L
import torch
import torch.nn.functional as F
from typing_extensions import override

from vgg_lightning import quiet
from vgg_lightning.callbacks.budget import LIGHTNING_STOP_MESSAGE
from vgg_lightning.data import pixel_cache
from vgg_lightning.data.augment import normalize, train_augment
from vgg_lightning.data.datamodule import STATS, ImageDataModule
from vgg_lightning.data.image_sets import ImageSet
from vgg_lightning.data.loader import TensorBatchLoader
from vgg_lightning.models import NetOptions
from vgg_lightning.module import VGGClassifier
from vgg_lightning.optim import OptimOptions
from vgg_lightning.precision import auto_precision, cpu_has_native_bf16, prefers_channels_last


class TimedLoader:
    """Wraps a loader and records how long each ``next()`` blocked: the time a step waits for data."""

    def __init__(self, loader: TensorBatchLoader) -> None:
        self.loader = loader
        self.waits: list[float] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator:
        it = iter(self.loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - t)
            yield batch


def cpu_name() -> str:
    """The CPU model (as lscpu names it), its vector ISA for this process, bf16 support and threads."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"CPU {model} ({torch.backends.cpu.get_cpu_capability()}, {bf16}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _autocast(device: torch.device, precision: str):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def _options(cfg: dict) -> tuple[NetOptions, OptimOptions]:
    """The network and optimizer both loops train, from the bench's options (as ``fit`` would take them);
    Muon at cpu.yaml's rate."""
    net = NetOptions(
        arch=cfg["arch"],
        width=cfg["width"],
        stage_widths=cfg["stage_widths"],
        activation=cfg["activation"],
        pool_before_bn=cfg["pool_before_bn"],
        whiten=cfg["whiten"],
    )
    fused = cfg["fused"] if cfg["optimizer"] == "sgd" else None
    return net, OptimOptions(name=cfg["optimizer"], lr=cfg["lr"], muon_lr=0.015, fused=fused, schedule="onecycle")


def _network(cfg: dict, device: torch.device) -> torch.nn.Module:
    """The benchmark's VGG-BN (as ``fit`` builds it from the same options), on ``device`` in its memory format."""
    model = _options(cfg)[0].build(num_classes=10).to(device)
    return model.to(memory_format=torch.channels_last) if cfg["channels_last"] else model


def plain_loop(cfg: dict, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> dict:
    """The hand-written baseline: what a careful user writes without Lightning."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as VGGClassifier.setup does
    model = _network(cfg, device)
    fwd = torch.compile(model) if cfg["compile"] else model
    opt = _options(cfg)[1].build(model, device.type)  # as VGGClassifier builds it
    total = cfg["warmup"] + cfg["steps"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=total, cycle_momentum=False)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["precision"].startswith("16"))
    mean, std = STATS["cifar10"]
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    ahead = 3 if cfg["mapped"] else 0  # as the data module serves a mapped class-folder cache
    data = ImageSet(images, labels)
    loader = TimedLoader(TensorBatchLoader(data, cfg["batch_size"], shuffle=True, drop_last=True, prefetch=ahead))
    _reset_peak(device)
    model.train()
    step, t0 = 0, 0.0
    while step < total:
        for x, y in loader:
            if step == cfg["warmup"]:
                _sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = normalize(train_augment(x, 4, True, 0), mean, std, memory_format=fmt)
            with _autocast(device, cfg["precision"]):
                loss = F.cross_entropy(fwd(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            if step == total:
                break
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "wait": sum(loader.waits[cfg["warmup"] :]), "memory_mb": _peak_memory_mb(device)}


class _StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1 = warmup, 0.0, 0.0

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.t1 = time.perf_counter()


class _BenchData(ImageDataModule):
    """The project's data module on given tensors, its training loader timed."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mapped: bool = False) -> None:
        super().__init__(batch_size=batch_size, download=False)
        self.mapped = mapped
        self.train_set, self.val_set = ImageSet(images, labels), ImageSet(images[:1], labels[:1])
        self.class_names = [str(i) for i in range(10)]
        self.timed: Optional[TimedLoader] = None

    @override
    def prepare_data(self) -> None:  # the tensors are given: nothing to fetch
        pass

    @override
    def _reads_ahead(self) -> bool:  # a mapped store is read ahead in a thread, as fit reads class folders
        return self.mapped

    @override
    def to_image_size(self, images: torch.Tensor) -> torch.Tensor:  # both loops train at the images' own size
        return images

    @override
    def train_dataloader(self) -> TimedLoader:
        self.timed = TimedLoader(super().train_dataloader())
        return self.timed


def lightning_fit(cfg: dict, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> dict:
    """The project's fit path: VGGClassifier + ImageDataModule under Lightning's Trainer."""
    torch.manual_seed(0)
    total = cfg["warmup"] + cfg["steps"]
    net, optim = _options(cfg)
    model = VGGClassifier(net, optim, channels_last=cfg["channels_last"], compile=cfg["compile"])
    data = _BenchData(images, labels, cfg["batch_size"], mapped=cfg["mapped"])
    timer = _StepTimer(cfg["warmup"])
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=cfg["precision"],
        max_steps=total,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        benchmark=device.type == "cuda",
    )
    _reset_peak(device)
    quiet.drop_upstream(LIGHTNING_STOP_MESSAGE)  # the loop ends at max_steps by design
    try:
        trainer.fit(model, datamodule=data)
    finally:
        quiet.allow_upstream(LIGHTNING_STOP_MESSAGE)
    seconds = timer.t1 - timer.t0
    # Lightning fetches one batch ahead, so the first `warmup` fetches belong to the warm-up steps.
    wait = sum(data.timed.waits[cfg["warmup"] : total]) if data.timed else float("nan")
    return {"seconds": seconds, "wait": wait, "memory_mb": _peak_memory_mb(device)}


def stage_times(cfg: dict, device: torch.device, repeats: int = 10) -> list[dict]:
    """Forward + backward time of each stage on its own (median of ``repeats``), at the benchmark's batch size,
    precision and memory format, with a fixed gradient for its output; the first stage's input needs no
    gradient, as in training. The head row includes the loss."""
    torch.manual_seed(0)
    model = _network(cfg, device)
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    stages: list[torch.nn.Sequential] = [torch.nn.Sequential()]
    for layer in model.features:
        # A stage ends at its pooling, or with pool_before_bn at the activation after it.
        if isinstance(layer, torch.nn.Conv2d) and any(isinstance(m, torch.nn.MaxPool2d) for m in stages[-1]):
            stages.append(torch.nn.Sequential())
        stages[-1].append(layer)
    head = torch.nn.Sequential(model.pool, model.classifier)
    side = cfg["image_size"]
    x = torch.randn(cfg["batch_size"], 3, side, side, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (cfg["batch_size"],), device=device)
    rows = []
    for i, part in enumerate([*stages, head]):
        inp = x.detach().requires_grad_(i > 0)
        is_head = i == len(stages)
        once = functools.partial(_forward_backward, part, inp, y if is_head else None, cfg["precision"], device)
        for _ in range(3):
            out = once()
        times = []
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            once()
            _sync(device)
            times.append(time.perf_counter() - t)
        convs = [m for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
        # A stage's convolutions all run at its input's resolution (the pooling ends the stage).
        macs = sum(m.in_channels * m.out_channels * 9 * inp.shape[-1] * inp.shape[-2] for m in convs)
        macs += sum(m.in_features * m.out_features for m in part.modules() if isinstance(m, torch.nn.Linear))
        rows.append(
            {
                "stage": "head" if is_head else str(i + 1),
                "input": "x".join(str(d) for d in inp.shape[1:]),
                "channels": ",".join(str(m.out_channels) for m in convs) or "-",
                "mflops": 2 * macs / 1e6,  # forward, per image
                "ms": 1000 * statistics.median(times),
            }
        )
        x = out.detach()
    return rows


def _forward_backward(
    part: torch.nn.Module, inp: torch.Tensor, labels: Optional[torch.Tensor], precision: str, device: torch.device
) -> torch.Tensor:
    """One forward and backward of ``part``: through the loss for the head (``labels``), else a fixed gradient."""
    with _autocast(device, precision):
        out = part(inp)
        loss = F.cross_entropy(out, labels) if labels is not None else None
    if loss is not None:
        loss.backward()
    else:
        out.backward(torch.ones_like(out) / out.numel())
    return out


def print_stage_times(rows: list[dict], batch_size: int) -> None:
    total = sum(r["ms"] for r in rows)
    flops = sum(r["mflops"] for r in rows)
    print(f"time per stage, forward + backward, batch {batch_size} (each stage alone, median of 10):")
    cols = ("stage", "input", "conv channels", "MFLOPs/img", "FLOP share", "ms", "time share")
    print(f"{cols[0]:6s} {cols[1]:>10s} {cols[2]:>14s} {cols[3]:>11s} {cols[4]:>11s} {cols[5]:>8s} {cols[6]:>11s}")
    for r in rows:
        print(
            f"{r['stage']:6s} {r['input']:>10s} {r['channels']:>14s} {r['mflops']:11.1f} "
            f"{100 * r['mflops'] / flops:10.1f}% {r['ms']:8.1f} {100 * r['ms'] / total:10.1f}%"
        )
    print(f"{'all':6s} {'':>10s} {'':>14s} {flops:11.1f} {'':>11s} {total:8.1f}")


def _load_images(
    data_dir: Optional[str], n: int, device: torch.device, size: int = 32
) -> tuple[torch.Tensor, torch.Tensor, str]:
    if data_dir is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g)
        source = f"synthetic uint8 tensors ({n} images)"
    else:
        folder = (Path(data_dir) / "train").is_dir()  # class folders (DIR/train/<class>/*)
        dm = ImageDataModule(
            dataset="folder" if folder else "cifar10",
            data_dir=data_dir,
            download=False,
            val_size=1,
            image_size=size if folder else 32,
            crop="pad",  # decoded at the size asked, as both loops crop by padding
        )
        dm.prepare_data()
        dm.setup("fit")
        images, labels = dm.train_set.images(), dm.train_set.labels
        source = f"{'class folders' if folder else 'CIFAR-10 files'} in {data_dir} ({len(labels)} images)"
    if device.type == "cuda":  # as the data module does on a GPU: the whole split in GPU memory
        images, labels = images.to(device), labels.to(device)
    return images, labels, source


def run(
    arch: str = "vgg16",
    width: float = 1.0,
    stage_widths: Optional[list[float]] = None,
    activation: Literal["relu", "gelu"] = "relu",
    pool_before_bn: bool = False,
    whiten: Literal["off", "frozen", "frozen_layer", "trained"] = "off",
    optimizer: Literal["sgd", "muon"] = "sgd",
    batch_size: int = 256,
    steps: int = 20,
    warmup: int = 5,
    repeats: int = 2,
    precision: Optional[str] = None,
    channels_last: Optional[bool] = None,
    compile: bool = False,
    fused: Optional[bool] = None,
    lr: float = 0.05,
    data_dir: Optional[str] = None,
    device: str = "auto",
    stages: bool = False,
    image_size: int = 32,
    mapped: bool = False,
) -> dict:
    """Benchmark; prints a table and returns the medians.

    Args:
        arch: network (``vgg11``..``vgg19``, ``vgg7``, ``blog_vgg16``).
        width: channel factor of the VGG.
        stage_widths: one more factor per stage (``--model.net.stage_widths`` of ``fit``).
        activation: ``relu`` or ``gelu`` after each convolution (``--model.net.activation`` of ``fit``).
        pool_before_bn: each pooling before its BatchNorm and activation (``--model.net.pool_before_bn`` of ``fit``).
        whiten: the first convolution as ``--model.net.whiten`` of ``fit`` (``frozen``: its filters need no
            gradient; ``frozen_layer``: nothing below the second convolution does).
        optimizer: ``sgd`` or ``muon`` (``--model.optim.name`` of ``fit``): Muon's Newton-Schulz iterations cost
            the same per step whatever the batch.
        batch_size: images per step.
        steps: timed steps per run, after ``warmup`` untimed ones.
        warmup: untimed steps first (compilation, cudnn autotuning, allocator).
        repeats: runs of each loop, alternating; medians are reported.
        precision: ``32-true``, ``bf16-mixed``, ``16-mixed``; default: as ``fit`` picks it for the device.
        channels_last: NHWC memory format; default: as ``fit`` picks it (on, for CUDA and CPU alike).
        compile: ``torch.compile`` the network in both loops.
        fused: fused SGD (one kernel for all parameters) in both loops; default: as ``fit`` picks it (on for CUDA).
        lr: peak learning rate (the step time does not depend on it).
        data_dir: a folder with CIFAR-10 python files; default: synthetic images.
        device: ``auto``, ``cpu`` or ``cuda``.
        stages: after the loops, time each stage of the network forward and backward on its own.
        image_size: side of the synthetic images (class folders are decoded at this size).
        mapped: serve the images as ``fit`` serves class folders: from a memory-mapped file (written to a temporary
            folder first), gathered a few batches ahead in a thread; default: from memory, each batch when asked.
    """
    quiet.silence_upstream_noise()  # the table is the output: no Trainer banner or advertisement in between
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    precision = precision or auto_precision(dev.type)
    channels_last = prefers_channels_last(dev) if channels_last is None else channels_last
    fused = (dev.type == "cuda") if fused is None else fused
    cfg = dict(
        arch=arch,
        width=width,
        stage_widths=stage_widths,
        activation=activation,
        pool_before_bn=pool_before_bn,
        whiten=whiten,
        optimizer=optimizer,
        batch_size=batch_size,
        steps=steps,
        warmup=warmup,
        precision=precision,
        channels_last=channels_last,
        compile=compile,
        fused=fused,
        lr=lr,
        mapped=mapped,
        image_size=image_size,
    )
    images, labels, source = _load_images(data_dir, batch_size * (warmup + steps), dev, image_size)
    tmp = tempfile.TemporaryDirectory(prefix="vgg-bench-") if mapped else contextlib.nullcontext()
    with tmp as folder:
        if folder is not None:
            images = _mapped_copy(images, Path(folder) / "images.pixels")
            source += ", served from a memory-mapped file"
        return _run(cfg, images, labels, source, dev, repeats, stages)


def _mapped_copy(images: torch.Tensor, path: Path) -> torch.Tensor:
    """``images`` written to ``path`` and mapped back read-only, as the class-folder cache is."""
    images.numpy().tofile(path)
    size = images.shape[-1]
    return pixel_cache.as_tensor(pixel_cache.map_pixels(path, len(images), size))


def _run(
    cfg: dict,
    images: torch.Tensor,
    labels: torch.Tensor,
    source: str,
    dev: torch.device,
    repeats: int,
    stages: bool,
) -> dict:
    batch_size, steps, warmup = cfg["batch_size"], cfg["steps"], cfg["warmup"]
    arch, width, stage_widths = cfg["arch"], cfg["width"], cfg["stage_widths"]
    activation, pool_before_bn, optimizer = cfg["activation"], cfg["pool_before_bn"], cfg["optimizer"]
    precision, channels_last, compile, fused = cfg["precision"], cfg["channels_last"], cfg["compile"], cfg["fused"]
    if len(labels) < batch_size:
        raise SystemExit(f"error: {source} holds fewer images than one batch of {batch_size}")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    print(f"device: {name}; torch {torch.__version__}, lightning {L.__version__}")
    print(f"data: {source}")
    per_stage = f" stages {stage_widths}" if stage_widths else ""
    per_stage += ", pooled before BN" if pool_before_bn else ""
    per_stage += f", whiten {cfg['whiten']}" if cfg["whiten"] != "off" else ""
    print(
        f"model: {arch} width {width}{per_stage} BN {activation}; batch {batch_size}; precision {precision};"
        f" channels_last {channels_last}; compile {compile}; {optimizer}; fused SGD {fused};"
        f" {warmup} warm-up + {steps} timed steps x {repeats}"
    )
    results: dict[str, list[dict]] = {"plain": [], "lightning": []}
    loops = [("plain", plain_loop), ("lightning", lightning_fit)]
    for r in range(repeats):
        # Alternate which loop goes first, so a machine that speeds up or slows down over time favours neither.
        for label, fn in loops if r % 2 == 0 else loops[::-1]:
            res = fn(cfg, images, labels, dev)
            results[label].append(res)
            ips = batch_size * steps / res["seconds"]
            print(f"  run {r + 1} {label:9s}: {ips:9.1f} images/s, data wait {100 * res['wait'] / res['seconds']:.2f}%")
    summary = {}
    print(f"{'loop':10s} {'images/s':>10s} {'ms/step':>9s} {'data wait':>10s} {'peak mem MB':>12s}")
    for label, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        wait = statistics.median(r["wait"] / r["seconds"] for r in runs)
        mem = max(r["memory_mb"] for r in runs)
        summary[label] = {"images_per_s": batch_size * steps / seconds, "wait_share": wait, "memory_mb": mem}
        rate, step_ms = batch_size * steps / seconds, 1000 * seconds / steps
        print(f"{label:10s} {rate:10.1f} {step_ms:9.1f} {100 * wait:9.2f}% {mem:12.0f}")
    ratio = summary["lightning"]["images_per_s"] / summary["plain"]["images_per_s"]
    summary["ratio"] = ratio
    print(f"ratio lightning/plain: {ratio:.3f} (target >= 0.97)")
    if dev.type == "cpu":
        print("(CPU peak memory is the whole process's peak RSS, so it covers both loops)")
    if stages:
        summary["stages"] = stage_times(cfg, dev)
        print_stage_times(summary["stages"], batch_size)
    return summary


def main() -> None:
    from jsonargparse import CLI

    CLI(run, as_positional=False)


if __name__ == "__main__":
    main()
