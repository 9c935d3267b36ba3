"""Every option a recipe can turn on, on two CPU processes (gloo): the run ends, on both ranks at the same step
with the same weights. A technique that breaks DDP (an unused parameter, a per-rank decision) fails here."""

import pytest

from .helpers.runs import ddp_args, finish, ranks, run_cli

OPTION_SETS = {
    # every model and data option of cpu.yaml, fast.yaml and default.yaml, the rest of the speed-run ones, Lookahead
    "options_and_lookahead": [
        "--model.optim.name", "muon", "--model.optim.muon_momentum", "0.6", "--model.optim.bn_bias_lr", "0.4",
        "--model.net.whiten", "frozen", "--model.net.dirac", "true", "--model.net.pool_before_bn", "true",
        "--model.net.stage_widths", "[1, 1, 1, 1, 0.5]", "--model.net.activation", "gelu",
        "--model.net.bn_scale", "false",
        "--model.label_smoothing", "0.1", "--model.tta.flip", "final", "--model.tta.shift", "2",
        "--model.compile", "false", "--model.optim.schedule", "linear", "--model.optim.warmup", "0.1",
        "--data.flip", "alternate", "--data.cutout", "4", "--data.padding_mode", "reflect",
        "--trainer.callbacks+=vgg_lightning.callbacks.Lookahead", "--trainer.callbacks.decay", "0.9",
        "--trainer.callbacks.every", "2",
    ],
    # an EMA of the weights: Lightning's callback, with the recipe's own options
    "ema": [
        "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay", "0.9",
        "--model.optim.name", "muon", "--model.net.whiten", "frozen", "--model.tta.flip", "final",
    ],
}  # fmt: skip


@pytest.mark.parametrize("options", OPTION_SETS, ids=list(OPTION_SETS))
def test_recipe_options_under_two_process_ddp(options, cifar10_dir, tmp_path):
    args = [
        "fit",
        *ddp_args(cifar10_dir, "--trainer.max_epochs", "2"),
        *OPTION_SETS[options],
        "--trainer.callbacks+=tests.helpers.RecordRank",
    ]
    finish(run_cli(args, tmp_path), timeout=300)
    seen = ranks(tmp_path)
    assert seen[0]["global_step"] == seen[1]["global_step"] == 10  # 160 images, 2 x 16 a step, 2 epochs
    assert seen[0]["weights_sum"] == seen[1]["weights_sum"]
    assert seen[0]["val_acc"] == seen[1]["val_acc"] and len(seen[0]["val_acc"]) == 2
    if options == "options_and_lookahead":
        # Lookahead ends on its slow copy on both ranks; BN statistics: DDP gives every forward rank 0's buffers,
        # so rank 0's whole slow copy is the model that is evaluated and saved.
        assert seen[0]["params_on_slow_copy"] and seen[1]["params_on_slow_copy"] and seen[0]["on_slow_copy"]
