"""The accuracy-per-step options taken from the CIFAR-10 speed runs (airbench): each does what it says."""

import pytest
import torch
import torch.nn.functional as F

from vgg_lightning.callbacks.lookahead import Lookahead, lookahead_tensors
from vgg_lightning.cli import main
from vgg_lightning.errors import ConfigError
from vgg_lightning.models import NetOptions, build_model, dirac_init, first_conv, whiten_init
from vgg_lightning.module import VGGClassifier

from .helpers.runs import fit_tiny, tiny


def test_shift_tta_averages_six_views_with_airbench_weights():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    plain = VGGClassifier(net=dict(arch="vgg11", width=0.125)).eval()
    tta = VGGClassifier(net=dict(arch="vgg11", width=0.125), tta=dict(flip=True, shift=1)).eval()
    tta.load_state_dict(plain.state_dict())
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[..., :32, :32], padded[..., 2:, 2:]]  # unshifted, moved down-right, moved up-left
    with torch.no_grad():
        pair = [(plain(v) + plain(v.flip(3))) / 2 for v in views]
        expected = pair[0] / 2 + pair[1] / 4 + pair[2] / 4
        assert torch.allclose(tta.predict_logits(x), expected, atol=1e-5)
    assert (plain.tta_passes(), tta.tta_passes()) == (1, 6)
    assert VGGClassifier(net=dict(arch="vgg11", width=0.125), tta=dict(flip="final")).tta_passes() == 2
    assert (
        VGGClassifier(net=dict(arch="vgg11", width=0.125), tta=dict(shift=1)).tta_passes() == 1
    )  # shifts ride on flip TTA


def test_dirac_start_passes_input_channels_through():
    model = VGGClassifier(net=dict(arch="vgg11", width=0.25, dirac=True)).net
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    first, second = convs[0], convs[1]  # 3 -> 16, 16 -> 32 channels
    x = torch.randn(2, first.out_channels, 8, 8)
    with torch.no_grad():
        y = second(x)
    assert torch.allclose(y[:, : first.out_channels], x, atol=1e-6)  # identity on the first in_channels filters
    assert y[:, first.out_channels :].abs().sum() > 0  # the rest keep their random start
    assert not torch.allclose(first.weight, torch.zeros_like(first.weight))
    assert dirac_init(VGGClassifier(net=dict(arch="vgg11", width=0.25)).net) == len(convs) - 1  # never the first conv


def test_whitening_makes_the_patch_covariance_the_identity():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.9, 0.8], [0.0, 0.3, 0.2], [0.0, 0.0, 0.1]])  # strongly correlated channels
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 3, 16, 16))
    images = images + F.avg_pool2d(images, 3, 1, 1) * 3  # and neighbouring pixels
    conv = torch.nn.Conv2d(3, 32, 3, padding=1, bias=False)
    k = whiten_init(conv, images, eps=1e-6)
    assert k == 16
    with torch.no_grad():
        out = F.conv2d(images, conv.weight)  # no padding: every output is a full patch
    feats = out.permute(1, 0, 2, 3).reshape(32, -1)
    cov = feats[:k] @ feats[:k].T / feats.shape[1]
    assert torch.allclose(cov, torch.eye(k), atol=0.05)
    assert torch.equal(conv.weight[k : 2 * k], -conv.weight[:k])


@pytest.mark.parametrize("whiten, stops", [("frozen", False), ("frozen_layer", True)])
def test_a_frozen_first_layer_stops_backpropagation_at_the_second_convolution(whiten, stops):
    net = NetOptions(arch="vgg7", width=0.125, whiten=whiten).build(10)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    needs_grad = []
    convs[1].register_forward_pre_hook(lambda module, args: needs_grad.append(args[0].requires_grad))
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    assert needs_grad == [not stops]  # with frozen_layer no input gradient for the second conv to compute
    assert convs[1].weight.grad is not None and convs[0].weight.grad is None


@pytest.mark.parametrize("whiten", ["frozen", "frozen_layer"])
def test_frozen_whitening_and_bn_options_through_a_fit(cifar10_dir, tmp_path, monkeypatch, whiten):
    monkeypatch.chdir(tmp_path)
    args = tiny(
        cifar10_dir,
        "--trainer.max_epochs",
        "1",
        "--model.net.whiten",
        whiten,
        "--model.net.bn_scale",
        "false",
        "--model.net.bn_momentum",
        "0.4",
        "--model.net.bn_eps",
        "1e-12",
    )
    assert main(["fit", *args]) == 0
    path = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    model = VGGClassifier.load_from_checkpoint(path, weights_only=True)
    # The first conv is the data's whitening, untouched by training: rebuild it from the same images.
    from vgg_lightning.data.augment import normalize
    from vgg_lightning.data.datamodule import ImageDataModule

    dm = ImageDataModule(data_dir=str(cifar10_dir), download=False, val_size=40, batch_size=16)
    dm.setup("fit")
    expected = VGGClassifier(net=dict(arch="vgg11", width=0.125)).net
    whiten_init(first_conv(expected), normalize(dm.train_set.images()[:5000], dm.mean, dm.std))
    k = first_conv(expected).out_channels // 2
    assert torch.allclose(first_conv(model.net).weight[:k], first_conv(expected).weight[:k], atol=1e-6)
    bns = [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)  # scales kept at 1
    assert any(m.bias.abs().sum() > 0 for m in bns[1:])  # shifts trained
    # the first BatchNorm's shift: trained after frozen filters, kept at 0 with frozen_layer (its statistics run)
    assert (bns[0].bias.abs().sum() > 0) == (whiten == "frozen")
    assert not torch.equal(bns[0].running_var, torch.ones_like(bns[0].running_var))
    assert {(m.momentum, m.eps) for m in bns} == {(0.4, 1e-12)}


def test_trained_whitening_moves(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny(cifar10_dir, "--trainer.max_epochs", "1", "--model.net.whiten", "trained")]) == 0
    model = VGGClassifier.load_from_checkpoint(
        tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True
    )
    w = first_conv(model.net).weight
    k = w.shape[0] // 2
    assert not torch.allclose(w[k : 2 * k], -w[:k], atol=1e-4)  # trained away from the sign pairs


def test_lookahead_resets_the_weights_to_the_slow_copy_and_ends_on_it(cifar10_dir, tmp_path, monkeypatch):
    import lightning as L

    monkeypatch.chdir(tmp_path)
    seen = []

    class Watch(L.Callback):  # callbacks' batch-end hooks run before the module's: look at the next batch start
        def record(self, trainer, pl_module):
            fast, slow = lookahead_tensors(pl_module), lookahead.slow
            same = slow is not None and all(torch.equal(a, b) for a, b in zip(slow, fast))
            seen.append((trainer.global_step, same))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.record(trainer, pl_module)

        def on_train_end(self, trainer, pl_module):
            self.record(trainer, pl_module)

    model = VGGClassifier(net=dict(arch="vgg11", width=0.125), optim=dict(lr=0.05))
    lookahead = Lookahead(decay=0.95, every=3)
    fit_tiny(cifar10_dir, model, [Watch(), lookahead], max_epochs=1)
    steps = [s for s, _ in seen]
    assert steps == list(range(0, 11))  # 160 images, batch 16: 10 steps
    synced = [s for s, same in seen if same]
    # the slow copy starts at step 3, then the weights are reset to it at 6, 9 and the last step (10)
    assert synced == [3, 6, 9, 10]
    saved = lookahead.state_dict()["slow"]
    assert len(saved) == len(lookahead_tensors(model))
    # A checkpoint from when Lookahead was a model option kept the slow copy at its top level: still taken.
    old = Lookahead(decay=0.95, every=3)
    old.on_load_checkpoint(None, model, {"lookahead_slow": saved})
    assert all(torch.equal(a, b) for a, b in zip(old.slow, saved))


def test_the_budget_reserves_the_final_evaluations_extra_passes():
    from types import SimpleNamespace

    from vgg_lightning.callbacks import TimeBudget

    budget = TimeBudget(seconds=100.0)
    budget.sanity_s_per_batch = 0.5  # one plain pass over a validation batch

    def reserve(**options):
        module = VGGClassifier(net=dict(arch="vgg11", width=0.125), **options)
        return budget._final_extra_s(SimpleNamespace(lightning_module=module, num_val_batches=[4]))

    assert reserve(tta=dict(flip="final")) == 0.5 * 4 * 1  # the mirror
    assert reserve(tta=dict(flip="final", shift=1)) == 0.5 * 4 * 5  # mirror and two shifted pairs
    assert reserve(tta=dict(flip=True, shift=1)) == 0.0  # every validation pays it, the sanity check included
    assert reserve(tta=dict(flip=False)) == 0.0


@pytest.mark.parametrize("optimizer", ["sgd", "muon", "adamw"])
def test_bn_bias_lr_gives_the_bn_shifts_a_group_of_their_own(optimizer):
    model = VGGClassifier(
        net=dict(arch="vgg11", width=0.125), optim=dict(name=optimizer, schedule="constant", bn_bias_lr=3.2)
    )
    groups = model.configure_optimizers().param_groups
    shifts = [m.bias for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    others = [[id(p) for p in g["params"]] for g in groups[:-1]]
    assert [id(p) for p in groups[-1]["params"]] == [id(p) for p in shifts]
    assert (groups[-1]["lr"], groups[-1]["weight_decay"]) == (3.2, 0.0)
    assert not {id(p) for p in shifts} & {i for ids in others for i in ids}  # moved, not copied
    assert sum(map(len, others)) + len(shifts) == len(list(model.parameters()))  # nothing lost
    plain = VGGClassifier(net=dict(arch="vgg11", width=0.125), optim=dict(name=optimizer, schedule="constant"))
    assert len(plain.configure_optimizers().param_groups) == len(groups) - 1


def test_bn_bias_lr_follows_the_schedule_through_a_fit(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--trainer.max_epochs", "1", "--model.optim.name", "muon", "--model.optim.bn_bias_lr", "0.8"]
    assert main(["fit", *tiny(cifar10_dir, *args)]) == 0
    ckpt = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert groups[-1]["initial_lr"] == 0.8 and groups[1]["initial_lr"] == ckpt["hyper_parameters"]["optim"]["lr"]
    factor = groups[1]["lr"] / groups[1]["initial_lr"]
    assert 0 < factor < 1  # part way down the one-cycle schedule, on which the shifts ride too
    assert groups[-1]["lr"] == pytest.approx(0.8 * factor)


def test_pool_before_bn_moves_each_pooling_up_and_changes_only_bn_statistics():
    torch.manual_seed(0)
    vgg, pooled_first = build_model("vgg11", width=0.25), build_model("vgg11", width=0.25, pool_before_bn=True)
    layers = list(pooled_first.features)
    pools = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 5
    for i in pools:  # conv -> pool -> BN -> ReLU
        assert isinstance(layers[i - 1], torch.nn.Conv2d) and isinstance(layers[i + 1], torch.nn.BatchNorm2d)
        assert isinstance(layers[i + 2], torch.nn.ReLU)
    assert sorted(type(m).__name__ for m in layers) == sorted(type(m).__name__ for m in vgg.features)
    x = torch.randn(8, 3, 32, 32)
    vgg(x)  # running statistics that are not the identity
    for mine, theirs in zip(pooled_first.state_dict().values(), vgg.state_dict().values()):
        mine.copy_(theirs)  # same modules in the same order: same tensors, other keys
    # Evaluated, BN is a positive scale and a shift, which commute with max-pooling and ReLU: the same function.
    assert torch.allclose(pooled_first.eval()(x), vgg.eval()(x), atol=1e-5)
    # Training, BN's statistics come from the pooled maps: a different net.
    assert not torch.allclose(pooled_first.train()(x), vgg.train()(x), atol=1e-3)


def test_pool_before_bn_through_a_fit_and_its_checkpoint(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *tiny(cifar10_dir, "--trainer.max_epochs", "1", "--model.net.pool_before_bn", "true")]) == 0
    model = VGGClassifier.load_from_checkpoint(
        tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True
    )
    layers = list(model.net.features)
    assert model.net_options.pool_before_bn and isinstance(layers[1], torch.nn.MaxPool2d)
    with pytest.raises(ConfigError, match="pool_before_bn"):
        VGGClassifier(net=dict(arch="blog_vgg16", pool_before_bn=True))
