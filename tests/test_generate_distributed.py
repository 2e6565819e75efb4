"""Sharded generation (mop generate --devices N, Lightning Fabric): disjoint shares, one merged output equal
to a one-process run, resumable after a kill -9 of a rank with another number of ranks (mop.outputs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, child_env, make_export, make_tiny_lm

from mop.generate import shard_batches
from mop.outputs import ShardedOutput

IDENTITY = {"model": "tiny", "adapter": None, "method": "mop", "seed": 0}


def _row(sid: str, text: str = "t") -> bytes:
    return json.dumps({"id": sid, **IDENTITY, "text": text}).encode() + b"\n"


# ---------------------------------------------------------------------------------------------- no processes
def test_shards_are_disjoint_cover_the_missing_batches_and_do_not_depend_on_the_rank_count():
    sids = [f"s{i}" for i in range(23)]
    done = {"s0", "s1", "s2", "s3", "s9"}  # batch 0 (s0-s3) is complete, batch 2 (s8-s11) is not
    for world in (1, 2, 3, 5):
        shares = [shard_batches(23, 4, sids, done, r, world) for r in range(world)]
        batches = [tuple(b) for share in shares for b in share]
        assert len(batches) == len(set(batches))  # disjoint
        # every batch but batch 0
        assert sorted(batches) == [tuple(range(s, min(23, s + 4))) for s in range(4, 23, 4)]
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced


def test_merge_orders_by_plan_drops_torn_lines_and_never_duplicates_an_id(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(_row("s0") + _row("s4"))  # an earlier one-process run
    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    (parts / "rank0-of-2.jsonl").write_bytes(_row("s1") + _row("s4", "dup") + b'{"id": "s2", "te')  # torn
    (parts / "rank1-of-3.jsonl").write_bytes(_row("s3") + _row("zz"))  # another run shape; zz: not planned
    sharded = ShardedOutput(out, IDENTITY, rank=0, world_size=1)
    assert sharded.done == {"s0", "s1", "s3", "s4", "zz"}  # the torn s2 is not done
    assert sharded.needs_merge
    sharded.append([json.loads(_row("s2", "new"))])
    assert sharded.merge(["s0", "s1", "s2", "s3", "s4"]) == 6
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["s0", "s1", "s2", "s3", "s4", "zz"]
    assert rows[2]["text"] == "new" and rows[4]["text"] == "t"  # the first line of an id wins
    assert not parts.exists()


def test_a_part_from_other_settings_is_refused(tmp_path):
    from mop.errors import MopError

    parts = tmp_path / "out.jsonl.parts"
    parts.mkdir()
    (parts / "rank1-of-2.jsonl").write_bytes(_row("s0"))
    with pytest.raises(MopError, match="other settings: seed 0 \\(now 1\\)"):
        ShardedOutput(tmp_path / "out.jsonl", {**IDENTITY, "seed": 1}, rank=0, world_size=2)


# ------------------------------------------------------------------------------------ 2 CPU ranks (gloo)
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny LM folder, a gate export for the bundled embedder's size, 5 contexts, an adapter."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("sharded")
    make_tiny_lm(seed=2, save_to=root / "lm")
    lora = get_peft_model(make_tiny_lm(seed=2)[0], LoraConfig(r=4, lora_alpha=16, target_modules=[
        "q_proj", "v_proj", "down_proj"], init_lora_weights=False))  # lora_B random: it changes the rows
    lora.save_pretrained(root / "adapter")
    gate = make_export(root / "gate", dim=384, k=4, init_std=0.2).path
    ctx = root / "contexts.jsonl"
    ctx.write_text("".join(json.dumps({"id": f"m{i}", "movie": f"Film {i}", "label": "fresh"}) + "\n"
                           for i in range(5)))
    return root, ["--gating", str(gate), "--model", str(root / "lm"), "--contexts", str(ctx),
                  "--num-samples", "24", "--no-progress"]


def _start(args: list[str], cache: Path, devices: int = 1) -> subprocess.Popen:
    extra = ["--devices", str(devices), "--accelerator", "cpu"] if devices > 1 else []
    return subprocess.Popen([sys.executable, "-m", "mop", "generate", *args, *extra], cwd=REPO,
                            env=child_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _run(args: list[str], cache: Path, devices: int = 1) -> str:
    proc = _start(args, cache, devices)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode(errors="replace")[-4000:]
    return out.decode(errors="replace")


def _by_id(path: Path) -> dict[str, bytes]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a newline: no torn line
    rows = {json.loads(line)["id"]: line for line in lines[:-1]}  # every line is valid JSON
    assert len(rows) == len(lines) - 1  # no id twice
    return rows


@pytest.mark.slow  # 2 generate.py runs, one of them 2 processes (about 25 s on 2 cores)
def test_two_ranks_write_the_rows_of_one_process(world, tmp_path):
    root, args = world
    args = [*args, "--batch-size", "4", "--max-new-tokens", "12"]
    _run([*args, "--output", str(tmp_path / "one.jsonl")], tmp_path / "cache")
    log = _run([*args, "--output", str(tmp_path / "two.jsonl")], tmp_path / "cache", devices=2)
    one, two = _by_id(tmp_path / "one.jsonl"), _by_id(tmp_path / "two.jsonl")
    assert len(two) == 24 and two == one  # byte-equal rows, by id
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()  # in plan order
    assert not (tmp_path / "two.jsonl.parts").exists()
    assert log.count("wrote 24 row(s)") == 1  # rank 0 reports for every rank
    # and what the whole population drew, from the merged file
    from mop.outputs import population_usage, usage_line

    usage = population_usage(json.loads(line) for line in two.values())
    assert usage["rows"] == 24 and log.count("the population: " + usage_line(usage) + "\n") == 1


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


@pytest.mark.slow  # 2-process run killed, then finished by 1 process, plus a reference run (about 30 s)
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the rank's process through /proc")
def test_a_rank_killed_mid_run_is_finished_by_a_one_process_rerun(world, tmp_path):
    root, args = world
    args = [*args, "--batch-size", "1", "--max-new-tokens", "48", "--stop"]
    out = tmp_path / "out.jsonl"
    proc = _start([*args, "--output", str(out)], tmp_path / "cache", devices=2)
    part = tmp_path / "out.jsonl.parts" / "rank1-of-2.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if part.exists() and part.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.005)
    rank1 = [p for p in _children(proc.pid) if "mop" in Path(f"/proc/{p}/cmdline").read_text()]
    killed = bool(rank1) and not part.with_suffix(".done").exists()
    if killed:
        os.kill(rank1[0], signal.SIGKILL)  # Lightning's child observer then kills rank 0 as well
    proc.communicate(timeout=120)
    if not killed:  # the run won the race: make its state that of a kill (no merge, rank 1 torn mid-share)
        pytest.skip("the 2-rank run finished before rank 1 could be killed")
    assert proc.returncode != 0
    assert not out.exists()  # nothing was merged
    assert part.read_bytes().count(b"\n") < 12  # rank 1 died before its share (12 of the 24) was done
    _run([*args, "--output", str(out)], tmp_path / "cache")  # the same command, 1 process
    _run([*args, "--output", str(tmp_path / "ref.jsonl")], tmp_path / "cache")
    rows = _by_id(out)
    assert len(rows) == 24 and rows == _by_id(tmp_path / "ref.jsonl")
    assert not (tmp_path / "out.jsonl.parts").exists()


@pytest.mark.slow  # 2 runs with a PEFT adapter, one of them 2 processes (about 25 s)
def test_two_ranks_with_a_stop_string_and_an_adapter_equal_one_process(world, tmp_path):
    root, args = world
    args = [*args, "--batch-size", "3", "--max-new-tokens", "24", "--stop", "e", "--adapter",
            str(root / "adapter")]
    _run([*args, "--output", str(tmp_path / "one.jsonl")], tmp_path / "cache")
    _run([*args, "--output", str(tmp_path / "two.jsonl")], tmp_path / "cache", devices=2)
    one = _by_id(tmp_path / "one.jsonl")
    assert len(one) == 24 and _by_id(tmp_path / "two.jsonl") == one
    texts = [json.loads(line)["text"] for line in one.values()]
    assert all("e" not in t for t in texts) and sum(map(len, texts)) > 0  # the stop string cut the texts
    assert {json.loads(line)["adapter"] for line in one.values()} == {str(root / "adapter")}
