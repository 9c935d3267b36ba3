"""A recipe that names another one for CPUs without bf16: the machine picks, as it picks the precision.

A recipe tuned where bf16 runs natively is the wrong one on a CPU that trains in fp32 at half the speed or less
(fewer epochs fit its time budget). Such a recipe names its fp32 variant with ``cpu_fp32_config: FILE`` (a path
relative to the recipe). When the run will train in 32-bit on a CPU, FILE is read right after the recipe, as if
the user had typed ``--config FILE`` there: options typed later on the command line still win over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from vgg_lightning import precision
from vgg_lightning.errors import ConfigError

KEY = "cpu_fp32_config"


def _config_positions(args: list[str]) -> list[tuple[int, str]]:
    """(index of the value, path) of each ``--config PATH`` / ``--config=PATH`` in ``args``."""
    found = []
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            found.append((i + 1, args[i + 1]))
        elif a.startswith("--config="):
            found.append((i, a.split("=", 1)[1]))
    return found


def _named_variant(path: str) -> Optional[str]:
    """The ``cpu_fp32_config`` a recipe file names, resolved against the file's folder (None when it names none)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None  # the CLI's own parse has already said what is wrong with the file
    value = data.get(KEY) if isinstance(data, dict) else None
    if not value:
        return None
    variant = Path(path).parent / str(value)
    if not variant.is_file():
        raise ConfigError(f"{path} names {KEY}: {value}, but {variant} does not exist")
    return str(variant)


def trains_in_fp32_on_cpu(trainer_cfg) -> bool:
    """The run will train in 32-bit on a CPU: precision unset (the machine picks) or given as 32."""
    accelerator = trainer_cfg.get("accelerator", "auto")
    if precision.on_gpu(accelerator):
        return False
    asked = trainer_cfg.get("precision")
    chosen = precision.auto_precision(accelerator) if asked is None else str(asked)
    return chosen in ("32-true", "32", "32-mixed")


def with_fp32_variant(args: list[str]) -> tuple[list[str], str]:
    """``args`` with ``--config VARIANT`` after the last recipe that names one, and the line that says so; the
    same args and "" when no recipe names one. Call it only for runs that train in fp32 on a CPU."""
    for index, path in reversed(_config_positions(args)):
        variant = _named_variant(path)
        if variant is None:
            continue
        if any(Path(p).resolve() == Path(variant).resolve() for _, p in _config_positions(args)):
            return args, ""  # given by hand already
        new = [*args[: index + 1], "--config", variant, *args[index + 1 :]]
        line = f"recipe: {variant} over {path}, as it asks for CPUs without bf16 (options you typed still win)"
        return new, line
    return args, ""
