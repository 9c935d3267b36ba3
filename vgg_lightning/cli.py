"""``python -m vgg_lightning {fit,validate,test,predict}``: LightningCLI with the project's defaults.

Everything is configured by YAML (``configs/default.yaml`` is always loaded first) plus ``--section.key value``
overrides; ``--print_config`` shows the result.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vgg_lightning import checkpoints
from vgg_lightning.cifar_files import DataError
from vgg_lightning.datamodule import CIFARDataModule, ConfigError
from vgg_lightning.interrupts import InterruptCheckpoint
from vgg_lightning.module import NonFiniteLossError, VGGClassifier
from vgg_lightning.reporting import EpochSummary, PredictionReport, TestReport
from vgg_lightning.visuals import ValidationVisuals

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Options that choose how a model runs, not what it is: given on the command line, they win over the values
# saved in a checkpoint (LightningCLI otherwise restores every model option from --ckpt_path).
RUNTIME_MODEL_OPTIONS = ("tta_flip", "compile", "channels_last")


class LearningRateLogger(LearningRateMonitor):
    """LearningRateMonitor that stays quiet, instead of failing, when the run has no logger (--trainer.logger false)."""

    def on_train_start(self, trainer, *args, **kwargs) -> None:
        self._off = not trainer.loggers
        if not self._off:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer, *args, **kwargs) -> None:
        if not getattr(self, "_off", False):
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        if not getattr(self, "_off", False):
            super().on_train_epoch_start(trainer, *args, **kwargs)


def auto_precision(accelerator: object) -> str:
    """bf16 mixed where the GPU has bf16 (Ampere and newer), fp16 mixed on older GPUs, 32-bit elsewhere."""
    wants_gpu = str(accelerator) in ("auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


class VGGLightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,  # last.ckpt comes from last_checkpoint(), every epoch
                "checkpoint.filename": "epoch{epoch:03d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateLogger, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})

    # -- before anything is built: resolve checkpoints, precision and where the run logs --------------------------
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self._raw_args = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if sub is None:
            return
        cfg = self.config[sub]
        log_root = self._log_root(cfg)
        if cfg.get("ckpt_path"):
            try:
                ckpt = checkpoints.resolve(str(cfg.ckpt_path), log_root or Path("lightning_logs"))
            except checkpoints.CheckpointNotFound as e:
                parser.error(str(e))
            cfg.ckpt_path = str(ckpt)
            version = checkpoints.run_version(ckpt, log_root) if log_root else None
            if version is not None:  # go on logging into the run the checkpoint belongs to
                cfg.trainer.logger.init_args.version = version
        if cfg.trainer.get("deterministic") and cfg.trainer.get("benchmark"):
            cfg.trainer.benchmark = False  # cudnn autotuning picks algorithms by timing: not repeatable
        if cfg.trainer.get("precision") is None:
            cfg.trainer.precision = auto_precision(cfg.trainer.get("accelerator", "auto"))
        # fit writes config.yaml; the other commands, when logging into a fit run, keep theirs beside it.
        self.save_config_kwargs = {"overwrite": True, "config_filename": "config.yaml" if sub == "fit" else f"{sub}_config.yaml"}

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        given = [k for k in RUNTIME_MODEL_OPTIONS if any(a.startswith(f"--model.{k}") for a in self._raw_args)]
        before = {k: self.config[sub].model.get(k) for k in given} if sub else {}
        super()._parse_ckpt_path()
        for key, value in before.items():
            self.config[sub].model[key] = value

    @staticmethod
    def _log_root(cfg) -> Optional[Path]:
        logger = cfg.trainer.get("logger")
        if not logger or not hasattr(logger, "init_args") or "TensorBoardLogger" not in str(logger.class_path):
            return None
        args = logger.init_args
        return Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")


def last_checkpoint() -> ModelCheckpoint:
    """``last.ckpt`` after every epoch. (ModelCheckpoint's own save_last, in Lightning 2.6, rewrites it only when
    the monitored metric improved, so resuming could repeat epochs.)"""
    return ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)


def build_cli(args: Optional[list[str]] = None, run: bool = True) -> VGGLightningCLI:
    default_files = [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.is_file() else []
    return VGGLightningCLI(
        VGGClassifier,
        CIFARDataModule,
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
            },
            "callbacks": [
                PredictionReport(), TestReport(), EpochSummary(), ValidationVisuals(), InterruptCheckpoint(),
                last_checkpoint(),
            ],
        },
        parser_kwargs={
            "description": "Train and evaluate VGG on CIFAR with Lightning. Also: `python -m vgg_lightning plot "
            "RUN...` (curves as PNG) and `python -m vgg_lightning export --ckpt_path ...` (ONNX/TorchScript).",
            **{sub: {"default_config_files": default_files} for sub in SUBCOMMANDS},
        },
        auto_configure_optimizers=False,  # the module's own optimizer and per-step schedule
        args=args,
        run=run,
    )


def main(args: Optional[list[str]] = None) -> int:
    """Run the CLI; bad data or options end with one message and a non-zero status, not a traceback."""
    try:
        build_cli(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except SIGTERMException:
        return 128 + signal.SIGTERM  # the shell's status for "ended by SIGTERM"; the checkpoint is saved
    except NonFiniteLossError as e:
        print(
            f"error: {e}.\n  The run stopped; its checkpoints hold the last good weights. Lower --model.lr or"
            " raise --model.warmup, then resume with `fit --ckpt_path last` or start again.",
            file=sys.stderr,
        )
        return 1
    return 0
