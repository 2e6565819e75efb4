"""Run by tests/test_crash.py, then killed with SIGKILL: re-saves a gate export into OUT in a loop.

    python tests/export_writer.py SOURCE_EXPORT OUT MODE

Iteration i writes the source export with every log_tau set to i (so the test can tell which save a surviving
export came from) and prints ``saved i`` once it is in place. MODE ``loop`` saves as fast as it can;
``window`` turns off the atomic directory exchange and pauses between moving the old export aside and moving
the new one in (printing ``window``), the instant the fallback path is vulnerable.
"""

from __future__ import annotations

import os
import sys
import time

import torch

import mop.export
from mop.export import GateExport


def main(source: str, out: str, mode: str) -> None:
    export = GateExport.from_pretrained(source)
    if mode == "window":
        mop.export._exchange = lambda a, b: False
        real_replace = os.replace

        def slow_replace(src, dst):
            real_replace(src, dst)
            if str(src) == out:  # the old export was just moved aside
                print("window", flush=True)
                time.sleep(60)

        mop.export.os.replace = slow_replace
    i = 1
    while True:
        with torch.no_grad():
            export.gate.log_tau.fill_(float(i))
        export.save_pretrained(out)
        print(f"saved {i}", flush=True)
        i += 1


if __name__ == "__main__":
    main(*sys.argv[1:4])
