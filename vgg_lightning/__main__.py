import sys

from vgg_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
