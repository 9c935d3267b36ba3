"""The optimizer for a VGG (``OptimOptions.build``), built in one place for ``fit`` and the benchmark's plain loop.

Weight decay goes on conv and linear weights only, never on BatchNorm parameters or biases; parameters that do not
train (a frozen whitening, BatchNorm's fixed scale) are left out; ``bn_bias_lr`` gives BatchNorm's shifts a group
of their own (last) with that rate and no decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from jsonargparse.typing import ClosedUnitInterval, NonNegativeFloat, PositiveFloat

from vgg_lightning import muon


@dataclass(frozen=True)
class OptimOptions:
    """The optimizer and its per-step schedule: ``--model.optim.*`` on the command line, ``model: optim:`` in a recipe.

    Args:
        name: ``sgd`` (with momentum, optionally Nesterov), ``adamw``, or ``muon``: Muon steps for the convolution
            filters (their momentum update made orthogonal, each filter held at a fixed norm, which BatchNorm
            allows: needs ``net.batch_norm``), Nesterov SGD with ``lr`` for the rest (``muon.py``).
        lr: peak learning rate of the schedule.
        muon_lr: with ``name: muon``, the filters' peak learning rate: each step's size relative to the filter's
            (airbench's 0.24 is for 200 steps of batch 2000).
        muon_momentum: with ``name: muon``, the filters' (Nesterov) momentum; unset, ``momentum``'s (airbench uses
            0.6 for its filters against 0.85 for the rest).
        momentum: SGD momentum (``adamw``: beta1).
        nesterov: Nesterov momentum for SGD.
        weight_decay: decoupled for AdamW, L2 for SGD; applied to conv and linear weights only, never to BN
            parameters or biases.
        bn_bias_lr: the learning rate of BatchNorm's shifts, on the same schedule; unset: ``lr``'s. airbench trains
            them 64 times faster than its filters (its ``bias_scaler``).
        fused: the optimizer's fused implementation (one kernel for all parameters); default: on for CUDA.
        schedule: ``onecycle`` (OneCycleLR's shape), ``cosine`` (linear warm-up then cosine to 0), ``linear``
            (linear warm-up then straight down to 0) or ``constant``; stepped after every optimizer step and sized
            by ``trainer.estimated_stepping_batches``, or by the time budget's plan with ``--trainer.max_time``.
        warmup: fraction of all steps spent warming up (OneCycle's ``pct_start``).
        features_lr_factor: the convolution stacks' learning rates (``lr`` and ``muon_lr`` for everything in
            ``net.features``: filters, BatchNorm) times this, the head's unchanged; below 1 keeps a pretrained
            start's ImageNet filters near where they began while the new head learns (0.1 is the usual
            fine-tuning choice); 0 leaves them as they are and trains the head alone.
    """

    name: Literal["sgd", "adamw", "muon"] = "sgd"
    lr: PositiveFloat = 0.1
    muon_lr: PositiveFloat = 0.02
    muon_momentum: Optional[ClosedUnitInterval] = None
    momentum: ClosedUnitInterval = 0.9
    nesterov: bool = True
    weight_decay: NonNegativeFloat = 5e-4
    bn_bias_lr: Optional[PositiveFloat] = None
    fused: Optional[bool] = None
    schedule: Literal["onecycle", "cosine", "linear", "constant"] = "onecycle"
    warmup: ClosedUnitInterval = 0.15
    features_lr_factor: NonNegativeFloat = 1.0

    def check(self, batch_norm_everywhere: bool) -> None:
        """ValueError naming the option when these settings cannot work together."""
        if self.name == "muon" and not batch_norm_everywhere:
            raise ValueError(
                "model.optim.name muon holds each filter at a fixed norm, which only BatchNorm after every"
                " convolution allows: use it with a VGG arch and --model.net.batch_norm true, or pick sgd or adamw"
            )
        if self.muon_momentum is not None and self.name != "muon":
            raise ValueError(f"model.optim.muon_momentum is the muon optimizer's; with {self.name}, set momentum")
        if self.name == "muon" and self.fused:
            raise ValueError("model.optim.fused: the muon optimizer has no fused implementation; leave it unset")

    def build(self, net: torch.nn.Module, device_type: str) -> torch.optim.Optimizer:
        """``sgd`` (momentum, optionally Nesterov), ``adamw`` (``momentum`` is beta1) or ``muon`` (Muon steps for
        the filters at ``muon_lr``, Nesterov SGD at ``lr`` for the rest: ``muon.py``) over ``net``'s parameters."""
        trained = [p for p in net.parameters() if p.requires_grad]
        decay = [p for p in trained if p.ndim > 1]  # conv and linear weights
        shifts = [m.bias for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        shifts = [p for p in shifts if p.requires_grad] if self.bn_bias_lr is not None else []
        own = {id(p) for p in shifts}
        no_decay = [p for p in trained if p.ndim <= 1 and id(p) not in own]  # BN weights and all biases
        shift_group = [{"params": shifts, "lr": self.bn_bias_lr, "weight_decay": 0.0}] if shifts else []
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.name == "muon":
            groups = muon.param_groups(decay, no_decay, self.muon_lr, self.weight_decay, self.muon_momentum)
        groups = self._features_scaled(groups + shift_group, net)
        fused = device_type == "cuda" if self.fused is None else self.fused
        lr, momentum = self.lr, self.momentum
        if self.name == "sgd":
            nesterov = self.nesterov and momentum > 0
            return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused or None)
        if self.name == "muon":
            # nesterov as given: MuonSGD allows it at momentum 0 (a plain step), and the filters may have momentum
            dtype = muon.ns_dtype(device_type)
            return muon.MuonSGD(groups, lr=lr, momentum=momentum, nesterov=self.nesterov, ns_dtype=dtype)
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), fused=fused or None)

    def _features_scaled(self, groups: list[dict], net: torch.nn.Module) -> list[dict]:
        """``groups`` with each one's ``net.features`` parameters split off at ``features_lr_factor`` times its
        rate (the head's groups first; empty groups left out)."""
        features = getattr(net, "features", None)
        if self.features_lr_factor == 1 or features is None:
            return groups
        inside = {id(p) for p in features.parameters()}
        head, stacks = [], []
        for g in groups:
            rate = g.get("lr", self.lr)
            params = [p for p in g["params"] if id(p) not in inside]
            head += [{**g, "params": params, "lr": rate}] if params else []
            params = [p for p in g["params"] if id(p) in inside]
            stacks += [{**g, "params": params, "lr": rate * self.features_lr_factor}] if params else []
        return head + stacks
