"""``python -m vgg_lightning``: LightningCLI's fit/validate/test/predict, plus ``plot``."""

import sys


def run() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "plot":
        from jsonargparse import CLI

        from vgg_lightning.plot import plot

        CLI(plot, args=sys.argv[2:], as_positional=True)
        return 0
    from vgg_lightning.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
