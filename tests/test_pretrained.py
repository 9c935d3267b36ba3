"""A pretrained start: torchvision VGGs of random weights saved here stand in for the ImageNet files (which cannot
be downloaded on every machine), so every check is about the loading, not about ImageNet."""

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from vgg_lightning import pretrained
from vgg_lightning.cli import main
from vgg_lightning.errors import ConfigError, DataError
from vgg_lightning.models import NetOptions
from vgg_lightning.module import VGGClassifier

from .helpers.runs import tiny


@pytest.fixture(scope="module")
def vgg11_bn_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    theirs = torchvision.models.vgg11_bn(weights=None)
    for m in theirs.modules():  # non-trivial statistics and biases, so folding and copying are really checked
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.normal_()
        if isinstance(m, torch.nn.Conv2d):
            m.bias.data.normal_()
    path = tmp_path_factory.mktemp("weights") / "vgg11_bn-local.pth"
    torch.save(theirs.state_dict(), path)
    return path, theirs.eval()


def test_the_features_compute_what_torchvisions_do(vgg11_bn_file):
    path, theirs = vgg11_bn_file
    net = NetOptions(arch="vgg11", width=1.0, pretrained=str(path)).build(10).eval()
    copied = pretrained.load_into(net.features, pretrained.read(str(path), "vgg11", True), str(path))
    assert copied == 8 + 8 * 4  # 8 convs (weight; their bias folded into BN) and 8 BatchNorms (4 tensors each)
    assert torch.equal(net.features[0].weight, theirs.features[0].weight)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.features(x), theirs.features(x), atol=1e-4, rtol=1e-4)
    assert net.classifier[-1].out_features == 10  # the head is ours, for the data's classes


def test_options_a_pretrained_start_cannot_take_are_one_message():
    with pytest.raises(ValueError, match="leave model.net.width unset"):
        NetOptions(arch="vgg16", width=0.5, pretrained="imagenet").check()
    with pytest.raises(ValueError, match="not blog_vgg16"):
        NetOptions(arch="blog_vgg16", pretrained="imagenet").check()
    with pytest.raises(ConfigError, match="model.net.pretrained"):
        VGGClassifier(net={"arch": "vgg11", "whiten": "frozen", "pretrained": "imagenet"})


def test_weights_of_another_arch_or_no_weights_are_one_message(vgg11_bn_file, tmp_path):
    path, _ = vgg11_bn_file
    net = NetOptions(arch="vgg13", width=1.0).build(10)
    with pytest.raises(DataError, match=r"does not fit this net: features\.3\.weight"):
        pretrained.load_into(net.features, pretrained.read(str(path), "vgg13", True), str(path))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(DataError, match="is not a PyTorch weights file"):
        pretrained.read(str(junk), "vgg11", True)
    with pytest.raises(DataError, match="no such file"):
        pretrained.read(str(tmp_path / "missing.pth"), "vgg11", True)


def test_a_failed_download_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DataError) as e:
        pretrained.read("imagenet", "vgg16", True)
    url, path = pretrained.imagenet_file("vgg16", True)
    assert url == "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
    assert url in str(e.value) and str(tmp_path / "hub" / "checkpoints" / "vgg16_bn-6c64b313.pth") in str(e.value)
    assert "--model.net.pretrained PATH" in str(e.value) and not path.exists()


def test_fit_from_a_weights_file_then_test_and_resume_without_it(
    vgg11_bn_file, cifar10_dir, tmp_path, monkeypatch, capsys
):
    path, theirs = vgg11_bn_file
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "weights.pth"
    local.write_bytes(path.read_bytes())
    args = tiny(
        cifar10_dir,
        "--model.net.width",
        "1",
        "--model.net.pretrained",
        str(local),
        "--model.optim.schedule",
        "constant",
    )
    assert main(["fit", *args, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]) == 0
    err = capsys.readouterr().err
    assert "pretrained: vgg11_bn's convolution stacks from" in err and "ImageNet's mean and std" in err
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuple(ckpt["datamodule_hyper_parameters"]["mean"]) == pretrained.IMAGENET_MEAN
    assert tuple(ckpt["datamodule_hyper_parameters"]["std"]) == pretrained.IMAGENET_STD
    model = VGGClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    conv0 = model.net.features[0].weight
    similarity = torch.cosine_similarity(conv0.flatten(), theirs.features[0].weight.flatten(), dim=0)
    assert similarity > 0.9  # started there, two steps away (an independent random start: about 0)
    local.unlink()  # evaluation and resuming take every weight from the checkpoint
    assert main(["test", *tiny(cifar10_dir), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]) == 0
    from vgg_lightning.export import export

    assert export(str(run / "checkpoints" / "last.ckpt"), format="torchscript", output=str(tmp_path / "m.pt")).is_file()
    assert (
        main(["fit", *args, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", "--ckpt_path", "last"]) == 0
    )
    name, p = model.classify(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert name in model.class_names() and 0 <= p <= 1


@pytest.mark.parametrize("name", ["sgd", "muon"])
def test_the_convolution_stacks_learn_at_features_lr_factor_times_the_rate(name):
    from vgg_lightning.optim import OptimOptions

    net = NetOptions(arch="vgg11", width=0.125).build(10)
    opt = OptimOptions(name=name, lr=0.2, muon_lr=0.02, features_lr_factor=0.1).build(net, "cpu")
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert len(rate) == len(list(net.parameters()))  # every parameter in exactly one group
    assert rate[id(net.classifier[-1].weight)] == 0.2
    assert rate[id(net.features[0].weight)] == pytest.approx(0.02 * 0.1 if name == "muon" else 0.2 * 0.1)
    assert rate[id(net.features[1].bias)] == pytest.approx(0.2 * 0.1)  # BatchNorm in the stacks
    plain = OptimOptions(name=name, lr=0.2, muon_lr=0.02).build(net, "cpu")
    assert len(plain.param_groups) < len(opt.param_groups)  # factor 1: the groups as before


def test_features_lr_factor_0_trains_the_head_alone_on_pretrained_stacks(
    vgg11_bn_file, cifar10_dir, tmp_path, monkeypatch
):
    path, theirs = vgg11_bn_file
    monkeypatch.chdir(tmp_path)
    args = tiny(cifar10_dir, "--model.net.width", "1", "--model.net.pretrained", str(path))
    args += ["--model.optim.name", "muon", "--model.optim.features_lr_factor", "0", "--model.optim.warmup", "0"]
    assert main(["fit", *args, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1"]) == 0
    model = VGGClassifier.load_from_checkpoint(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert torch.equal(model.net.features[0].weight, theirs.features[0].weight)  # not even renormalized by Muon
    assert torch.equal(model.net.features[1].weight, theirs.features[1].weight)
    head = NetOptions(arch="vgg11", width=1.0).build(10).classifier[-1]
    assert model.net.classifier[-1].weight.shape == head.weight.shape
    assert model.hparams.optim["features_lr_factor"] == 0
