"""The muon optimizer: orthogonal steps for the filters at a fixed norm, plain Nesterov SGD for the rest."""

import math

import pytest
import torch

from vgg_lightning.cli import main
from vgg_lightning.models import first_conv
from vgg_lightning.module import VGGClassifier
from vgg_lightning.muon import MuonSGD, orthogonalize

from .helpers.runs import tiny


@pytest.mark.parametrize("shape", [(64, 32, 3, 3), (32, 64, 3, 3), (10, 512)])
def test_orthogonalize_gives_the_polar_factor_within_muons_tolerance(shape):
    torch.manual_seed(0)
    rows = torch.logspace(-2, 0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    g = torch.randn(*shape) * rows  # ill-conditioned: row scales 100-fold apart
    o = orthogonalize(g, steps=5)
    assert o.shape == g.shape and o.dtype == g.dtype
    matrix = o.reshape(shape[0], -1)
    singular = torch.linalg.svdvals(matrix)
    assert singular.min() > 0.5 and singular.max() < 1.5  # near 1, where plain g's spread 100-fold
    u, _, vh = torch.linalg.svd(g.reshape(shape[0], -1), full_matrices=False)
    polar = u @ vh
    assert (matrix * polar).sum() / (matrix.norm() * polar.norm()) > 0.97
    low = orthogonalize(g, steps=5, dtype=torch.bfloat16)  # the fast path: same direction, result in g's dtype
    assert low.dtype == g.dtype and (low * o).sum() / (low.norm() * o.norm()) > 0.98


@pytest.mark.parametrize("filter_momentum", [None, 0.6])
def test_filters_take_normalized_orthogonal_steps_and_the_rest_sgds(filter_momentum):
    """By hand over 3 steps; the filters' own momentum (``--model.optim.muon_momentum``) leaves the rest at 0.9."""
    torch.manual_seed(0)
    fm = 0.9 if filter_momentum is None else filter_momentum
    conv, bn = torch.nn.Conv2d(8, 16, 3), torch.nn.BatchNorm2d(16)
    head = torch.nn.Linear(16, 4)
    params = [conv.weight, conv.bias, bn.weight, bn.bias, head.weight, head.bias]
    copies = [p.detach().clone().requires_grad_() for p in params]
    opt = MuonSGD(
        [
            {"params": [params[0]], "lr": 0.05, "orthogonal": True}
            | ({} if filter_momentum is None else {"momentum": filter_momentum}),
            {"params": params[1:4] + params[5:], "weight_decay": 0.0},
            {"params": [params[4]], "weight_decay": 1e-3},
        ],
        lr=0.1,
        momentum=0.9,
    )
    sgd = torch.optim.SGD(
        [{"params": copies[1:4] + copies[5:], "weight_decay": 0.0}, {"params": [copies[4]], "weight_decay": 1e-3}],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    buf = None
    for step in grads:
        w = params[0].detach().clone()
        for p, c, g in zip(params, copies, step):
            p.grad, c.grad = g.clone(), g.clone()
        buf = step[0].clone() if buf is None else fm * buf + step[0]
        expected = w * math.sqrt(16) / w.norm() - 0.05 * orthogonalize(step[0] + fm * buf, steps=3)
        opt.step()
        sgd.step()
        assert torch.allclose(params[0], expected, atol=1e-6)
        for p, c in zip(params[1:], copies[1:]):
            assert torch.equal(p, c)


def test_muon_fit_steps_only_trained_filters_orthogonally(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--trainer.max_epochs", "1", "--model.optim.name", "muon", "--model.net.whiten", "frozen"]
    # The filters' own momentum, with none for the rest: the filters' steps stay Nesterov
    assert (
        main(["fit", *tiny(cifar10_dir, *args, "--model.optim.muon_momentum", "0.6", "--model.optim.momentum", "0")])
        == 0
    )
    ckpt = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    model = VGGClassifier.load_from_checkpoint(
        tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True
    )
    convs = [m.weight for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert first_conv(model.net).weight is convs[0]
    assert [(g["orthogonal"], len(g["params"]), g["lr"] > 0) for g in groups[:1]] == [(True, len(convs) - 1, True)]
    assert not any(g["orthogonal"] for g in groups[1:])
    assert groups[0]["momentum"] == 0.6 and {g["momentum"] for g in groups[1:]} == {0.0}
    assert groups[0]["nesterov"]
    # Each trained filter was set to norm sqrt(out) before its last step of relative size about lr (0.02 at
    # peak, less on the schedule's way down): it ends within a few percent of that norm.
    for w in convs[1:]:
        assert abs(w.norm() / math.sqrt(len(w)) - 1) < 0.05
    assert model.optim_options.name == "muon"
