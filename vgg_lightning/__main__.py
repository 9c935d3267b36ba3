"""``python -m vgg_lightning``: LightningCLI's fit/validate/test/predict, plus ``plot``, ``export`` and ``tune``."""

import sys

from vgg_lightning import STARTED


def run() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command == "plot":
        from vgg_lightning.plot import main as plot_main

        plot_main(sys.argv[2:])
        return 0
    if command == "tune":
        from vgg_lightning.tune import main as tune_main

        return tune_main(sys.argv[2:])
    if command == "export":
        from jsonargparse import CLI

        from vgg_lightning.export import export

        CLI(export, args=sys.argv[2:], as_positional=False)
        return 0
    from vgg_lightning.cli import main

    return main(started=STARTED)  # a time budget counts from the command's start, imports included


if __name__ == "__main__":
    sys.exit(run())
