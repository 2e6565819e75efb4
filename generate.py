"""Generate a synthetic population with a trained gate and any causal LM.

    python generate.py --gating runs/quickstart/gate --model gemma3-270m --data configs/quickstart.yaml \
        --split test --num-samples 200 --output out/gemma.jsonl

The same command as ``mop generate`` (see ``mop/generate.py`` and ``python generate.py --help``).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mop.generate import main

if __name__ == "__main__":
    sys.exit(main())
