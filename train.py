"""Train a MoP gate: ``python train.py fit -c configs/quickstart.yaml`` (the same command as
``mop train``)."""

import sys

from mop.assets import offline_defaults

if __name__ == "__main__":
    offline_defaults()
    from mop.train import main

    sys.exit(main())
