"""``python -m vgg_lightning tune``: the best recipe for your data and machine, every candidate given the same time.

Every trial is an ordinary ``fit`` with the same planned budget (``--trainer.max_time`` = ``--tune.trial_time``), so
every candidate ends annealed and is compared at equal time, not at equal epochs: a wider net gets fewer epochs,
and that counts against it. Each trial is a run folder (TensorBoard curves, checkpoints, ``config.yaml``), so
TensorBoard's HPARAMS tab compares them. The search is Optuna's (TPE sampler), its study kept in a database: the
same command run again goes on with the study, and several ``tune`` processes, on one machine or several, can
share one study through ``--tune.storage``. Trials clearly behind are pruned by comparing best val accuracy at the
same share of the budget (not the same epoch). At the end: a table of the trials, ``best.yaml`` (the best trial's
full config, for ``fit --config``) and, with ``--tune.seeds N``, the best recipe re-run with N seeds (mean +- std).

    python -m vgg_lightning tune --config configs/cpu.yaml --data.dataset folder --data.data_dir photos/ \\
        --tune.trial_time 00:00:05:00 --tune.trials 20
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning as L
import yaml
from typing_extensions import override

from vgg_lightning.callbacks.budget import TimeBudget, parse_duration
from vgg_lightning.clock import format_duration
from vgg_lightning.errors import ConfigError, DataError, report
from vgg_lightning.messages import log

# What a search covers unless --tune.space says otherwise: what mattered in cpu.yaml's hand search.
DEFAULT_SPACE: dict[str, Any] = {
    "model.net.arch": {"choices": ["vgg11", "vgg13", "vgg16"]},
    "model.net.width": {"choices": [0.25, 0.5, 0.75, 1.0]},
    "data.batch_size": {"choices": [64, 128, 256]},
    "model.optim.lr": {"low": 0.02, "high": 0.4, "log": True},
    "model.label_smoothing": {"low": 0.0, "high": 0.2},
    "model.optim.weight_decay": {"low": 1.0e-4, "high": 1.0e-3, "log": True},
    "data.crop_padding": {"choices": [0, 2, 4]},
    "data.flip": {"choices": [True, "alternate"]},
}
# Pruning compares trials at these shares of their budget (percent): the same points for every trial.
MILESTONES = tuple(range(10, 100, 10))
# Every fit tune runs (trials and seed re-runs) writes to a log file, not a terminal; best.yaml drops these again.
LOG_FILE_RUN = ("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")


@dataclass
class TuneOptions:
    """Options of ``tune`` (``--tune.NAME``); every other option is passed to each trial's ``fit``.

    Args:
        trial_time: each trial's planned budget, ``DD:HH:MM:SS``.
        trials: trials in the study in all (a resumed study counts the ones it has); stop earlier at total_time.
        total_time: stop starting trials when the next one would end after this, ``DD:HH:MM:SS``.
        space: a YAML file of the search space: ``section.option`` keys with ``{choices: [...]}``, ``{low: L, high:
            H}`` (plus ``log: true``, ``step: S``) or a fixed value; default: architecture, width, batch size, peak lr,
            label smoothing, weight decay, crop padding and flip mode.
        out: folder for the study database (unless ``storage`` is given), the trials' run folders, their logs and
            ``best.yaml``.
        storage: a database URL Optuna takes: ``sqlite:///path/study.db`` for processes on one machine, a
            PostgreSQL or MySQL URL (``postgresql://user:pass@host/db``) for several machines; default: SQLite in out.
        study: the study's name in the database.
        prune: stop trials clearly behind (below the median of earlier trials at the same share of the budget).
        prune_after: share of the budget before which no trial is pruned.
        startup_trials: finished trials needed before any pruning.
        seeds: re-run the best recipe with this many seeds at the end and report mean +- std (0: no re-runs).
        start_with_recipe: a new study's first trial is the recipe as given (its own values of the searched
            options), so the search starts from it and reports whether anything beat it at this budget.
        sampler_seed: seed of the search's sampler (a repeatable sequence of candidates).
        heartbeat_s: seconds between a running trial's heartbeats; a trial silent for twice that (its process was
            killed) is marked failed and not counted.
    """

    trial_time: str
    trials: int = 20
    total_time: Optional[str] = None
    space: Optional[str] = None
    out: str = "lightning_logs/tune"
    storage: Optional[str] = None
    study: str = "tune"
    prune: bool = True
    prune_after: float = 0.3
    startup_trials: int = 3
    seeds: int = 0
    start_with_recipe: bool = True
    sampler_seed: Optional[int] = None
    heartbeat_s: int = 60


# -- the search space ----------------------------------------------------------------------------------------------
def _known_options() -> dict[str, set[str]]:
    import inspect

    from vgg_lightning.data.datamodule import ImageDataModule
    from vgg_lightning.module import VGGClassifier

    def params(obj: Any) -> set[str]:
        names = set()
        for name, p in inspect.signature(obj).parameters.items():
            if name not in ("self", "args", "kwargs"):
                names.add(name)
                if is_dataclass(p.default):  # an option group: model.net.arch, model.optim.lr, ...
                    names |= {f"{name}.{f.name}" for f in fields(p.default)}
        return names

    return {
        "model": params(VGGClassifier.__init__),
        "data": params(ImageDataModule.__init__),
        "trainer": params(L.Trainer),
    }


def load_space(path: Optional[str]) -> dict[str, Any]:
    """The search space, checked: ConfigError naming the first bad key."""
    if path is None:
        return dict(DEFAULT_SPACE)
    try:
        space = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"tune.space '{path}' cannot be read: {e}") from e
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"tune.space '{path}' must map options (e.g. model.optim.lr) to ranges, choices or values")
    known = _known_options()
    for key, spec in space.items():
        section, _, name = str(key).partition(".")
        if name not in known.get(section, set()):
            raise ConfigError(f"tune.space key '{key}' is no option of fit (use model.*, data.* or trainer.* names)")
        if isinstance(spec, dict):
            if "choices" in spec:
                if not isinstance(spec["choices"], list) or not spec["choices"]:
                    raise ConfigError(f"tune.space key '{key}': choices must be a non-empty list")
            elif {"low", "high"} <= set(spec):
                low, high = spec["low"], spec["high"]
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                    raise ConfigError(f"tune.space key '{key}': low and high must be numbers with low < high")
                if spec.get("log") and low <= 0:
                    raise ConfigError(f"tune.space key '{key}': a log range needs low > 0")
                if set(spec) - {"low", "high", "log", "step"}:
                    raise ConfigError(f"tune.space key '{key}': a range takes low, high, log and step only")
            else:
                raise ConfigError(f"tune.space key '{key}': give choices: [...], or low: and high:, or a fixed value")
    return space


def recipe_config(fit_args: list[str]) -> dict[str, Any]:
    """The recipe as given (config files plus overrides), as ``fit --print_config`` shows it: nothing chosen for
    the machine yet; ConfigError when fit does not take the options."""
    import io

    from vgg_lightning.cli import build_cli

    printed, errors, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        try:
            build_cli(["fit", *fit_args, "--print_config"])
        except SystemExit as e:
            code = e.code
    if code not in (0, None):
        said = errors.getvalue().strip() or printed.getvalue().strip()
        raise ConfigError(f"tune: fit does not take these options: {said.splitlines()[-1] if said else code}")
    return yaml.safe_load(printed.getvalue()) or {}


def in_one_process(fit_args: list[str]) -> tuple[list[str], str]:
    """The fit arguments for trials run in this process, and the line that says what changed ("" if nothing).

    Lightning starts a run's further DDP processes by running its command again, which here is the whole tune: so
    every trial is one process, with the images a step the recipe asks for (cpu_fp32.yaml's 2 processes x 128 on a
    CPU without bf16 become 1 x 256)."""
    from vgg_lightning import recipes

    config = recipe_config(fit_args)
    if config.get(recipes.KEY) and recipes.trains_in_fp32_on_cpu(config.get("trainer") or {}):
        fit_args = recipes.with_fp32_variant(fit_args)[0]  # read here, so that its devices are seen
        config = recipe_config(fit_args)
    trainer = config.get("trainer") or {}
    devices, nodes = str(trainer.get("devices", 1)), int(trainer.get("num_nodes") or 1)
    if devices == "1" and nodes == 1:
        return fit_args, ""
    extra = ["--trainer.devices=1", "--trainer.num_nodes=1"]
    note = f"tune: each trial runs in this process, on one device (the recipe asks for devices {devices})"
    batch = (config.get("data") or {}).get("batch_size")
    if devices.isdigit() and batch:
        step = int(batch) * int(devices) * nodes
        extra.append(f"--data.batch_size={step}")
        note += f" with --data.batch_size {step}, the recipe's images a step"
    return [*fit_args, *extra], note


def recipe_values(config: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The searched options' values in a recipe's config."""
    values = {}
    for key, spec in space.items():
        if isinstance(spec, dict):
            value: Any = config
            for part in key.split("."):  # model.optim.lr: through the option groups
                value = value.get(part) if isinstance(value, dict) else None
            values[key] = value
    return values


def in_space(values: dict[str, Any], space: dict[str, Any]) -> list[str]:
    """The searched options whose recipe value lies outside the space (``key=value``)."""
    outside = []
    for key, value in values.items():
        spec = space[key]
        if "choices" in spec:
            ok = any(value == c and type(value) is type(c) for c in spec["choices"])
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = number and spec["low"] <= value <= spec["high"]
        if not ok:
            outside.append(f"{key}={value}")
    return outside


def sample(trial, space: dict[str, Any]) -> dict[str, Any]:
    """One candidate: ``{option: value}`` drawn by the trial."""
    params = {}
    for key, spec in space.items():
        if not isinstance(spec, dict):
            params[key] = spec
        elif "choices" in spec:
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif all(isinstance(spec[k], int) for k in ("low", "high")) and not isinstance(spec.get("step", 1), float):
            params[key] = trial.suggest_int(
                key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
            )
        else:
            params[key] = trial.suggest_float(
                key, spec["low"], spec["high"], step=spec.get("step"), log=spec.get("log", False)
            )
    return params


def _as_args(params: dict[str, Any]) -> list[str]:
    return [
        f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        for key, value in params.items()
    ]


# -- pruning at equal shares of the budget -----------------------------------------------------------------------
class BudgetSharePruning(L.Callback):
    """Reports a trial's best val accuracy so far at each 10% of its budget and stops the trial when Optuna's pruner
    says it is clearly behind the trials before it at that same share."""

    def __init__(self, trial) -> None:
        self.trial = trial
        self.reported: set[int] = set()
        self.pruned_at: Optional[int] = None

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.pruned_at is not None:
            return
        budget = next((cb for cb in trainer.callbacks if isinstance(cb, TimeBudget)), None)
        if budget is None or not budget.seconds:
            return
        share = 100 * (budget.clock() - budget.started) / budget.seconds
        best = float(getattr(pl_module, "best_val_acc", 0.0))
        for milestone in MILESTONES:
            if milestone <= share and milestone not in self.reported:
                self.trial.report(best, milestone)
                self.reported.add(milestone)
                if self.trial.should_prune():
                    self.pruned_at = milestone
                    trainer.should_stop = True
                    return


# -- running trials ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Everything a trial prints (Python, Lightning, C libraries) goes to its log file, not the terminal."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def run_fit(args: list[str], log_path: Path, callbacks: Optional[list] = None) -> dict[str, Any]:
    """One ``fit`` in this process; its numbers: best val acc, epochs, wall seconds, run folder."""
    from vgg_lightning.cli import build_cli

    started = time.monotonic()
    with _output_to(log_path):
        cli = build_cli(["fit", *args], started=started, extra_callbacks=callbacks)
    trainer = cli.trainer
    epochs = trainer.global_step / max(
        1, math.ceil(trainer.num_training_batches / max(1, trainer.accumulate_grad_batches))
    )
    return {
        "best_val_acc": float(cli.model.best_val_acc),
        "epochs": round(epochs, 2),
        "wall_s": round(time.monotonic() - started, 1),
        "run_dir": str(trainer.log_dir) if trainer.log_dir else None,
    }


class Tuner:
    def __init__(self, options: TuneOptions, fit_args: list[str]) -> None:
        import optuna

        self.o, self.fit_args = options, fit_args
        self.trial_s = parse_duration(options.trial_time)
        self.total_s = parse_duration(options.total_time) if options.total_time else None
        self.space = load_space(options.space)
        self.out = Path(options.out)
        self.out.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Optuna marks heartbeats "experimental" on every start; they are what makes a killed trial count as failed.
        warnings.filterwarnings(
            "ignore", message=r".*heartbeat_interval.*", category=optuna.exceptions.ExperimentalWarning
        )
        url = options.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        storage = _open_storage(url, options.heartbeat_s)
        pruner = (
            optuna.pruners.MedianPruner(
                n_startup_trials=options.startup_trials, n_warmup_steps=int(100 * options.prune_after)
            )
            if options.prune
            else optuna.pruners.NopPruner()
        )
        sampler = optuna.samplers.TPESampler(seed=options.sampler_seed)
        self.study = _retry(
            lambda: optuna.create_study(
                study_name=options.study, storage=storage, direction="maximize", sampler=sampler, pruner=pruner,
                load_if_exists=True,
            )
        )  # fmt: skip
        self.started = time.monotonic()

    def _finished(self) -> list:
        from optuna.trial import TrialState

        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))

    def objective(self, trial) -> float:
        import optuna

        params = sample(trial, self.space)
        pruning = BudgetSharePruning(trial)
        args = [
            *self.fit_args, *_as_args(params), f"--trainer.max_time={self.o.trial_time}",
            f"--trainer.default_root_dir={self.out}", *LOG_FILE_RUN,
        ]  # fmt: skip
        log_path = self.out / f"trial_{trial.number:03d}.log"
        try:
            result = run_fit(args, log_path, callbacks=[pruning])
        except BaseException:
            trial.set_user_attr("interrupted", True)  # an interrupted trial is no result
            raise
        for key, value in result.items():
            trial.set_user_attr(key, value)
        if pruning.pruned_at is not None:
            trial.set_user_attr("pruned_at", pruning.pruned_at)
            raise optuna.TrialPruned()
        return result["best_val_acc"]

    def _progress(self, study, frozen) -> None:
        from optuna.trial import TrialState

        if frozen.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            return
        attrs = frozen.user_attrs
        what = (
            f"pruned at {attrs.get('pruned_at')}% of its budget ({100 * attrs.get('best_val_acc', 0):.2f}% then)"
            if frozen.state == TrialState.PRUNED
            else f"{100 * frozen.value:.2f}% best val acc, {attrs.get('epochs')} epochs, {attrs.get('wall_s')} s"
        )
        best = (
            study.best_trial if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) else None
        )
        best_text = f"best {100 * best.value:.2f}% (trial {best.number})" if best else "no complete trial yet"
        done = len(self._finished())
        left = max(0, self.o.trials - done) * self.trial_s
        if self.total_s is not None:
            left = min(left, max(0.0, self.total_s - (time.monotonic() - self.started)))
        name = f"trial {frozen.number}" + (" (the recipe as given)" if attrs.get("recipe") else "")
        print(
            f"{name}: {what} | {best_text} | {done}/{self.o.trials} trials,"
            f" about {format_duration(left, whole_minutes=True)} left",
            flush=True,
        )

    def run(self) -> None:
        import optuna
        from optuna.trial import TrialState

        done = len(self._finished())
        todo = max(0, self.o.trials - done)
        if done:
            print(f"study '{self.o.study}': {done} trials finished before; {todo} to go", flush=True)
        if todo and self.o.start_with_recipe and not self.study.get_trials(deepcopy=False):
            self._enqueue_recipe()
        timeout = None
        if self.total_s is not None:
            timeout = max(0.0, self.total_s - self.trial_s)  # no trial starts that could not end in time
        if todo:
            # The study's total, not this process's: several processes on one study stop together at --tune.trials.
            enough = optuna.study.MaxTrialsCallback(self.o.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
            self.study.optimize(
                self.objective, n_trials=todo, timeout=timeout, callbacks=[self._progress, enough], catch=()
            )
        self.report()

    @functools.cached_property
    def recipe(self) -> dict[str, Any]:
        """The recipe as given, read once (a CLI parse) for the first trial and for best.yaml."""
        return recipe_config(self.fit_args)

    def _enqueue_recipe(self) -> None:
        values = recipe_values(self.recipe, self.space)
        if not values:
            return
        outside = in_space(values, self.space)
        if outside:
            print(f"the recipe's own {', '.join(outside)} lies outside the search space: it is not a trial", flush=True)
            return
        # skip_if_exists: processes starting together on a new study enqueue it once.
        self.study.enqueue_trial(values, user_attrs={"recipe": True}, skip_if_exists=True)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        print(f"first trial: the recipe as given ({shown})", flush=True)

    def report(self) -> Optional[Path]:
        from optuna.trial import TrialState

        trials = [
            t for t in self.study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        ]
        if not trials:
            print("no finished trial", flush=True)
            return None
        keys = list(self.space)
        print(f"\n{'trial':>5}  {'best val acc':>12}  {'epochs':>6}  {'wall s':>7}  {'state':<7}  parameters")
        for t in sorted(trials, key=lambda t: -(t.value if t.value is not None else -1)):
            acc = t.user_attrs.get("best_val_acc")
            acc_text = f"{100 * acc:.2f}%" if acc is not None else "-"
            state = "pruned" if t.state == TrialState.PRUNED else "done"
            state += "*" if t.user_attrs.get("recipe") else ""
            shown = ", ".join(f"{k}={_short(t.params.get(k, self.space.get(k)))}" for k in keys)
            epochs, wall = t.user_attrs.get("epochs", "-"), t.user_attrs.get("wall_s", "-")
            print(f"{t.number:>5}  {acc_text:>12}  {epochs:>6}  {wall:>7}  {state:<7}  {shown}")
        if any(t.user_attrs.get("recipe") for t in trials):
            print("(* the recipe as given)")
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            return None
        best = max(complete, key=lambda t: t.value)
        source = Path(best.user_attrs["run_dir"]) / "config.yaml"
        target = self.out / "best.yaml"
        config = yaml.safe_load(source.read_text())
        config.pop("ckpt_path", None)
        for key in ("default_root_dir", "enable_progress_bar", "enable_model_summary"):  # tune's, not the recipe's
            config.get("trainer", {}).pop(key, None)
        if (self.recipe.get("trainer") or {}).get("precision") is None:
            # fit chose it for this machine (bf16 where the CPU has it); best.yaml leaves that to the next machine.
            config.get("trainer", {}).pop("precision", None)
        logger = config.get("trainer", {}).get("logger")
        if isinstance(logger, dict) and logger.get("init_args", {}).get("save_dir") == str(self.out):
            logger["init_args"]["save_dir"] = "."
        target.write_text(
            f"# tune: trial {best.number} of study '{self.o.study}', {100 * best.value:.2f}% best val acc in"
            f" {self.o.trial_time} ({best.user_attrs.get('epochs')} epochs).\n# Use it with: fit --config {target}\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        print(
            f"\nbest: trial {best.number}, {100 * best.value:.2f}% best val acc; its full config: {target}", flush=True
        )
        if self.o.seeds:
            self.confirm(target)
        return target

    def confirm(self, config: Path) -> None:
        accs = []
        for seed in range(1, self.o.seeds + 1):
            args = [
                f"--config={config}",
                f"--seed_everything={seed}",
                f"--trainer.default_root_dir={self.out / 'seeds'}",
                *LOG_FILE_RUN,
            ]
            result = run_fit(args, self.out / f"seed_{seed}.log")
            accs.append(result["best_val_acc"])
            print(f"seed {seed}: {100 * result['best_val_acc']:.2f}% best val acc", flush=True)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"best recipe over {len(accs)} seeds: {100 * statistics.mean(accs):.2f} +- {100 * std:.2f}%", flush=True)


def _retry(make, attempts: int = 20):
    """Processes started together on a new database race to create its tables and the study: the loser retries."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.25 + 0.25 * attempt)


def _open_storage(url: str, heartbeat_s: int):
    import optuna

    return _retry(lambda: optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(``--tune.*`` arguments, the rest for fit)."""
    tune, fit, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--tune."):
            tune.append(arg)
            if "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--"):
                tune.append(args[i + 1])
                i += 1
        else:
            fit.append(arg)
        i += 1
    return tune, fit


def main(args: Optional[list[str]] = None) -> int:
    from jsonargparse import ArgumentParser

    args = list(sys.argv[2:] if args is None else args)
    tune_args, fit_args = split_args(args)
    parser = ArgumentParser(
        prog="python -m vgg_lightning tune",
        description="Search recipes at equal time: every trial is a fit with --trainer.max_time = --tune.trial_time."
        " Options other than --tune.* go to every trial's fit (e.g. --config, --data.data_dir).",
    )
    parser.add_class_arguments(TuneOptions, "tune")
    if "-h" in fit_args or "--help" in fit_args:
        parser.print_help()
        return 0
    options = TuneOptions(**parser.parse_args(tune_args).tune.as_dict())
    try:
        import optuna  # noqa: F401
    except ImportError:
        log.error("error: tune needs Optuna: pip install 'vgg_lightning[tune]'   (or: pip install optuna)")
        return 2
    try:
        fit_args, note = in_one_process(fit_args)
        if note:
            print(note, flush=True)
        Tuner(options, fit_args).run()
    except (ConfigError, DataError) as e:
        return report(e)
    except KeyboardInterrupt:
        log.error("tune: interrupted; run the same command again to go on with the study")
        return 130
    return 0
