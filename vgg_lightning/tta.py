"""Test-time augmentation: an image's logits averaged over views of it (its mirror, shifted copies).

A view is a shift by (dy, dx) pixels with reflected borders, always taken together with its mirror image; a view
set is a list of (weight, (dy, dx)). ``--model.tta.flip`` uses the mirror alone; with ``--model.tta.shift s`` it is
airbench's set: the image 1/2, shifted by (-s, -s) and (s, s) 1/4 each, 6 passes in all. ``tta_views`` scores other
sets on trained models with the same views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Union

import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt

Views = list[tuple[float, tuple[int, int]]]


@dataclass(frozen=True)
class TTAOptions:
    """Test-time augmentation: ``--model.tta.*`` on the command line, ``model: tta:`` in a recipe.

    Args:
        flip: at evaluation, average the logits of each image and its mirror image. ``final``: do so in
            ``validate``/``test``/``predict``/``classify()`` and in the last validation of ``fit`` (the one that
            reports the trained model), but not in the validations before it, where it would cost an extra pass
            each epoch (on a CPU, about as much as the validation itself).
        shift: with ``flip``, also average over the image and its mirror shifted by this many pixels up-left and
            down-right (borders reflected): 6 passes instead of 2, weighted half unshifted, half shifted
            (airbench's test-time augmentation). 0 turns it off.
    """

    flip: Union[bool, Literal["final"]] = False
    shift: NonNegativeInt = 0


def views(shift: int) -> Views:
    """The view set of ``--model.tta.shift shift`` (0: the mirror pair alone)."""
    if not shift:
        return [(1.0, (0, 0))]
    return [(0.5, (0, 0)), (0.25, (-shift, -shift)), (0.25, (shift, shift))]


def passes(flip: bool, shift: int) -> int:
    """Forward passes per image: 1 without TTA, 2 with the mirror, 6 with the shifted pairs too."""
    return 2 * len(views(shift)) if flip else 1


def shifted(padded: torch.Tensor, dy: int, dx: int, pad: int, size: tuple[int, int]) -> torch.Tensor:
    """The view of an image moved by (dy, dx), cut from the image reflect-padded by ``pad`` (>= |dy|, |dx|)."""
    h, w = size
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def pad(x: torch.Tensor, by: int) -> torch.Tensor:
    return F.pad(x, (by, by, by, by), mode="reflect") if by else x


def averaged_logits(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, view_set: Views) -> torch.Tensor:
    """The weighted mean over ``view_set`` of each view's logits averaged with its mirror's."""
    by = max(max(abs(dy), abs(dx)) for _, (dy, dx) in view_set)
    padded = pad(x, by)
    total = None
    for weight, (dy, dx) in view_set:
        v = shifted(padded, dy, dx, by, x.shape[-2:])
        pair = (forward(v) + forward(v.flip(3))) * (weight / 2)
        total = pair if total is None else total + pair
    return total
