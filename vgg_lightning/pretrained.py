"""A pretrained start (``--model.net.pretrained imagenet|PATH``): torchvision's ImageNet weights in the convolution
stacks of a VGG at width 1; the head is new (it has the data's classes).

The layers of ``models.make_layers`` at width 1 (pooling after BatchNorm) sit at the same positions as in
torchvision's ``features``, so weights go over by position. torchvision's convolutions before a BatchNorm carry a
bias, which ours leave out (BatchNorm's shift does its work): it is folded into BatchNorm's running mean, so the
network computes exactly what torchvision's does in evaluation mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vgg_lightning.errors import DataError
from vgg_lightning.files import display_name

IMAGENET = "imagenet"
# What the weights were trained with (torchvision's ImageNet transforms): the data's normalization unless given.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = ("vgg11", "vgg13", "vgg16", "vgg19")


def weights_name(arch: str, batch_norm: bool) -> str:
    """torchvision's weights enum for the arch: ``VGG16_BN_Weights.IMAGENET1K_V1``."""
    return f"{arch.upper()}{'_BN' if batch_norm else ''}_Weights.IMAGENET1K_V1"


def imagenet_file(arch: str, batch_norm: bool) -> tuple[str, Path]:
    """(URL, the file torch.hub keeps it as): where a machine without network must place the download."""
    from torchvision.models import get_weight

    url = get_weight(weights_name(arch, batch_norm)).url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def read(source: str, arch: str, batch_norm: bool) -> dict[str, torch.Tensor]:
    """The state dict of ``source``: ``imagenet`` (torch.hub's copy, downloaded and hash-checked once) or a file."""
    if source == IMAGENET:
        url, path = imagenet_file(arch, batch_norm)
        if not path.is_file():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(path), hash_prefix=_hash_prefix(path), progress=False)
            except Exception as e:  # no network, a proxy, a refused write, a hash mismatch: one message
                reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
                raise DataError(
                    f"could not download torchvision's ImageNet weights for {arch}{'_bn' if batch_norm else ''} from"
                    f" {url} ({reason}). On a machine without network, download that file elsewhere and place it"
                    f" at {path}, or give its path: --model.net.pretrained PATH"
                ) from None
        source = str(path)
    if not Path(source).is_file():
        raise DataError(
            f"model.net.pretrained: no such file {display_name(source)} (give `imagenet` or a weights file)"
        )
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(
            f"model.net.pretrained: {display_name(source)} is not a PyTorch weights file"
            f" ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not any(str(k).startswith("features.") for k in state):
        raise DataError(
            f"model.net.pretrained: {display_name(source)} holds no torchvision VGG weights (no features.* tensors)"
        )
    return state


def _hash_prefix(path: Path):
    """The SHA-256 prefix torchvision puts in its file names (``vgg16_bn-6c64b313.pth``), checked on download."""
    match = torch.hub.HASH_REGEX.search(path.name)
    return match.group(1) if match else None


def check(arch: str, width: float, stage_widths, activation: str, pool_before_bn: bool, whiten: str, dirac: bool):
    """ValueError naming the option that a pretrained start cannot go with."""
    if arch not in ARCHS:
        raise ValueError(f"model.net.pretrained: torchvision has ImageNet weights for {', '.join(ARCHS)}, not {arch}")
    clashes = {
        "width": width != 1,
        "stage_widths": stage_widths is not None and any(f != 1 for f in stage_widths),
        "activation": activation != "relu",
        "pool_before_bn": pool_before_bn,
        "whiten": whiten != "off",
        "dirac": dirac,
    }
    given = [name for name, clash in clashes.items() if clash]
    if given:
        raise ValueError(
            f"model.net.pretrained: the ImageNet weights fit VGG as torchvision builds it (width 1, ReLU, pooling"
            f" after BatchNorm, a random start to replace); leave model.net.{given[0]} unset"
        )


@torch.no_grad()
def load_into(features: nn.Sequential, state: dict[str, torch.Tensor], source: str) -> int:
    """Copy ``state``'s ``features.*`` into ``features`` by position; the number of tensors copied. DataError when
    the file's layers do not match the net's (another arch, or BatchNorm in one only)."""
    copied = 0
    layers = list(features)
    for i, layer in enumerate(layers):
        if not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
            continue
        names = ["weight", "bias"] + (["running_mean", "running_var"] if isinstance(layer, nn.BatchNorm2d) else [])
        for name in names:
            key = f"features.{i}.{name}"
            mine = getattr(layer, name)
            if mine is None:  # a conv before BatchNorm has no bias: folded into the BatchNorm below
                continue
            theirs = state.get(key)
            if theirs is None or tuple(theirs.shape) != tuple(mine.shape):
                found = "missing" if theirs is None else f"of shape {tuple(theirs.shape)}"
                raise DataError(
                    f"model.net.pretrained: {display_name(source)} does not fit this net: {key} is {found}, the net"
                    f" needs {tuple(mine.shape)} (weights of another arch, or with/without BatchNorm?)"
                )
            mine.copy_(theirs)
            copied += 1
        if isinstance(layer, nn.Conv2d) and layer.bias is None:
            bias = state.get(f"features.{i}.bias")
            bn = layers[i + 1] if i + 1 < len(layers) else None
            if bias is not None and isinstance(bn, nn.BatchNorm2d):
                # BN(conv(x) + b) = BN'(conv(x)) with BN's running mean lowered by b; in training BatchNorm
                # subtracts the batch mean, where b cancels anyway.
                pending = state.get(f"features.{i + 1}.running_mean")
                if pending is not None:
                    state = {**state, f"features.{i + 1}.running_mean": pending - bias}
    return copied
