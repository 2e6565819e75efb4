"""Multi-process training: 2-process CPU DDP (gloo) keeps the gate in sync and lowers the loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow  # two fresh processes import Lightning and train with gloo (about 20 s on 2 cores)
def test_two_process_cpu_ddp_identical_gates_lower_loss_each_record_once(tmp_path):
    script = Path(__file__).with_name("ddp_train.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    g0, g1 = torch.load(tmp_path / "gate0.pt", weights_only=True), torch.load(tmp_path / "gate1.pt",
                                                                               weights_only=True)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name
    losses = [json.loads((tmp_path / f"loss{r}.json").read_text()) for r in (0, 1)]
    assert losses[0]["world_size"] == 2
    assert losses[0]["after"] < losses[0]["before"] - 0.05, losses[0]
    assert losses[0]["before"] == losses[1]["before"]  # validation reduced over both ranks
    # every training record scored exactly once per epoch (3 epochs), across the two ranks
    from collections import Counter

    counts = Counter(losses[0]["scored"] + losses[1]["scored"])
    assert sorted(counts) == list(range(25)) and set(counts.values()) == {3}
    # ... although the sampler padded the shorter rank with -1 so both run 4 steps an epoch (DDP needs equal
    # step counts); the padding reached training_step and was dropped before scoring
    raw = [losses[r]["raw"] for r in (0, 1)]
    assert len(raw[0]) == len(raw[1]) == 3 * 13
    assert raw[0].count(-1) + raw[1].count(-1) == 3 and -1 not in counts
    # the two ranks see disjoint records within an epoch, and a new order each epoch (seeded by epoch)
    epochs = [[raw[r][e * 13:(e + 1) * 13] for r in (0, 1)] for e in range(3)]
    for a, b in epochs:
        assert not (set(a) - {-1}) & (set(b) - {-1})
    assert epochs[0][0] != epochs[1][0]
    # validation: 9 records split 5 / 4 (+1 padding), each scored exactly once per validation pass
    val = Counter(losses[0]["scored_val"] + losses[1]["scored_val"])
    passes = losses[0]["val_passes"]
    assert passes == losses[1]["val_passes"] >= 2
    assert sorted(val) == list(range(9)) and set(val.values()) == {passes}
