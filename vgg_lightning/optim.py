"""The optimizer for a VGG, built in one place for ``fit`` (VGGClassifier) and for the benchmark's plain loop.

Weight decay goes on conv and linear weights only, never on BatchNorm parameters or biases; parameters that do not
train (a frozen whitening, BatchNorm's fixed scale) are left out; ``bn_bias_lr`` gives BatchNorm's shifts a group
of their own (last) with that rate and no decay.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch

from vgg_lightning import muon

OPTIMIZERS = ("sgd", "adamw", "muon")


def build_optimizer(
    net: torch.nn.Module,
    device_type: str,
    optimizer: Literal["sgd", "adamw", "muon"] = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    muon_lr: float = 0.02,
    muon_momentum: Optional[float] = None,
    bn_bias_lr: Optional[float] = None,
    fused: Optional[bool] = None,
) -> torch.optim.Optimizer:
    """``sgd`` (momentum, optionally Nesterov), ``adamw`` (``momentum`` is beta1) or ``muon`` (Muon steps for the
    filters at ``muon_lr``, Nesterov SGD at ``lr`` for the rest: ``muon.py``). ``fused``: one kernel for all
    parameters; default on for CUDA."""
    trained = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim > 1]  # conv and linear weights
    shifts = [m.bias for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    shifts = [p for p in shifts if p.requires_grad] if bn_bias_lr is not None else []
    own = {id(p) for p in shifts}
    no_decay = [p for p in trained if p.ndim <= 1 and id(p) not in own]  # BN weights and all biases
    shift_group = [{"params": shifts, "lr": bn_bias_lr, "weight_decay": 0.0}] if shifts else []
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups += shift_group
    fused = device_type == "cuda" if fused is None else fused
    if optimizer == "sgd":
        nesterov = nesterov and momentum > 0
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused or None)
    if optimizer == "muon":
        groups = muon.param_groups(decay, no_decay, muon_lr, weight_decay, muon_momentum) + shift_group
        # nesterov as given: MuonSGD allows it at momentum 0 (a plain step), and the filters may have momentum
        dtype = muon.ns_dtype(device_type)
        return muon.MuonSGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, ns_dtype=dtype)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), fused=fused or None)
