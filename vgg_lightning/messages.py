"""How the project speaks. Progress and the choices made for the user go to stderr through the ``vgg_lightning``
logger: ``say`` once per run (global rank 0 under DDP), ``log`` from whichever process has something of its own to
say (a node decoding its data, a rank that hung). Results meant to be read or piped (the test table, predictions,
per-epoch lines) are printed to stdout by the callbacks in ``callbacks/reporting.py`` that make them."""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger("vgg_lightning")


class _Stderr(logging.Handler):
    """Writes each message as it is, to whatever ``sys.stderr`` is at that moment (tests and tools swap it). While
    a progress bar is drawn, through the bar (``tqdm.write``): the message gets a line of its own above the bar
    instead of landing in the middle of the bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            bars = sys.modules.get("tqdm")
            if bars is not None and getattr(bars.tqdm, "_instances", None):
                bars.tqdm.write(text, file=sys.stderr)
            else:
                sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


if not log.handlers:
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the root logger's handlers (Lightning's, a user's) would print it twice


def say(message: str) -> None:
    """Tell the user something about the run, once: from global rank 0 only."""
    if rank_zero_only.rank == 0:
        log.info(message)
