"""Checkpoints of earlier versions, read as today's: options then flat put into their groups, the model's own EMA
laid out as Lightning's EMAWeightAveraging saves it."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

from vgg_lightning.messages import say
from vgg_lightning.models import NetOptions
from vgg_lightning.optim import OptimOptions

# Where each model option of the flat signature before 2026-12-03 went (checkpoints and hparams files of that time
# still load): the group and the name in it.
FLAT_OPTIONS = {
    **{f.name: ("net", f.name) for f in fields(NetOptions)},
    **{f.name: ("optim", f.name) for f in fields(OptimOptions) if f.name != "name"},
    "optimizer": ("optim", "name"),
    "tta_flip": ("tta", "flip"),
    "tta_shift": ("tta", "shift"),
}


def grouped_options(hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model options as the model takes them now: flat options of older checkpoints put into their
    groups; options that are no longer the model's (``ema_decay``, ``lookahead``: callbacks now) left out."""
    from vgg_lightning.module import VGGClassifier

    top = set(inspect.signature(VGGClassifier.__init__).parameters) - {"self"}
    out: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in hparams.items() if k in top}
    for key, value in hparams.items():
        if key in FLAT_OPTIONS and key not in top:
            group, name = FLAT_OPTIONS[key]
            out.setdefault(group, {})[name] = value
    return out


def move_model_ema(checkpoint: dict[str, Any]) -> None:
    """Checkpoints from when the EMA was part of the model (``model.ema_decay``) hold the averaged copy under
    ``ema.module.*``: laid out as Lightning's EMAWeightAveraging saves it (the average in ``state_dict``, the trained
    weights in ``current_model_state``), so evaluating them still uses the average and a resumed fit with the
    callback goes on with both."""
    state = checkpoint.get("state_dict") or {}
    if not any(k.startswith("ema.") for k in state):
        return
    current = {k: v for k, v in state.items() if not k.startswith("ema.")}
    averaged = dict(current)
    averaged.update({"net." + k[len("ema.module.") :]: v for k, v in state.items() if k.startswith("ema.module.")})
    checkpoint["state_dict"] = averaged
    checkpoint["current_model_state"] = current
    checkpoint["averaging_state"] = {k[len("ema.") :]: v for k, v in state.items() if k == "ema.n_averaged"}


# Model options of earlier versions that became callbacks: (option, its "off" value, what to add instead).
MOVED_MODEL_OPTIONS = {
    "ema_decay": (0.0, "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging --trainer.callbacks.decay"),
    "lookahead": (0.0, "--trainer.callbacks+=vgg_lightning.callbacks.Lookahead --trainer.callbacks.decay"),
}


def model_options_now(saved: dict, resuming: bool) -> dict:
    """``grouped_options``, and a resumed fit that used an option that moved to a callback is told how to go on
    with it."""
    for option, (off, instead) in MOVED_MODEL_OPTIONS.items():
        value = saved.get(option)
        if resuming and value not in (None, off):
            say(f"this checkpoint's run used model.{option} {value}, now a callback: add {instead} {value}")
    return grouped_options(saved)
