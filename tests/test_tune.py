"""``tune``: trials at equal time on tiny data with budgets of seconds."""

import re
import signal
import statistics
import time

import optuna
import pytest
import yaml

from vgg_lightning.tune import BudgetSharePruning, in_one_process, main

from .helpers.runs import run_cli, run_cli_to_end

SPACE = """\
model.optim.lr: {low: 0.01, high: 0.2, log: true}
data.crop_padding: {choices: [0, 2]}
model.net.arch: vgg11
model.net.width: 0.125
"""


def tune_args(data_dir, tmp_path, *extra):
    (tmp_path / "space.yaml").write_text(SPACE)
    return [
        "--data.data_dir", str(data_dir), "--data.download", "false", "--data.val_size", "40",
        "--data.batch_size", "16", "--tune.trial_time", "00:00:00:06", "--tune.space", str(tmp_path / "space.yaml"),
        "--tune.out", str(tmp_path / "out"), "--tune.sampler_seed", "0", *extra,
    ]  # fmt: skip


def finished(tmp_path, study="tune"):
    storage = f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def test_tune_runs_trials_writes_best_yaml_and_goes_on_with_the_study(cifar10_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    recipe = ["--model.optim.lr", "0.05", "--data.crop_padding", "2"]
    assert main(tune_args(cifar10_dir, tmp_path, "--tune.trials", "2", *recipe)) == 0
    out = capfd.readouterr().out
    assert out.count("best val acc,") == 2 and "| 2/2 trials" in out  # one line per trial, with the best so far
    # The recipe as given is the first trial, marked as such; the second is the sampler's.
    assert "first trial: the recipe as given (model.optim.lr=0.05, data.crop_padding=2)" in out
    assert "trial 0 (the recipe as given):" in out and "(* the recipe as given)" in out
    first, second = finished(tmp_path)
    assert first.params == {"model.optim.lr": 0.05, "data.crop_padding": 2} and first.user_attrs["recipe"]
    assert second.params != first.params and "recipe" not in second.user_attrs
    assert "trial  best val acc  epochs" in out  # the table
    best = tmp_path / "out" / "best.yaml"
    r = run_cli_to_end("fit", "--config", str(best), "--print_config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "max_time: 00:00:00:06" in r.stdout and "default_root_dir: null" in r.stdout
    assert "precision: null" in r.stdout  # chosen per machine by fit, not pinned to the tuning machine's choice
    runs = list((tmp_path / "out" / "lightning_logs").glob("version_*/config.yaml"))
    assert len(runs) == 2  # every trial an ordinary run folder
    # The same command with more trials goes on with the study: one more trial, not three.
    assert main(tune_args(cifar10_dir, tmp_path, "--tune.trials", "3", "--tune.seeds", "2", *recipe)) == 0
    out = capfd.readouterr().out
    assert "2 trials finished before; 1 to go" in out and "first trial" not in out  # the recipe is not run again
    # The best recipe re-run with seeds 1 and 2: each reported, then their mean +- std.
    accs = [float(re.search(rf"seed {s}: ([0-9.]+)% best val acc", out).group(1)) for s in (1, 2)]
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    assert f"best recipe over 2 seeds: {mean:.2f} +- {std:.2f}%" in out
    configs = sorted((tmp_path / "out" / "seeds" / "lightning_logs").glob("version_*/config.yaml"))
    seeds = [yaml.safe_load(c.read_text()) for c in configs]
    assert [c["seed_everything"] for c in seeds] == [1, 2]
    assert all(c["trainer"]["enable_progress_bar"] is False for c in seeds)  # as the trials: no bar in a log file
    assert [t.state.name for t in finished(tmp_path)] == ["COMPLETE"] * 3
    assert sum(bool(t.user_attrs.get("recipe")) for t in finished(tmp_path)) == 1


def test_a_recipe_outside_the_space_is_named_and_not_a_trial(cifar10_dir, tmp_path, capfd):
    # The space's crop paddings are 0 and 2; the recipe's 4 cannot be a trial of it.
    assert main(tune_args(cifar10_dir, tmp_path, "--tune.trials", "1", "--data.crop_padding", "4")) == 0
    out = capfd.readouterr().out
    assert "the recipe's own data.crop_padding=4 lies outside the search space: it is not a trial" in out
    assert [t.params["data.crop_padding"] in (0, 2) for t in finished(tmp_path)] == [True]


def test_options_fit_does_not_take_are_one_message_before_any_trial(cifar10_dir, tmp_path, capfd):
    assert main(tune_args(cifar10_dir, tmp_path, "--tune.trials", "1", "--model.lrr", "0.1")) == 2
    err = capfd.readouterr().err
    assert "tune: fit does not take these options: error: unrecognized arguments: --model.lrr 0.1" in err
    assert "Traceback" not in err and not list((tmp_path / "out").glob("trial_*.log"))


def test_trials_of_a_recipe_for_several_processes_run_as_one_with_its_images_a_step(tmp_path):
    """Lightning would start the second DDP process by running the whole tune again. A recipe whose fp32 variant
    asks for 2 processes x 4 images (as cpu_fp32.yaml does on a CPU without bf16; 32-true asked for here, so it
    applies on any CPU) is tuned as 1 x 8; devices typed by hand the same way."""
    (tmp_path / "recipe.yaml").write_text("cpu_fp32_config: variant.yaml\ndata:\n  batch_size: 16\n")
    (tmp_path / "variant.yaml").write_text("trainer:\n  devices: 2\ndata:\n  batch_size: 4\n")
    recipe = ["--config", str(tmp_path / "recipe.yaml"), "--trainer.accelerator", "cpu", "--trainer.precision", "32"]
    args, note = in_one_process(recipe)
    assert args[:4] == ["--config", str(tmp_path / "recipe.yaml"), "--config", str(tmp_path / "variant.yaml")]
    assert args[-3:] == ["--trainer.devices=1", "--trainer.num_nodes=1", "--data.batch_size=8"]
    assert note == (
        "tune: each trial runs in this process, on one device (the recipe asks for devices 2)"
        " with --data.batch_size 8, the recipe's images a step"
    )
    assert in_one_process(["--trainer.devices", "3", "--data.batch_size", "16"])[0][-1] == "--data.batch_size=48"
    assert in_one_process(["--data.batch_size", "16"]) == (["--data.batch_size", "16"], "")


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("model.learning_rate: {low: 0.1, high: 0.2}", "tune.space key 'model.learning_rate' is no option of fit"),
        (
            "model.optim.lr: {low: 0.2, high: 0.1}",
            "tune.space key 'model.optim.lr': low and high must be numbers with low < high",
        ),
        (
            "model.optim.lr: {low: 0, high: 0.1, log: true}",
            "tune.space key 'model.optim.lr': a log range needs low > 0",
        ),
        ("data.flip: {choices: []}", "tune.space key 'data.flip': choices must be a non-empty list"),
    ],
)
def test_a_bad_space_is_one_message(space, message, cifar10_dir, tmp_path, capfd):
    args = tune_args(cifar10_dir, tmp_path, "--tune.trials", "1")
    (tmp_path / "space.yaml").write_text(space)  # after tune_args wrote the good one
    args[args.index("--tune.space") + 1] = str(tmp_path / "space.yaml")
    assert main(args) == 2
    err = capfd.readouterr().err
    assert message in err and "Traceback" not in err


class FakeBudget:
    def __init__(self) -> None:
        from vgg_lightning.callbacks.budget import TimeBudget

        self.budget = TimeBudget(100.0, started=0.0, clock=lambda: self.now)
        self.now = 0.0


def test_a_trial_behind_at_the_same_share_of_its_budget_is_pruned():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(1, n_warmup_steps=30))
    done = study.ask()
    for milestone in range(10, 100, 10):
        done.report(0.8, milestone)
    study.tell(done, 0.8)
    fake = FakeBudget()

    class Trainer:
        sanity_checking, should_stop = False, False
        callbacks = [fake.budget]

        class state:
            fn = "fit"

    class Module:
        best_val_acc = 0.2

    pruning = BudgetSharePruning(study.ask())
    fake.now = 25.0  # 25% of the budget: reported at 10 and 20, too early to prune
    pruning.on_validation_end(Trainer, Module)
    assert pruning.reported == {10, 20} and pruning.pruned_at is None and not Trainer.should_stop
    fake.now = 41.0  # past 30% and 40%: behind the finished trial's 0.8 at the same shares
    pruning.on_validation_end(Trainer, Module)
    assert pruning.pruned_at == 30 and Trainer.should_stop


def test_two_processes_share_one_study(cifar10_dir, tmp_path):
    args = ["tune", *tune_args(cifar10_dir, tmp_path, "--tune.trials", "2")]
    procs = [run_cli(args, tmp_path), run_cli(args, tmp_path)]  # started together on a new database
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    trials = finished(tmp_path)
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)  # no trial run twice
    assert 2 <= sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) <= 3  # the study's 2, one overlap at most


def test_a_killed_trial_is_marked_failed_and_the_study_goes_on(cifar10_dir, tmp_path):
    args = ["tune", *tune_args(cifar10_dir, tmp_path, "--tune.trials", "1", "--tune.heartbeat_s", "1")]
    killed = run_cli(args, tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if any(t.state.name == "RUNNING" for t in finished(tmp_path)):
                break
        except Exception:  # the database or the study is not there yet
            pass
        time.sleep(0.2)
    time.sleep(1.0)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    time.sleep(2.5)  # past the heartbeat's grace (2 x 1 s)
    again = run_cli(args, tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert [t.state.name for t in finished(tmp_path)] == ["FAIL", "COMPLETE"]  # the killed one is not a result
