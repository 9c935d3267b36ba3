"""Muon for the convolution filters and Nesterov SGD for everything else, as one optimizer.

Muon (K. Jordan et al., 2024; airbench's CIFAR-10 speed record ``airbench94_muon``) replaces each filter's
momentum update by the nearest semi-orthogonal matrix (the filter seen as out x in*3*3, made orthogonal by a few
Newton-Schulz iterations), so every direction of the update moves the same amount instead of the few largest
ones dominating. With BatchNorm after every convolution a filter's scale does not change what the net computes,
so the filters are held at a fixed norm (sqrt of their output channels) instead of being decayed, and the
learning rate is the relative size of each step. One optimizer, not two, so that Lightning's automatic
optimization, the per-step schedule (one factor for every group) and checkpoints work unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Callable, Optional

import torch

from vgg_lightning.precision import auto_precision

# Quintic Newton-Schulz coefficients chosen for the largest slope at 0 (Muon's): small singular values grow
# fast; the result's singular values land near 1 (within about 0.5-1.5), not exactly on it, which trains as well.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``update`` (out, ...) made semi-orthogonal as an out x rest matrix, by ``steps`` Newton-Schulz iterations in
    ``dtype`` (bf16 where the hardware does it natively: the iteration tolerates it)."""
    x = update.reshape(len(update), -1).to(dtype)
    wide = x.size(0) <= x.size(1)
    if not wide:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + 1e-7)  # all singular values <= 1, where the iteration is meant to start
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if not wide:
        x = x.T
    return x.reshape(update.shape).to(update.dtype)


def ns_dtype(device_type: str) -> torch.dtype:
    """bf16 where the device computes it natively (the iterations tolerate it), fp32 elsewhere."""
    return torch.bfloat16 if auto_precision(device_type).startswith("bf16") else torch.float32


def param_groups(
    decay: list[torch.Tensor],
    no_decay: list[torch.Tensor],
    muon_lr: float,
    weight_decay: float,
    muon_momentum: Optional[float] = None,
) -> list[dict]:
    """MuonSGD's groups from the usual split: the 4-d filters orthogonal at ``muon_lr`` (held at a fixed norm, no
    decay; with ``muon_momentum`` if given, else the optimizer's momentum), the other weights (the linear head) with
    L2 ``weight_decay``, BatchNorm parameters and biases without."""
    filters = {"params": [p for p in decay if p.ndim == 4], "lr": muon_lr, "orthogonal": True, "weight_decay": 0.0}
    if muon_momentum is not None:
        filters["momentum"] = muon_momentum
    return [
        filters,
        {"params": [p for p in decay if p.ndim != 4], "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class MuonSGD(torch.optim.Optimizer):
    """Groups with ``orthogonal=True`` (convolution filters, each followed by BatchNorm) take Muon steps; the
    others (BatchNorm parameters, biases, the linear head) take Nesterov-SGD steps with L2 weight decay.

    Both keep a momentum buffer as ``torch.optim.SGD`` does (the first gradient, then ``m * buf + grad``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 3,
        ns_dtype: torch.dtype = torch.float32,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, orthogonal=False)
        super().__init__(params, defaults)
        self.ns_steps, self.ns_dtype = ns_steps, ns_dtype

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["lr"] == 0:  # held as they are (optim.features_lr_factor 0): not even renormalized
                continue
            m = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"] and not group["orthogonal"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(m).add_(grad)
                buf = state["momentum_buffer"]
                update = grad.add(buf, alpha=m) if group["nesterov"] else buf
                if group["orthogonal"]:
                    p.mul_(math.sqrt(len(p)) / p.norm().clamp_min(1e-12))  # the fixed norm BatchNorm allows
                    update = orthogonalize(update, self.ns_steps, self.ns_dtype)
                p.add_(update, alpha=-group["lr"])
        return loss
