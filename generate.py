"""Generate a synthetic population: ``python generate.py ARGS`` (the same command as
``mop generate ARGS``)."""

import sys

from mop.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]], prog="generate.py"))
