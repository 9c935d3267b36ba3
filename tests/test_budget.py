"""--trainer.max_time as a planned budget: the planner on a fake clock, and one short real run."""

import logging
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from vgg_lightning import schedules
from vgg_lightning.callbacks.budget import TimeBudget, parse_duration, plan_steps, validations
from vgg_lightning.cli import main
from vgg_lightning.data.datamodule import ImageDataModule
from vgg_lightning.module import VGGClassifier
from vgg_lightning.runlog import read_scalars

from .helpers import ImageSides
from .helpers.runs import fit_tiny, tiny


def test_onecycle_shape_is_torchs_onecycle():
    model = torch.nn.Linear(2, 2)
    ours = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters(), lr=0.1), schedules.OneCycle(100, 0.15))
    ref_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt, max_lr=0.1, total_steps=100, pct_start=0.15, cycle_momentum=False
    )
    for _ in range(100):
        assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], rel=1e-9, abs=1e-12)
        ours.optimizer.step(), ours.step(), ref_opt.step(), ref.step()


def test_resized_schedules_end_at_their_final_value():
    for kind, final in (("onecycle", 0.1 / 25 / 1e4), ("cosine", 0.0), ("linear", 0.0)):
        opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        sched = schedules.build(opt, kind, 1000, 0.2)
        for _ in range(30):
            opt.step(), sched.step()
        schedules.resize(sched, 80)  # a plan made at step 30
        for _ in range(49):
            opt.step(), sched.step()
        assert sched.get_last_lr()[0] == pytest.approx(final, abs=1e-12)  # the lr of step 79, the last
        assert schedules.total_steps(sched) == 80


def test_linear_shape():
    shape = schedules.WarmupLinear(100, 0.2)
    assert [shape(s) for s in (0, 19)] == [pytest.approx(1 / 20), 1.0]  # warm-up to the peak in 20 steps
    assert shape(20) == 1.0 and shape(99) == 0.0
    assert shape(59.5) == pytest.approx(0.5)  # halfway down between step 20 and step 99
    assert all(shape(s) > shape(s + 1) for s in range(20, 99))


def test_parse_duration():
    assert parse_duration("00:00:15:00") == 900 and parse_duration({"minutes": 2}) == 120
    assert parse_duration("01:02:03:04") == 86400 + 2 * 3600 + 3 * 60 + 4


def test_plan_counts_every_epoch_end():
    # 100 s left, 1 s a step, 10 steps an epoch, 5 s per epoch end: 60 steps (6 ends) is 90 s; 66 would be 101 s
    assert plan_steps(100, 1.0, 5.0, 10, 0) == 65  # 65 steps + 7 epoch ends = 100 s
    assert plan_steps(100, 1.0, 0.0, 10, 0) == 100
    assert plan_steps(100, 1.0, 5.0, 10, 0, cap=30) == 30  # max_epochs / max_steps stay upper bounds
    assert plan_steps(100, 1.0, 5.0, 10, 8) == 62  # 2 steps left in this epoch: 62 steps end 7 epochs
    assert plan_steps(3, 1.0, 5.0, 10, 0) == 0


def test_plan_counts_validations_only_in_the_epochs_that_validate():
    assert validations(0, 5, 3) == 2  # check_val_every_n_epoch 3: epoch 3's and the last one's (epoch 5)
    assert validations(0, 6, 3) == 2  # epochs 3 and 6: the last one validates anyway
    assert validations(3, 2, 3) == 1 and validations(0, 0, 3) == 0
    assert validations(0, 4, 1) == 4
    # 1 s a step, 10 steps an epoch, 1 s per epoch end, 5 s a validation: 77 steps + 8 ends + 3 validations is
    # 100 s; validating every epoch instead, 60 steps + 6 ends x 6 s = 96 s (61 steps would need a 7th end: 103 s)
    assert plan_steps(100, 1.0, 1.0, 10, 0, validation_s=5.0, validate_every=3) == 77
    assert plan_steps(100, 1.0, 1.0, 10, 0, validation_s=5.0) == 60


class FakeClock(L.Callback):
    """Every training step takes 1 s (on images smaller than 32x32, their share of the pixels) and every validation
    5 s, on a clock the budget reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.now += (batch[0].shape[-1] / 32) ** 2

    def on_validation_end(self, trainer, pl_module) -> None:
        self.now += 5.0


class ValidationSteps(L.Callback):
    """The global steps at which validations ran."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


def validation_steps(trainer) -> list[int]:
    return next(cb for cb in trainer.callbacks if isinstance(cb, ValidationSteps)).steps


def ends_annealed_within(trainer, budget, clock, seconds) -> None:
    assert budget.planned_steps == trainer.global_step
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert schedules.total_steps(sched) == budget.planned_steps
    assert sched.get_last_lr()[0] == pytest.approx(0.05 / 25 / 1e4)
    assert 0.9 * seconds <= clock.now <= seconds


def test_budget_with_gradient_accumulation_plans_optimizer_steps(cifar10_dir, tmp_path):
    # 2 batches (2 s) an optimizer step, 5 optimizer steps an epoch
    trainer, budget, clock = budget_fit(cifar10_dir, tmp_path, 200.0, accumulate_grad_batches=2)
    ends_annealed_within(trainer, budget, clock, 200)
    assert 60 <= budget.planned_steps <= 70  # about (200 - 2 - 5 x ends) / 2 s; not the 130 batches' count


def test_budget_with_no_epoch_bound(cifar10_dir, tmp_path):
    trainer, budget, clock = budget_fit(cifar10_dir, tmp_path, 100.0, max_epochs=-1)  # int(inf) overflowed here
    ends_annealed_within(trainer, budget, clock, 100)


def test_budget_validates_and_saves_the_final_model_in_an_epoch_without_validation(cifar10_dir, tmp_path):
    # max_epochs 3 caps the plan at 30 steps: the run ends in epoch 3, which check_val_every_n_epoch 2 skips
    trainer, budget, clock = budget_fit(cifar10_dir, tmp_path, 200.0, check_val_every_n_epoch=2, max_epochs=3)
    assert budget.planned_steps == trainer.global_step == 30
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.05 / 25 / 1e4)
    assert validation_steps(trainer) == [20, 30]  # epoch 2's, and the final model's though epoch 3 skips it
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 30


def test_budget_counts_mid_epoch_validations_as_validation_not_step_time(cifar10_dir, tmp_path):
    trainer, budget, clock = budget_fit(cifar10_dir, tmp_path, 200.0, val_check_interval=0.5)
    ends_annealed_within(trainer, budget, clock, 200)
    assert max(budget._steps.times) == 1.0  # every step 1 s; the 5 s validations after 5 steps are not in it
    assert validation_steps(trainer)[-1] == trainer.global_step


class ValidationBatchClock(FakeClock):
    """Each validation batch takes 1 s instead, the sanity check's too (the plan's first estimate of a validation)."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.now += 1.0

    def on_validation_end(self, trainer, pl_module) -> None:
        pass


def test_budget_keeps_time_for_the_final_validation_when_epochs_do_not_validate(cifar10_dir, tmp_path, capsys):
    # validation only once, at the end (check_val_every_n_epoch past the last epoch): 3 batches, 3 s; the epoch
    # ends cost nothing, so the plan must set the final validation's time aside from the sanity check's estimate
    clock = ValidationBatchClock()
    trainer, budget, _ = budget_fit(
        cifar10_dir, tmp_path, 200.0, clock=clock, check_val_every_n_epoch=1000, num_sanity_val_steps=2
    )
    assert validation_steps(trainer) == [budget.planned_steps] == [trainer.global_step]
    assert 0.97 * 200 <= clock.now <= 200
    assert "s per validation (every 1000 epochs and the last)" in capsys.readouterr().err


def budget_fit(
    data_dir: Path,
    root: Path,
    seconds: float,
    ckpt_path=None,
    stop_after=None,
    arch="vgg11",
    data_options=None,
    clock=None,
    **trainer_options,
):
    torch.manual_seed(0)
    clock = clock or FakeClock()
    budget = TimeBudget(seconds, started=0.0, clock=clock)  # seconds None: resumed without a budget
    model = VGGClassifier(net=dict(arch=arch, width=0.125), optim=dict(lr=0.05, schedule="onecycle", warmup=0.2))
    data = ImageDataModule(  # 10 steps an epoch
        data_dir=str(data_dir), download=False, val_size=40, batch_size=16, **(data_options or {})
    )
    callbacks = [clock, budget, L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True)]
    if stop_after is not None:
        from .helpers import StopAfterEpoch

        callbacks.append(StopAfterEpoch(stop_after))
    options = {"max_epochs": 100, "num_sanity_val_steps": 0, **trainer_options}
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, ValidationSteps(), ImageSides()],
        default_root_dir=root,
        **options,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, budget, clock


def test_budget_plans_steps_and_schedule_on_a_fake_clock(cifar10_dir, tmp_path):
    trainer, budget, clock = budget_fit(cifar10_dir, tmp_path, 200.0)
    # 200 s less a 2 s reserve, 1 s a step, 5 s an epoch end, 10 steps an epoch: planned when epoch 1 starts,
    # 15 s in (too few steps before to plan); every later re-plan agrees.
    assert budget.planned_steps == trainer.global_step
    assert budget.planned_steps == 10 + plan_steps(200 - 2 - 15, 1.0, 5.0, 10, 0) == 130
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert schedules.total_steps(sched) == budget.planned_steps
    assert sched.get_last_lr()[0] == pytest.approx(0.05 / 25 / 1e4)  # ended annealed
    assert 0.97 * 200 <= clock.now <= 200  # within the budget, final validation included: 130 + 13 x 5 s
    assert trainer.max_epochs == -(-budget.planned_steps // 10)


def test_budget_counts_steps_on_smaller_early_images_by_their_pixels(cifar10_dir, tmp_path):
    # data.early_size 16: the first half of the steps on 16x16 images, which cost a quarter of a 32x32 step here
    options = dict(early_size=16, early_fraction=0.5)
    trainer, budget, clock = budget_fit(cifar10_dir, tmp_path, 200.0, arch="vgg7", data_options=options)
    ends_annealed_within(trainer, budget, clock, 200)
    assert clock.now >= 0.97 * 200
    # 130 steps fit at full size; a quarter of the time for the small half fits 172 (planned 10 steps in, 7.5 s
    # used: 76 small + 86 full steps of 1 s + 17 epoch ends = 190 s of the 190.5 left)
    assert budget.planned_steps == 172
    sides = next(cb for cb in trainer.callbacks if isinstance(cb, ImageSides))
    assert sides.train == [16] * 86 + [32] * 86  # the switch at half of the plan
    assert sides.val == {32}  # evaluation at full size


def test_resume_with_the_same_budget_keeps_the_plan(cifar10_dir, tmp_path, capsys):
    first, budget, _ = budget_fit(cifar10_dir, tmp_path, 200.0, stop_after=4)
    planned = budget.planned_steps
    assert first.global_step == 50 < planned
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert ckpt["callbacks"]["TimeBudget"] == {"seconds": 200.0, "planned_steps": planned}
    second, budget2, _ = budget_fit(cifar10_dir, tmp_path, 200.0, ckpt_path=str(tmp_path / "last.ckpt"))
    assert budget2.planned_steps == planned == second.global_step
    assert schedules.total_steps(second.lr_scheduler_configs[0].scheduler) == planned
    assert f"keeping its plan of {planned:,} steps" in capsys.readouterr().err


def test_resume_without_a_budget_keeps_the_plan(cifar10_dir, tmp_path):
    _, budget, _ = budget_fit(cifar10_dir, tmp_path, 200.0, stop_after=4)
    second, budget2, _ = budget_fit(cifar10_dir, tmp_path, None, ckpt_path=str(tmp_path / "last.ckpt"))
    assert budget2.planned_steps == budget.planned_steps == second.global_step


def test_resume_with_a_new_budget_replans_the_rest_into_it(cifar10_dir, tmp_path, capsys):
    _, budget, _ = budget_fit(cifar10_dir, tmp_path, 200.0, stop_after=4)  # 50 steps done of 130 planned
    second, budget2, clock = budget_fit(cifar10_dir, tmp_path, 50.0, ckpt_path=str(tmp_path / "last.ckpt"))
    assert "re-planning the steps left into the new budget of 50.0 s" in capsys.readouterr().err
    # The new 50 s count from this command's start: far fewer steps than the old plan's 80 left, all of them
    # ending inside the new budget, with the schedule resized to end there annealed.
    assert 50 < budget2.planned_steps == second.global_step < budget.planned_steps
    assert clock.now <= 50
    sched = second.lr_scheduler_configs[0].scheduler
    assert schedules.total_steps(sched) == budget2.planned_steps
    assert sched.get_last_lr()[0] == pytest.approx(0.05 / 25 / 1e4)


def test_resume_of_a_finished_plan_says_nothing_is_left(cifar10_dir, tmp_path, capsys):
    first, budget, _ = budget_fit(cifar10_dir, tmp_path, 200.0)
    capsys.readouterr()
    second, _, _ = budget_fit(cifar10_dir, tmp_path, 400.0, ckpt_path=str(tmp_path / "last.ckpt"))
    assert second.global_step == first.global_step == budget.planned_steps  # no step trained
    assert "nothing left to train" in capsys.readouterr().err


def test_a_real_short_budget_ends_in_time_and_annealed(cifar10_dir, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    args = tiny(
        cifar10_dir, "--trainer.max_time", "00:00:00:20", "--trainer.max_epochs", "1000", "--model.optim.lr", "0.05"
    )
    assert main(["fit", *args], started=started) == 0
    took = time.monotonic() - started
    assert 20 - 4 <= took <= 1.03 * 20, took  # the plan keeps 2 s (RESERVE_MIN_S) back for the run's end
    err = capsys.readouterr().err
    assert "budget 20.0 s: " in err
    # the last word is the budget's, not Lightning's "`max_epochs=N` reached" (N was the plan's)
    assert "the planned budget of 20.0 s ended the run after" in err
    assert "max_epochs" not in caplog.text and "`Trainer.fit` stopped" not in caplog.text
    lr = read_scalars(tmp_path / "lightning_logs" / "version_0")["lr-SGD/pg1"]
    ckpt = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert lr[-1][0] == ckpt["global_step"] - 1  # the last step's learning rate is logged ...
    assert lr[-1][1] == pytest.approx(0.05 / 25 / 1e4, rel=1e-3)  # ... and is the schedule's final value


def test_a_long_run_without_a_budget_says_how_long_it_will_take(cifar10_dir, tmp_path, capsys):
    from vgg_lightning.callbacks import RunForecast

    from .helpers import StopAfterEpoch

    clock = FakeClock()  # 1 s a step, 10 steps an epoch
    model = VGGClassifier(net=dict(arch="vgg11", width=0.125))
    callbacks = [clock, RunForecast(clock=clock), StopAfterEpoch(4)]
    fit_tiny(cifar10_dir, model, callbacks, max_epochs=100, num_sanity_val_steps=0)
    err = capsys.readouterr().err
    assert "expected: about 17 min for 100 epochs (1,000 steps at 1.000 s, 16 img/s)" in err
    assert "`--config configs/cpu.yaml` trains the best VGG that fits in 15 minutes" in err
    assert err.count("expected:") == 1


class WarmUpClock(FakeClock):
    """As FakeClock, and validation batches take 0.1 s, except the sanity check's first: 60 s of warm-up (on a GPU:
    cudnn autotuning and allocations; an H200 showed seconds against milliseconds)."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.now += 60.0 if trainer.sanity_checking and batch_idx == 0 else 0.1


def test_the_forecast_leaves_the_warm_up_out_of_validation_time(cifar10_dir, tmp_path, capsys):
    from vgg_lightning.callbacks import RunForecast

    from .helpers import StopAfterEpoch

    clock = WarmUpClock()
    forecast = RunForecast(clock=clock)
    model = VGGClassifier(net=dict(arch="vgg11", width=0.125))
    fit_tiny(cifar10_dir, model, [clock, forecast, StopAfterEpoch(4)], max_epochs=100, num_sanity_val_steps=2)
    assert forecast.sanity_s_per_batch == pytest.approx(0.1)
    # Forecast in epoch 4 (after 30 timed steps), 115 s in: 966 steps left at 1 s, 97 validations of 3 batches at
    # 0.1 s: 1,110 s, 19 min. With the warm-up averaged in (30 s a batch) it said about 2 h 45 min.
    assert "expected: about 19 min for 100 epochs" in capsys.readouterr().err
