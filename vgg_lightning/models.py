"""VGG networks for 32x32 images, built from plain config lists as torchvision's ``models/vgg.py`` does.

``vgg11/13/16/19`` follow torchvision's configs A, B, D and E; the CIFAR head replaces the 4096-wide ImageNet
classifier (the feature map is 1x1x512 after five pools of a 32x32 image). ``vgg7`` is a shallower VGG for slow
CPUs: seven 3x3 convolutions, three pools, most of its channels on the 8x8 and 4x4 maps (the layout of the CIFAR-10
speed runs, airbench's). ``blog_vgg16`` is the blog article's "VGG-16" exactly as it printed it, kept so users can
compare against it.

All take any image size of 32 or more: an adaptive pool before the head brings the feature map to the size the
head was built for (1x1 for VGG, 4x4 for blog_vgg16): an identity at 32x32, except for ``vgg7``, whose 4x4 map is
pooled to 1x1 (averaged, or its maximum taken with ``head_pool: max``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence, Union

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveFloat
from torch import nn
from typing_extensions import override

from vgg_lightning import pretrained as pretrained_weights

# "M" is a 2x2 max-pool; numbers are output channels of a 3x3 convolution (torchvision's cfgs A, B, D, E; then
# vgg7, not one of the paper's: each stack's channels rise at the convolution before its pool, and a last 4x4 stack
# without one; on VGG's scale, so that a width means the same: x0.375, cpu_fp32.yaml's, gives 24-32|32-96|96-192|192).
CONFIGS: dict[str, list[Union[int, str]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    "vgg7": [64, 85, "M", 85, 256, "M", 256, 512, "M", 512],
}
ARCHS = (*CONFIGS, "blog_vgg16")
# The nonlinearity after each convolution: VGG's ReLU, or the GELU the CIFAR-10 speed runs use.
ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


@dataclass(frozen=True)
class NetOptions:
    """The network: ``--model.net.*`` on the command line, ``model: net:`` in a recipe.

    Args:
        arch: ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``; ``vgg7`` (seven convolutions, channels 64-85 | 85-256 |
            256-512 | 512, each "|" a pool: a shallower VGG for CPUs without bf16, ``cpu_fp32.yaml``'s at x0.375); or
            ``blog_vgg16`` (the blog article's "VGG-16", as printed).
        batch_norm: BatchNorm after each convolution (the "-BN" variants).
        width: factor on every channel count (0.5 gives a half-width VGG, 4x cheaper).
        stage_widths: one more factor per stage (the convolutions before each of the five poolings; vgg7's four
            stages end at its three poolings and the head), on top of ``width``: ``[1, 1, 1, 1, 0.5]`` halves
            VGG-13's last stage (its 2x2 maps take 11% of a CPU step for 8% of the FLOPs; ``python -m
            vgg_lightning.tools.bench --stages true`` shows each stage's share). Default: 1 each.
        activation: ``relu`` (VGG's) or ``gelu`` (the speed runs') after every convolution; the head keeps ReLU.
        pool_before_bn: each stage's pooling right after its last convolution, before that convolution's BatchNorm
            and activation (airbench's order). Max-pooling commutes with the ReLU, so only BatchNorm's statistics
            change (taken over the pooled map); BN and ReLU do a quarter of the work there: 5-8% more steps in the
            same time on a CPU.
        head_pool: ``avg`` (VGG's) or ``max`` (airbench's): how the last feature map is pooled to 1x1 before the
            head. The same at 32x32 for the five-pool VGGs, whose map is 1x1 there; it decides for ``vgg7`` (4x4)
            and for larger images.
        head_hidden: width of two hidden FC layers in the head; 0 gives one linear layer from the features.
        dropout: dropout before each FC layer of the head.
        bn_momentum: BatchNorm's running-statistics momentum (PyTorch's convention: weight of the new batch).
        bn_eps: BatchNorm's epsilon.
        bn_scale: train BatchNorm's scale; false keeps it at 1 (the shift is always trained).
        whiten: ``frozen`` or ``trained``: start the first convolution as a patch-whitening filter bank computed
            from 5,000 training images (the principal directions of their 3x3 patches, both signs), and keep it
            fixed or train it from there; ``off``: random start. ``frozen_layer``: the filters fixed and the
            BatchNorm after them too (scale 1, shift 0): nothing before the second convolution trains, so
            backpropagation stops there and skips that convolution's input gradient (``vgg7`` x0.375 in fp32: 5-9%
            less forward and backward time; accuracy level on 3 seeds, configs/results.md).
        dirac: start every later 3x3 convolution as an identity on its first input channels (plus random filters).
        pretrained: ``imagenet``: start the convolution stacks from torchvision's ImageNet weights for the arch
            (with or without BatchNorm; downloaded once by torch.hub), or the path of such a weights file (for
            machines without network); the head starts new. Width 1 only. The data is then normalized with
            ImageNet's mean and std unless ``data.mean``/``data.std`` are given (``pretrained.py``).
    """

    arch: Literal["vgg11", "vgg13", "vgg16", "vgg19", "vgg7", "blog_vgg16"] = "vgg16"
    batch_norm: bool = True
    width: PositiveFloat = 1.0
    stage_widths: Optional[list[PositiveFloat]] = None
    activation: Literal["relu", "gelu"] = "relu"
    pool_before_bn: bool = False
    head_pool: Literal["avg", "max"] = "avg"
    head_hidden: NonNegativeInt = 0
    dropout: ClosedUnitInterval = 0.0
    bn_momentum: ClosedUnitInterval = 0.1
    bn_eps: PositiveFloat = 1e-5
    bn_scale: bool = True
    whiten: Literal["off", "frozen", "frozen_layer", "trained"] = "off"
    dirac: bool = False
    pretrained: Optional[str] = None

    def check(self) -> None:
        """ValueError naming the option (``model.net.<option>: ...``) when the network cannot be built as asked."""
        shaping = {
            "stage_widths": self.stage_widths is not None,
            "activation": self.activation != "relu",
            "head_pool": self.head_pool != "avg",
        }
        given = [name for name, on in {**shaping, "pool_before_bn": self.pool_before_bn}.items() if on]
        if given and self.arch not in CONFIGS:
            raise ValueError(
                f"model.net.{given[0]} shapes the VGG configs; {self.arch} is kept as printed: leave it unset"
            )
        if self.stage_widths is not None:
            try:
                stage_factors(CONFIGS[self.arch], self.width, self.stage_widths)
            except ValueError as e:
                ones = ", ".join(["1"] * (stages(CONFIGS[self.arch]) - 1))
                raise ValueError(f"model.net.{e}; e.g. --model.net.stage_widths '[{ones}, 0.5]'") from None
        if self.pretrained is not None:
            pretrained_weights.check(
                self.arch,
                self.width,
                self.stage_widths,
                self.activation,
                self.pool_before_bn,
                self.whiten,
                self.dirac,
            )

    def build(self, num_classes: int) -> nn.Module:
        """The network, with the starts the options ask for (whitening needs the data: ``whiten_init``)."""
        net = build_model(
            self.arch,
            num_classes=num_classes,
            batch_norm=self.batch_norm,
            width=self.width,
            head_hidden=self.head_hidden,
            dropout=self.dropout,
            bn_momentum=self.bn_momentum,
            bn_eps=self.bn_eps,
            stage_widths=self.stage_widths,
            activation=self.activation,
            pool_before_bn=self.pool_before_bn,
            head_pool=self.head_pool,
        )
        vgg = self.arch in CONFIGS  # the options below shape a VGG; the blog's net is kept as printed
        if self.dirac and vgg:
            dirac_init(net)
        if self.whiten in ("frozen", "frozen_layer") and vgg:
            first_conv(net).weight.requires_grad_(False)
        if self.whiten == "frozen_layer" and vgg:
            freeze_first_layer(net)
        if not self.bn_scale:
            freeze_bn_scale(net)
        return net


def stages(cfg: list[Union[int, str]]) -> int:
    """How many stages a config has: the convolutions before each pooling, and those after the last one (vgg7's)."""
    return cfg.count("M") + (cfg[-1] != "M")


def stage_factors(cfg: list[Union[int, str]], width: float, stage_widths: Optional[Sequence[float]]) -> list[float]:
    """The factor on each convolution's channels: ``width`` times its stage's entry of ``stage_widths`` (a stage
    is the convolutions before a pooling, or after the last one: five in torchvision's configs, four in vgg7)."""
    n = stages(cfg)
    if stage_widths is None:
        stage_widths = [1.0] * n
    if len(stage_widths) != n or min(stage_widths) <= 0:
        raise ValueError(
            f"stage_widths needs {n} positive factors for this arch, one per stage,"
            f" got {len(stage_widths)}: {list(stage_widths)}"
        )
    factors, stage = [], 0
    for v in cfg:
        if v == "M":
            stage += 1
        else:
            factors.append(width * stage_widths[stage])
    return factors


def make_layers(
    cfg: list[Union[int, str]],
    *,
    batch_norm: bool,
    width: float = 1.0,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    stage_widths: Optional[Sequence[float]] = None,
    activation: str = "relu",
    pool_before_bn: bool = False,
) -> nn.Sequential:
    """Conv(3x3) [-> BN] -> ReLU (or ``activation``) for each number, MaxPool for each "M"; ``width`` scales every
    channel count, ``stage_widths`` each stage's on top of it. ``pool_before_bn`` moves each pooling up to right
    after its convolution (airbench's order): BN and the activation then run on a quarter of the positions."""
    layers: list[nn.Module] = []
    in_channels = 3
    factors = iter(stage_factors(cfg, width, stage_widths))
    for i, v in enumerate(cfg):
        if v == "M":
            if not pool_before_bn:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = max(1, round(int(v) * next(factors)))
        # A conv followed by BN needs no bias: BN's shift replaces it.
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not batch_norm))
        if pool_before_bn and cfg[i + 1 : i + 2] == ["M"]:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum))
        layers.append(ACTIVATIONS[activation]())
        in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG features followed by a CIFAR head: ``head_hidden`` 0 gives one linear layer from the 512 features
    (times the width factors)."""

    def __init__(
        self,
        cfg: list[Union[int, str]],
        *,
        num_classes: int = 10,
        batch_norm: bool = True,
        width: float = 1.0,
        head_hidden: int = 0,
        dropout: float = 0.0,
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        stage_widths: Optional[Sequence[float]] = None,
        activation: str = "relu",
        pool_before_bn: bool = False,
        head_pool: str = "avg",
    ) -> None:
        super().__init__()
        self.features = make_layers(
            cfg,
            batch_norm=batch_norm,
            width=width,
            bn_momentum=bn_momentum,
            bn_eps=bn_eps,
            stage_widths=stage_widths,
            activation=activation,
            pool_before_bn=pool_before_bn,
        )
        # 1x1 already at 32x32 after five pools (vgg7's map is 4x4); larger images are pooled down to it
        self.pool = nn.AdaptiveMaxPool2d(1) if head_pool == "max" else nn.AdaptiveAvgPool2d(1)
        in_features = next(m.out_channels for m in reversed(self.features) if isinstance(m, nn.Conv2d))
        head: list[nn.Module] = [nn.Flatten()]
        if head_hidden > 0:
            for _ in range(2):  # two hidden layers, as VGG's classifier has
                head += [nn.Linear(in_features, head_hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
                in_features = head_hidden
        elif dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(in_features, num_classes))
        self.classifier = nn.Sequential(*head)
        init_weights(self)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class BlogVGG16(nn.Module):
    """The article's network, layer for layer: no ReLU inside a stack, 1x1 convs padded by 1, pooling padded
    from the second stack on, then pool -> BN -> ReLU after each stack and three FC layers (14,777,162 params)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5) -> None:
        super().__init__()

        def stack(convs: list[tuple[int, int, int]], pool_padding: int) -> list[nn.Module]:
            mods: list[nn.Module] = [nn.Conv2d(i, o, k, padding=1) for i, o, k in convs]
            out = convs[-1][1]
            return [*mods, nn.MaxPool2d(2, 2, padding=pool_padding), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *stack([(3, 64, 3), (64, 64, 3)], 0),  # conv1-2: 32 -> 16
            *stack([(64, 128, 3), (128, 128, 3)], 1),  # conv3-4: 16 -> 9
            *stack([(128, 128, 3), (128, 128, 3), (128, 128, 1)], 1),  # conv5-7: 9 -> 11 -> 6
            *stack([(128, 256, 3), (256, 256, 3), (256, 256, 1)], 1),  # conv8-10: 6 -> 8 -> 5
            *stack([(256, 512, 3), (512, 512, 3), (512, 512, 1)], 1),  # conv11-13: 5 -> 7 -> 4
        )
        self.avgpool = nn.AdaptiveAvgPool2d(4)  # 4x4 already at 32x32
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512 * 4 * 4, 1024),  # fc14
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, 1024),  # fc15
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, num_classes),  # fc16
        )

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan-out, as torchvision), unit BN, small-normal linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def build_model(
    arch: str = "vgg16",
    *,
    num_classes: int = 10,
    batch_norm: bool = True,
    width: float = 1.0,
    head_hidden: int = 0,
    dropout: float = 0.0,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    stage_widths: Optional[Sequence[float]] = None,
    activation: str = "relu",
    pool_before_bn: bool = False,
    head_pool: str = "avg",
) -> nn.Module:
    """The network named by ``arch``; ``blog_vgg16`` ignores the VGG-only options, as the article fixed them."""
    if arch in ("blog_vgg16", "seed"):  # "seed": its name in older checkpoints
        return BlogVGG16(num_classes=num_classes)
    if arch not in CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return VGG(
        CONFIGS[arch],
        num_classes=num_classes,
        batch_norm=batch_norm,
        width=width,
        head_hidden=head_hidden,
        dropout=dropout,
        bn_momentum=bn_momentum,
        bn_eps=bn_eps,
        stage_widths=stage_widths,
        activation=activation,
        pool_before_bn=pool_before_bn,
        head_pool=head_pool,
    )


@torch.no_grad()
def freeze_bn_scale(model: nn.Module) -> None:
    """BatchNorm's scale fixed at its start (1): only the shift trains."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(False)


def dirac_init(model: nn.Module) -> int:
    """Identity start for every 3x3 convolution after the first: its first ``in_channels`` filters pass their input
    channel through unchanged (the rest keep their random start), so the deep stack begins close to a shallow
    net (airbench's initialisation). Returns how many convolutions were set."""
    done = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels > 3 and m.kernel_size == (3, 3) and m.groups == 1:
            n = min(m.in_channels, m.out_channels)
            with torch.no_grad():
                nn.init.dirac_(m.weight[:n])
            done += 1
    return done


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def freeze_first_layer(model: nn.Module) -> None:
    """The first convolution's bias and the BatchNorm that follows it (before the second convolution) fixed: with
    the filters fixed too, no gradient is needed below the second convolution."""
    conv = first_conv(model)
    if conv.bias is not None:
        conv.bias.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m is not conv:
            break  # the second convolution: its own BatchNorm trains
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(False)


@torch.no_grad()
def whiten_init(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> int:
    """Patch whitening (airbench): the first convolution's filters become the principal directions of the data's
    own patches, each scaled by 1/sqrt(its variance), in both signs (a ReLU follows: the sign pair keeps both
    halves). ``images``: normalized float (N, C, H, W). Filters beyond twice the patch size keep their random start.
    Returns how many directions were used."""
    kh, kw = conv.kernel_size
    dims = images.shape[1] * kh * kw
    cov = torch.zeros(dims, dims, dtype=torch.float64)
    count = 0
    # In chunks of about 2**22 patch values: all 5,000 images' patches at once took 6 GB at 64 px (24 GB at 128).
    per_chunk = max(1, 2**22 // (dims * images.shape[-2] * images.shape[-1]))
    for chunk in images.split(per_chunk):
        patches = torch.nn.functional.unfold(chunk.float(), (kh, kw))  # (n, C*kh*kw, L)
        x = patches.transpose(1, 2).reshape(-1, dims).double()
        cov += x.T @ x
        count += x.shape[0]
    values, vectors = torch.linalg.eigh(cov / max(1, count))  # ascending
    k = min(conv.out_channels // 2, dims)
    values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k]
    filters = (vectors / torch.sqrt(values.clamp_min(0) + eps)).T.reshape(k, conv.in_channels, kh, kw)
    conv.weight[:k] = filters.to(conv.weight)
    conv.weight[k : 2 * k] = -filters.to(conv.weight)
    return k


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
