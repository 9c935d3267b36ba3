"""Upstream messages that are not about the user's run, silenced narrowly: by message and origin, each with why.

Everything else (our own warnings, and any other warning from Lightning, torch or torchmetrics) still shows.
"""

from __future__ import annotations

import logging
import warnings


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = list(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


_FILTER = _DropMessages(
    # An advertisement for a cloud service, printed by every Trainer; nothing about this run.
    "try installing [litlogger]",
    # "GPU available: False, used: False", "TPU available: ...", "HPU available: ...": our own first line
    # says which device and precision the run uses, and why.
    "available: ",
    # "Using bfloat16 Automatic Mixed Precision (AMP)": said by our first line too, with the reason.
    "Automatic Mixed Precision (AMP)",
    # Lightning explaining how it sizes the schedule; the budget or the epochs say it in the user's terms.
    "to estimate number of stepping batches",
    # DDP's start, a line from each process ("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2", "[rank: 1] Seed
    # set to 0", "distributed_backend=gloo ... registered"): our first line says how many processes, threads each.
    "Initializing distributed: ",
    "] Seed set to ",
    "All distributed processes registered",
)
# Where those come from: rank_zero_info's loggers, and the modules that log DDP's start and the seed themselves.
_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.distributed",
    "lightning.fabric.utilities.seed",
)


def drop_upstream(fragment: str) -> None:
    """Silence one more upstream message from now on, for a reason the caller knows (see its comment)."""
    if fragment not in _FILTER.fragments:
        _FILTER.fragments.append(fragment)


def allow_upstream(fragment: str) -> None:
    """Undo ``drop_upstream``."""
    if fragment in _FILTER.fragments:
        _FILTER.fragments.remove(fragment)


def silence_upstream_noise() -> None:
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    # Lightning 2.6 still calls torch's deprecated LeafSpec() in its pytree helper; the FutureWarning is about
    # Lightning's code, which we cannot change, and the call works.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
    # Lightning's advice to sync epoch-level values under DDP: this project's epoch values are torchmetrics results,
    # already summed over all processes; the per-rank ones (epoch time) are meant to be per rank.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\(.*sync_dist=True\)`")
    # validate/test/predict of a time-budgeted run's checkpoint: the budget is a training-only callback, so its saved
    # state has nothing to restore there.
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`.*callbacks: \['TimeBudget'\]\.")
    # The model summary's size estimate assumes 32 bits for mixed precision, which is exactly the size of the
    # fp32 master weights that mixed precision keeps: the estimate is right for this project.
    warnings.filterwarnings(
        "ignore", message=r"Precision .* is not supported by the model summary", category=UserWarning
    )
    # Small data sets have fewer batches an epoch than the logging interval: the model then logs its step loss once
    # an epoch (VGGClassifier.on_train_start shortens the interval to the epoch), which is what the user wants.
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
