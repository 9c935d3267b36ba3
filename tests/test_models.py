import pytest
import torch
from torch import nn

from vgg_lightning.models import ARCHS, CONFIGS, BlogVGG16, build_model, count_parameters


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_output_shape(arch, num_classes):
    model = build_model(arch, num_classes=num_classes).eval()
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, num_classes)


def expected_vgg_params(cfg, batch_norm, num_classes=10, width=1.0):
    """Parameter count from the config list by hand: 3x3 convs (+bias without BN), BN affine, one linear head."""
    total, c_in = 0, 3
    for v in cfg:
        if v == "M":
            continue
        c_out = round(v * width)
        total += 9 * c_in * c_out + (2 * c_out if batch_norm else c_out)
        c_in = c_out
    return total + c_in * num_classes + num_classes


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("batch_norm", [True, False])
def test_vgg_parameter_counts(arch, batch_norm):
    model = build_model(arch, batch_norm=batch_norm)
    assert count_parameters(model) == expected_vgg_params(CONFIGS[arch], batch_norm)


def test_known_counts():
    # VGG-16-BN with a linear CIFAR head (pytorch-cifar's VGG16 has 4,224 more: conv biases before BN).
    assert count_parameters(build_model("vgg16")) == 14_724_042
    # The article's network, as printed.
    assert count_parameters(build_model("blog_vgg16")) == 14_777_162


def test_width_scales_channels():
    half = build_model("vgg16", width=0.5)
    convs = [m for m in half.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [v // 2 for v in CONFIGS["vgg16"] if v != "M"]
    assert count_parameters(half) == expected_vgg_params(CONFIGS["vgg16"], True, width=0.5)


def test_stage_widths_scale_each_stage_on_top_of_width():
    model = build_model("vgg13", width=0.5, stage_widths=[0.5, 1, 1, 1, 0.5])
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [16, 16, 64, 64, 128, 128, 256, 256, 128, 128]
    assert model.classifier[-1].in_features == 128
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="5 positive factors"):
        build_model("vgg13", stage_widths=[1, 1, 1, 1])


def test_vgg7_has_four_stages_the_last_unpooled():
    model = build_model("vgg7", width=0.375, pool_before_bn=True)
    layers = list(model.features)
    convs = [m.out_channels for m in layers if isinstance(m, nn.Conv2d)]
    assert convs == [24, 32, 32, 96, 96, 192, 192]
    # each pool right after the convolution that raises the channels; the 4x4 maps of the last go to the head
    after_pool = [layers[i - 1].out_channels for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    assert after_pool == [32, 96, 192]
    assert model.features(torch.zeros(2, 3, 32, 32)).shape == (2, 192, 4, 4)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    halved = build_model("vgg7", width=0.375, stage_widths=[1, 1, 1, 0.5])
    assert [m.out_channels for m in halved.modules() if isinstance(m, nn.Conv2d)] == [24, 32, 32, 96, 96, 192, 96]
    with pytest.raises(ValueError, match="4 positive factors"):
        build_model("vgg7", stage_widths=[1, 1, 1, 1, 0.5])


def test_gelu_replaces_every_conv_relu_and_keeps_the_parameters():
    relu, gelu = build_model("vgg11", width=0.25), build_model("vgg11", width=0.25, activation="gelu")
    kinds = [type(m) for m in gelu.features]
    assert kinds == [nn.GELU if t is nn.ReLU else t for t in (type(m) for m in relu.features)]
    assert nn.ReLU not in kinds and kinds.count(nn.GELU) == 8
    assert count_parameters(gelu) == count_parameters(relu)
    gelu.load_state_dict(relu.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(gelu.eval()(x), relu.eval()(x))  # the activation is used, not just listed


def test_every_conv_is_followed_by_bn_and_relu():
    layers = list(build_model("vgg16").features)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.BatchNorm2d) and isinstance(layers[i + 2], nn.ReLU)
            assert layer.kernel_size == (3, 3) and layer.padding == (1, 1)


def test_head_options():
    model = build_model("vgg11", head_hidden=256, dropout=0.5)
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 256), (256, 256), (256, 10)]
    assert sum(isinstance(m, nn.Dropout) for m in model.classifier) == 2


def test_head_pool_max_takes_each_channels_maximum_of_vgg7s_4x4_map():
    from vgg_lightning.models import NetOptions

    avg = build_model("vgg7", width=0.125)
    top = build_model("vgg7", width=0.125, head_pool="max")
    top.load_state_dict(avg.state_dict())  # no parameters of its own: checkpoints load either way
    x = torch.randn(3, 3, 32, 32)
    maps = top.eval().features(x)
    assert torch.allclose(top(x), top.classifier(maps.amax(dim=(2, 3))))
    assert not torch.allclose(top(x), avg.eval()(x))
    with pytest.raises(ValueError, match="model.net.head_pool shapes the VGG configs"):
        NetOptions(arch="blog_vgg16", head_pool="max").check()


def test_seed_net_layout():
    net = BlogVGG16()
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    one_by_one = [i + 1 for i, c in enumerate(convs) if c.kernel_size == (1, 1)]
    assert one_by_one == [7, 10, 13] and all(convs[i - 1].padding == (1, 1) for i in one_by_one)
    # No ReLU inside a stack: every ReLU comes right after a BatchNorm that follows a pool.
    layers = list(net.features)
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.ReLU):
            assert isinstance(layers[i - 1], nn.BatchNorm2d) and isinstance(layers[i - 2], nn.MaxPool2d)
    fcs = [m for m in net.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in fcs] == [(8192, 1024), (1024, 1024), (1024, 10)]


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("vgg15")


def test_kaiming_init_is_applied():
    torch.manual_seed(0)
    conv = next(m for m in build_model("vgg11").modules() if isinstance(m, nn.Conv2d))
    fan_out = conv.out_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_out) ** 0.5) < 0.02
