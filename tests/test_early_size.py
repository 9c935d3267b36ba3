"""data.early_size: the first share of the steps on smaller images, then full size; evaluation at full size."""

import pytest

from vgg_lightning.callbacks.budget import plan_steps
from vgg_lightning.cli import main
from vgg_lightning.data.early_size import EarlySize
from vgg_lightning.module import VGGClassifier

from .helpers import ImageSides
from .helpers.runs import fit_tiny, tiny


def test_the_switch_is_a_share_of_the_plan_and_stays_once_made():
    early = EarlySize(24, 0.5, 32)
    assert early.cost == pytest.approx(0.5625)
    assert [early.size_at(s, 100) for s in (0, 49)] == [24, 24]
    # a re-plan before the switch moves it with the plan
    assert early.size_at(50, 120) == 24 and early.switched_at is None
    assert early.size_at(60, 120) == 32 and early.switched_at == 60
    # once a step trained at full size, a longer plan does not send the run back to small images
    assert early.size_at(61, 400) == 32 and early.switch_step(400) == 60
    restored = EarlySize(24, 0.5, 32)
    restored.load_state_dict(early.state_dict())
    assert restored.size_at(61, 400) == 32


def test_work_counts_small_steps_by_their_pixels():
    early = EarlySize(16, 0.25, 32)  # a 16x16 step: a quarter of a 32x32 one
    assert early.work(0, 100, 100) == pytest.approx(25 * 0.25 + 75)
    assert early.work(20, 10, 100) == pytest.approx(5 * 0.25 + 5)  # steps 20-29: the switch at 25
    assert early.work(30, 10, 100) == 10
    # the budget plans with it: at 1 s a full step, 100 s take 100 full steps, or 123 of this run's (a quarter of
    # them at a quarter of the cost: 0.8125 s a step on average), more than 100 s / 1 s
    assert plan_steps(100, 1.0, 0.0, 1000, 0) == 100
    assert plan_steps(100, 1.0, 0.0, 1000, 0, work=lambda n: early.work(0, n, n)) == 123


@pytest.mark.parametrize(
    ("size", "fraction", "wrong"),
    [(32, 0.5, "between 0 and the image size 32"), (24, 0.0, "0 < f < 1"), (24, 1.0, "0 < f < 1")],
)
def test_early_size_options_are_checked(cifar10_dir, capsys, size, fraction, wrong):
    args = ["--data.early_size", str(size), "--data.early_fraction", str(fraction)]
    assert main(["fit", *tiny(cifar10_dir, "--trainer.max_steps", "2", *args)]) == 2
    err = capsys.readouterr().err
    assert "data.early_size" in err and wrong in err and "Traceback" not in err


def test_a_net_too_deep_for_the_early_size_is_refused_before_training(cifar10_dir, capsys):
    # VGG-11's five poolings need 32x32 images; vgg7's three take 16x16
    assert main(["fit", *tiny(cifar10_dir, "--trainer.max_steps", "2", "--data.early_size", "16")]) == 2
    err = capsys.readouterr().err
    assert "data.early_size 16: vgg11 cannot take 16x16 images (its 5 2x2 poolings need 32 or more)" in err
    assert "--data.early_size null" in err and "Traceback" not in err
    model = VGGClassifier(net=dict(arch="vgg7", width=0.125))
    model.check_input_size(8, "data.early_size")  # 1x1 after three poolings: fine
    assert model.net.training  # left as it was


@pytest.mark.parametrize("crop", ["window", "downscale"])
def test_fit_trains_the_first_share_small_and_evaluates_at_full_size(cifar10_dir, crop):
    sides = ImageSides()
    model = VGGClassifier(net=dict(arch="vgg7", width=0.125), optim=dict(lr=0.05, schedule="onecycle"))
    trainer = fit_tiny(
        cifar10_dir,
        model,
        callbacks=[sides],
        max_epochs=2,
        data_options=dict(early_size=16, early_fraction=0.3, early_crop=crop),
    )
    assert trainer.global_step == 20
    assert sides.train == [16] * 6 + [32] * 14  # 30% of the 20 steps the schedule is sized for
    assert sides.val == {32}
