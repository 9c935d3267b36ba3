"""``python -m vgg_lightning {fit,validate,test,predict}``: LightningCLI with the project's defaults.

Everything is configured by YAML (the package's ``default.yaml`` is always loaded first) plus ``--section.key value``
overrides; ``--print_config`` shows the result.
"""

from __future__ import annotations

import signal
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any, Optional

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from vgg_lightning import checkpoints, loggers, precision, quiet, recipes
from vgg_lightning import pretrained as pretrained_weights
from vgg_lightning.callbacks.budget import TimeBudget, parse_duration
from vgg_lightning.callbacks.reliability import LastCheckpoint, NonFiniteLossError
from vgg_lightning.callbacks.step_limit import ValidateAtMaxSteps
from vgg_lightning.compat import model_options_now
from vgg_lightning.data.datamodule import ImageDataModule
from vgg_lightning.errors import ConfigError, DataError, report
from vgg_lightning.files import write_text_atomically
from vgg_lightning.messages import log, say
from vgg_lightning.module import VGGClassifier

# The main recipe and the always-on callbacks, loaded before any --config: shipped inside the package, so an
# installed wheel runs what a checkout runs.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
EVALUATION = ("validate", "test", "predict")
# Options that choose how a model runs, not what it is: given on the command line, they win over the values
# saved in a checkpoint (LightningCLI otherwise restores every model option from --ckpt_path).
RUNTIME_MODEL_OPTIONS = ("tta.flip", "tta.shift", "compile", "channels_last", "optim.fused")
# Data options an evaluation command takes from the command line only; the rest come from the checkpoint's run
# (evaluating a model trained on class folders evaluates it on those folders).
RUNTIME_DATA_OPTIONS = ("predict_path", "batch_size", "num_workers", "download", "data_on_device")
# `--ckpt_path untrained`: evaluate freshly initialized weights, on purpose.
UNTRAINED = "untrained"
# Where the module's TensorBoard logger writes unless told otherwise (it follows --trainer.default_root_dir).
DEFAULT_LOGGER = {
    "class_path": "vgg_lightning.loggers.TensorBoardLogger",
    "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
}


# Lightning's TensorBoardLogger, named in older config.yaml files or typed, runs as the project's (same options).
LIGHTNING_TENSORBOARD = (
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.loggers.tensorboard.TensorBoardLogger",
)


class RunConfig(SaveConfigCallback):
    """LightningCLI's config.yaml (``<command>_config.yaml`` for the evaluation commands) in the run's folder,
    written atomically, and for ``fit`` only once the run has passed its checks (its options against the
    checkpoint it resumes): a refused command leaves the run it named as it was."""

    @override
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            self._write(trainer)

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        self._write(trainer)

    def _write(self, trainer) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # a broadcast: every rank calls it
        if trainer.is_global_zero:
            write_text_atomically(Path(log_dir) / self.config_filename, self.parser.dump(self.config, skip_none=False))
        self.already_saved = True


def _given(raw_args: list[str], key: str) -> bool:
    """Whether ``--key`` was typed on the command line (``--key value`` or ``--key=value``)."""
    return any(a == f"--{key}" or a.startswith(f"--{key}=") for a in raw_args)


class VGGLightningCLI(LightningCLI):
    def __init__(
        self, *args: Any, started: Optional[float] = None, extra_callbacks: Optional[list] = None, **kwargs: Any
    ) -> None:
        self.started = time.monotonic() if started is None else started  # where a time budget starts counting
        self.extra_callbacks = list(extra_callbacks or [])  # live objects a caller adds (tune's pruner)
        super().__init__(*args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_size", "model.image_size", apply_on="instantiate")
        parser.add_argument(
            f"--{recipes.KEY}",
            type=Optional[str],
            default=None,
            help="In a recipe: its variant for CPUs without bf16 (a file beside it), read right after it where the run"
            " trains in fp32 on a CPU; options typed on the command line still win.",
        )
        # The best-checkpoint options, instantiated by instantiate_trainer only when checkpointing is on.
        parser.add_class_arguments(
            ModelCheckpoint, "checkpoint", fail_untyped=False, instantiate=False, sub_configs=True
        )
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,  # last.ckpt comes from reliability.LastCheckpoint
                "checkpoint.filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    # -- before anything is built: resolve checkpoints, precision and where the run logs --------------------------
    @override
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        quiet.silence_upstream_noise()  # before LightningCLI seeds: a DDP rank it launched says so with its rank
        self.ckpt: Optional[dict] = None
        self.ckpt_note = ""
        self.recipe_note = ""
        self.raw_args = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        printing = [a for a in self.raw_args if a == "--print_config" or a.startswith("--print_config=")]
        if printing:
            _print_with_fp32_variant(parser, [a for a in self.raw_args if a not in printing], printing)
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub is None:
            return
        cfg = self.config[sub]
        args, self.recipe_note = _with_fp32_variant(self.config, self.raw_args)
        if self.recipe_note:
            self.raw_args = args
            # parser.parse_args: LightningCLI's parse_arguments warns whenever args and sys.argv are both given
            self.config = parser.parse_args(args)
            cfg = self.config[sub]
        # LightningCLI next restores every model option from --ckpt_path; these typed here must win over it.
        self.runtime_model_options = {
            k: cfg.model[k] for k in RUNTIME_MODEL_OPTIONS if _given(self.raw_args, f"model.{k}")
        }
        logger = cfg.trainer.get("logger")
        if is_tensorboard(logger) and logger.class_path in LIGHTNING_TENSORBOARD:
            logger.class_path = DEFAULT_LOGGER["class_path"]
        follow_default_root_dir(cfg, self.raw_args)
        self.ckpt_note = resolve_checkpoint(sub, cfg, log_root(cfg))
        # The one read of the checkpoint (memory-mapped: the weights are read by Lightning's restore only).
        self.ckpt = checkpoints.read(cfg.ckpt_path) if cfg.get("ckpt_path") else None
        if sub == "fit" and self.ckpt is not None:
            _check_resume_batch_size(self.ckpt, cfg)
        if cfg.trainer.get("deterministic") and cfg.trainer.get("benchmark"):
            cfg.trainer.benchmark = False  # cudnn autotuning picks algorithms by timing: not repeatable
        accelerator = cfg.trainer.get("accelerator", "auto")
        self.precision_chosen = cfg.trainer.get("precision") is None
        if self.precision_chosen:
            cfg.trainer.precision = precision.auto_precision(accelerator)
        # fit writes config.yaml; the other commands, when logging into a fit run, keep theirs beside it.
        self.save_config_kwargs = {
            "overwrite": True,
            "config_filename": "config.yaml" if sub == "fit" else f"{sub}_config.yaml",
        }

    @override
    def _parse_ckpt_path(self) -> None:
        """LightningCLI's: the model's options from the checkpoint's hyperparameters, over the CLI's one read (its own
        would read the whole file again, and give a file that is not a checkpoint a traceback)."""
        if not getattr(self, "ckpt", None):
            return
        hparams = dict(self.ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams = model_options_now(hparams, resuming=self.config.subcommand == "fit")
        if not hparams:
            return
        self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    # -- after LightningCLI read the checkpoint's hyperparameters, before anything is built ------------------------
    @override
    def before_instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        if sub is None:
            return
        cfg = self.config[sub]
        for key, value in self.runtime_model_options.items():
            cfg.model[key] = value
        if cfg.get("weights_only") is None:
            cfg.weights_only = True  # Lightning's restore too: a checkpoint never runs code
        if sub in EVALUATION and self.ckpt is not None:
            data_options_from_checkpoint(cfg, self.ckpt, self.raw_args)
        trainer = cfg.trainer
        if (
            sub == "fit"
            and trainer.get("max_time") is not None
            and trainer.get("max_steps", -1) == -1
            and not trainer.get("max_epochs")
        ):
            trainer.max_epochs = -1  # the budget decides
        if (
            sub == "fit"
            and cfg.model.net.get("pretrained")
            and cfg.data.get("mean") is None
            and cfg.data.get("std") is None
        ):
            cfg.data.mean, cfg.data.std = pretrained_weights.IMAGENET_MEAN, pretrained_weights.IMAGENET_STD
            say(
                "normalization: ImageNet's mean and std, which the pretrained weights expect"
                " (--data.mean and --data.std to change it)"
            )
        precision.use_tf32(trainer.get("accelerator", "auto"))
        say(
            precision.describe(
                trainer.get("accelerator", "auto"),
                str(trainer.precision),
                self.precision_chosen,
                cfg.model.get("channels_last"),
                precision.cpu_processes(trainer.get("accelerator", "auto"), trainer.get("devices", "auto")),
            )
        )
        if self.recipe_note:
            say(self.recipe_note)
        if self.ckpt_note:
            say(self.ckpt_note)
        precision.warn_if_slow(trainer.get("accelerator", "auto"), str(trainer.precision))

    def _check_checkpoint_fits_data(self) -> None:
        check_checkpoint_fits_data(self.subcommand, self.config[self.subcommand], self.ckpt, self.datamodule)

    def before_fit(self) -> None:
        self._check_checkpoint_fits_data()
        self.model.weights_from_checkpoint = self.ckpt is not None  # a resumed run loads no pretrained weights

    def before_validate(self) -> None:
        self._check_checkpoint_fits_data()

    def before_predict(self) -> None:
        self._check_checkpoint_fits_data()

    # -- test: the project's table (TestReport) says it all; Lightning's own would repeat the same numbers -------
    def before_test(self) -> None:
        self._check_checkpoint_fits_data()
        if not _given(self.raw_args, "verbose"):
            self.config_init["test"]["verbose"] = False

    # -- the project's own callbacks that depend on the options ---------------------------------------------------
    @override
    def instantiate_trainer(self, **kwargs: Any) -> Any:
        sub = self.subcommand
        config = self.config_init[sub] if sub else self.config_init
        trainer = config["trainer"]
        # The always-on callbacks come from the package's default.yaml (trainer.callbacks); these follow from options.
        own: list[Callback] = []
        if trainer.get("enable_checkpointing") is not False:  # Lightning's switch: our checkpoints step aside
            if trainer.get("limit_val_batches") != 0:  # without validation there is no val/acc to pick a best by
                own.append(ModelCheckpoint(**dict(config["checkpoint"])))
            own.append(LastCheckpoint())
        if trainer.get("logger"):
            own.append(LearningRateMonitor(logging_interval="step"))
        if sub == "fit" and trainer.get("max_time") is not None:
            own.append(TimeBudget(parse_duration(trainer["max_time"]), started=self.started))
            kwargs["max_time"] = None  # planned by TimeBudget instead of cut by Lightning's Timer
        elif sub == "fit" and self.ckpt is not None and _has_budget_plan(self.ckpt):
            own.append(TimeBudget(None, started=self.started))  # resumed without max_time: the run's plan goes on
        if sub == "fit" and trainer.get("max_steps") not in (None, -1):
            # A max_steps inside an epoch still ends validated and checkpointed, also under a budget that has not
            # planned yet (its plans stop at max_steps the same way).
            own.append(ValidateAtMaxSteps())
        own += self.extra_callbacks
        self.trainer_defaults = {**self.trainer_defaults, "callbacks": own}
        plugins = trainer.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, checkpoints.CheckpointFiles()]  # whole files, or the old ones kept
        return super().instantiate_trainer(**kwargs)

    @override
    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except (DataError, OSError):
            # Raised on rank 0 alone (a checkpoint that did not fit on the disk): the ranks it launched wait for it
            # in a collective that never comes; they go with it instead of hanging.
            launcher = getattr(self.trainer.strategy, "launcher", None)
            if isinstance(launcher, _SubprocessScriptLauncher) and self.trainer.is_global_zero:
                launcher.kill(signal.SIGKILL)
            raise


# -- the CLI's setup, as plain functions of the parsed options (and the one read of the checkpoint) -------------------
def is_tensorboard(logger) -> bool:
    return bool(logger) and hasattr(logger, "init_args") and "TensorBoardLogger" in str(logger.class_path)


def log_root(cfg) -> Optional[Path]:
    """Where the TensorBoard logger keeps its runs (``save_dir/name``); None without it."""
    logger = cfg.trainer.get("logger")
    if not is_tensorboard(logger):
        return None
    args = logger.init_args
    return Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")


def follow_default_root_dir(cfg, raw_args: list[str]) -> None:
    """The TensorBoard logger writes under --trainer.default_root_dir unless its own save_dir is given."""
    root = cfg.trainer.get("default_root_dir")
    logger = cfg.trainer.get("logger")
    if root and is_tensorboard(logger) and not _given(raw_args, "trainer.logger.init_args.save_dir"):
        if logger.init_args.get("save_dir") in (None, DEFAULT_LOGGER["init_args"]["save_dir"]):
            logger.init_args.save_dir = str(root)


def resolve_checkpoint(sub: str, cfg, runs: Optional[Path]) -> str:
    """``last``/``best`` and the evaluation commands' default (the newest run's best) to a file in
    ``cfg.ckpt_path``, and a resumed fit's logger to its run; returns the line that says which (or "")."""
    given = cfg.get("ckpt_path")
    if given == UNTRAINED:
        if sub == "fit":
            raise ConfigError(f"--ckpt_path {UNTRAINED} is for validate, test and predict; fit starts untrained anyway")
        cfg.ckpt_path = None
        return "weights: freshly initialized, untrained (--ckpt_path untrained)"
    defaulted = not given and sub in EVALUATION
    if not given and not defaulted:
        return ""
    root = runs or Path("lightning_logs")
    try:
        ckpt = checkpoints.resolve("best" if defaulted else str(given), root)
    except checkpoints.CheckpointNotFound as e:
        raise ConfigError(
            f"{sub} needs trained weights, and no run in '{root}' has a checkpoint yet: train one with"
            f" `python -m vgg_lightning fit` first, or pass --ckpt_path FILE (--ckpt_path {UNTRAINED} evaluates"
            " random weights on purpose)"
            if defaulted
            else str(e)
        ) from None
    cfg.ckpt_path = str(ckpt)
    note = ""
    if sub in EVALUATION:
        note = f"weights: {ckpt}" + (" (the newest run's best; choose with --ckpt_path)" if defaulted else "")
    version = checkpoints.run_version(ckpt, runs) if runs else None
    if version is None:
        return note
    if sub == "fit" and ckpt.name != "last.ckpt":
        # Resuming from an earlier state of a run (its best, an epoch's file) would overwrite that run's
        # last.ckpt and config.yaml with a state it has already gone past: a new run folder instead.
        return (
            f"resuming from {ckpt}, an earlier state of version_{version}: logging into a new run folder, so"
            f" version_{version}'s own last.ckpt and config.yaml stay as they are"
        )
    cfg.trainer.logger.init_args.version = version  # go on logging into the run the checkpoint belongs to
    return note


def data_options_from_checkpoint(cfg, ckpt: dict, raw_args: list[str]) -> None:
    """An evaluation takes the checkpoint's run's data options, except those typed or only about running."""
    for key, value in (ckpt.get("datamodule_hyper_parameters") or {}).items():
        if key in cfg.data and key not in RUNTIME_DATA_OPTIONS and not _given(raw_args, f"data.{key}"):
            cfg.data[key] = value


def check_checkpoint_fits_data(sub: str, cfg, ckpt: Optional[dict], dm) -> None:
    """A checkpoint's classes must be the data's, in the same order: else metrics carry the wrong names, or
    the weights do not even fit (another class count). One message, before any work."""
    if ckpt is None or (sub == "predict" and cfg.data.get("predict_path")):
        return  # no checkpoint, or predicting on files: the checkpoint's classes are the answer
    saved = [unicodedata.normalize("NFC", str(n)) for n in ckpt.get("class_names") or []]
    saved_count = len(saved) or (ckpt.get("hyper_parameters") or {}).get("num_classes")
    count = dm.num_classes
    names = dm.known_class_names()
    names = [unicodedata.normalize("NFC", n) for n in names] if names is not None else None
    if saved_count == count and (not saved or names is None or saved == names):
        return
    where = f"data.data_dir '{cfg.data.data_dir}' ({cfg.data.dataset})"
    raise ConfigError(
        f"the checkpoint {cfg.ckpt_path} was trained on other classes than {where} holds:\n"
        f"  checkpoint ({saved_count}): {', '.join(saved) if saved else '(names not saved)'}\n"
        f"  data       ({count}): {', '.join(names) if names is not None else '(names not read yet)'}\n"
        "  Give the --data options of the run that trained it (its config.yaml), or another --ckpt_path."
    )


def _has_budget_plan(ckpt: dict) -> bool:
    state = ckpt.get("callbacks", {})
    return bool((state.get("TimeBudget") or {}).get("planned_steps"))


def _check_resume_batch_size(ckpt: dict, cfg) -> None:
    """A run resumes with the batch size it started with: the epoch's order, the position in it and the schedule
    are counted in its batches (another size would replay or skip images without a word)."""
    saved = (ckpt.get("datamodule_hyper_parameters") or {}).get("batch_size")
    given = cfg.data.get("batch_size")
    if saved is not None and given is not None and int(saved) != int(given):
        raise ConfigError(
            f"the checkpoint {cfg.ckpt_path} is from a run with batch size {saved}, this command has {given}:"
            f" resume with --data.batch_size {saved} (see the run's config.yaml), or start a new run without"
            " --ckpt_path"
        )


def build_cli(
    args: Optional[list[str]] = None,
    run: bool = True,
    started: Optional[float] = None,
    extra_callbacks: Optional[list] = None,
) -> VGGLightningCLI:
    if not DEFAULT_CONFIG.is_file():
        raise ConfigError(
            f"the package's defaults file {DEFAULT_CONFIG} is missing (an incomplete install):"
            " reinstall vgg_lightning (`make install`, or pip install of the wheel)"
        )
    default_files = [str(DEFAULT_CONFIG)]
    return VGGLightningCLI(
        VGGClassifier,
        ImageDataModule,
        trainer_defaults={"logger": DEFAULT_LOGGER},
        parser_kwargs={
            "prog": program_name(),
            "description": "Train and evaluate VGG on CIFAR or your own class folders with Lightning. Also: "
            "`plot RUN...` (curves as PNG), `export --ckpt_path ...` (ONNX/TorchScript) and `tune` (a recipe search at"
            " equal time per candidate).",
            **{sub: {"default_config_files": default_files} for sub in SUBCOMMANDS},
        },
        auto_configure_optimizers=False,  # the module's own optimizer and per-step schedule
        save_config_callback=RunConfig,
        args=args,
        run=run,
        started=started,
        extra_callbacks=extra_callbacks,
    )


def program_name() -> str:
    """What the user typed to get here: ``vgg-lightning`` or ``python -m vgg_lightning``."""
    return "vgg-lightning" if Path(sys.argv[0]).name == "vgg-lightning" else "python -m vgg_lightning"


def _with_fp32_variant(config, args: list[str]) -> tuple[list[str], str]:
    """``args`` with a recipe's fp32 variant put in, and the line that says so, where the parsed ``config`` will
    train in fp32 on a CPU and its recipe names a variant; else ``args`` and ""."""
    sub = config.get("subcommand")
    cfg = config[sub] if sub else None
    if cfg is not None and cfg.get(recipes.KEY) and recipes.trains_in_fp32_on_cpu(cfg.trainer):
        return recipes.with_fp32_variant(args)
    return args, ""


def _print_with_fp32_variant(parser: LightningArgumentParser, args: list[str], printing: list[str]) -> None:
    """``--print_config`` prints and exits inside the parse, before a recipe's fp32 variant is put in: so where the
    run would read the variant, parse once without the flag, then print the config with the variant in place."""
    with_variant, note = _with_fp32_variant(parser.parse_args(args), args)
    if note:
        parser.parse_args([*with_variant, *printing])  # prints and exits


def main(args: Optional[list[str]] = None, started: Optional[float] = None) -> int:
    """Run the CLI; bad data or options end with one message and a non-zero status, not a traceback.

    ``started``: when the command started (a ``time.monotonic()`` reading), for ``--trainer.max_time``; default: now.
    """
    try:
        build_cli(args, started=started)
    except (ConfigError, DataError) as e:
        loggers.release_unused_claims()  # a refused or failed command leaves no empty run folder
        return report(e)
    except SIGTERMException:
        return 128 + signal.SIGTERM  # the shell's status for "ended by SIGTERM"; the checkpoint is saved
    except NonFiniteLossError as e:
        log.error(
            f"error: {e}.\n  The run stopped; its checkpoints hold the last good weights. Lower --model.optim.lr or"
            " raise --model.optim.warmup, then resume with `fit --ckpt_path last` or start again."
        )
        return 1
    return 0
