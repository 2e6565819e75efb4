"""The gate export: save -> load round trip, the manifest and schema checks, the index rebuilt from the
embeddings (flat and IVF), exports of format 1, ``mop export verify``, checkpoint export, and every way a bad
export is refused (tests/test_export_fuzz.py fuzzes the loader)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    CONTEXT,
    PROMPT,
    REPO,
    as_legacy_export,
    assert_one_line_error,
    file_sha256,
    make_export,
    run_cli,
    unit_rows,
)

from mop.errors import MopError
from mop.export import FORMAT_VERSION, GateExport, load_export
from mop.gating import Gate
from mop.index import ExemplarIndex

# the two probes: an export's template that reads attributes, a user's with a conversion and a nested
# format spec
EXPORT_PROBE = "Persona: {persona.__class__.__mro__[1].__subclasses__} {exemplar.__class__.__init__}"
USER_PROBE = "{context!r:>{persona}}"
COMMITTED_GATES = [REPO / "benchmarks/results/fidelity_scale_gate",
                   REPO / "benchmarks/results/fidelity_guardian_gate"]
FILES = ["config.json", "exemplar_embeddings.npy", "exemplars.jsonl", "gate.safetensors", "manifest.json",
         "personas.jsonl"]



def _edit_config(path: Path, resign: bool = False, drop: tuple[str, ...] = (), **changes) -> Path:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    for key in drop:
        del cfg[key]
    (path / "config.json").write_text(json.dumps(cfg))
    return _resign(path) if resign else path


def _resign(path: Path) -> Path:
    """Recompute the manifest's sizes and digests, as anyone handing out a doctored export would."""
    manifest = json.loads((path / "manifest.json").read_text())
    for name in manifest["files"]:
        if (path / name).is_file():
            manifest["files"][name] = {"bytes": (path / name).stat().st_size,
                                       "sha256": file_sha256(path / name)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path



def _refused(path: Path, *fragments: str, **kwargs) -> str:
    """Loading ``path`` raises one MopError line holding every fragment."""
    with pytest.raises(MopError) as err:
        load_export(path, **kwargs)
    line = str(err.value)
    assert "\n" not in line and line, line
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_round_trip_is_exact(tmp_path):
    ref = make_export(tmp_path / "gate", dim=32, k=6, n_pool=9)
    got = GateExport.from_pretrained(ref.path)
    for name, tensor in ref.gate.state_dict().items():
        assert torch.equal(got.gate.state_dict()[name], tensor), name
    assert torch.equal(got.persona_emb, torch.from_numpy(ref.persona_emb))
    assert torch.equal(got.pool_emb, torch.from_numpy(ref.pool_emb))
    assert got.persona_ids == ref.persona_ids and got.persona_texts == ref.persona_texts
    assert got.persona_sizes == [1, 2, 3, 4, 5, 6]
    assert got.exemplars == ref.pool  # ids, context fields, labels, groups, responses
    assert torch.allclose(got.tau, torch.linspace(0.4, 1.2, 6))
    assert got.gate_config == ref.config
    assert ({k: got.config[k] for k in ref.config.to_dict()}
            == ref.config.to_dict())  # config.json is the GateConfig
    assert got.config["num_personas"] == 6 and got.config["num_exemplars"] == 9
    q = unit_rows(np.random.default_rng(1), 3, 32)
    assert np.array_equal(got.index.search(q, 4)[1], ExemplarIndex(ref.pool_emb, kind="flat").search(q, 4)[1])
    # an export re-saved from a loaded one is the same export, byte for byte (one manifest pins it all)
    again = load_export(got.save_pretrained(tmp_path / "again"))
    assert again.exemplars == got.exemplars and torch.equal(again.gate.W_e.weight, got.gate.W_e.weight)
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (ref.path / "manifest.json").read_bytes()


def test_manifest_lists_every_file_with_its_digest(tmp_path):
    path = make_export(tmp_path / "gate", dim=16).path
    assert sorted(p.name for p in path.iterdir()) == FILES  # no exemplars.faiss
    manifest = json.loads((path / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [n for n in FILES if n != "manifest.json"]  # config.json included
    for name, entry in manifest["files"].items():
        assert entry == {"bytes": (path / name).stat().st_size, "sha256": file_sha256(path / name)}, name
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION == 2 and cfg["index"] == {"kind": "flat"}
    assert "checksums" not in cfg
    # the loader's config carries the data files' digests (mop generate's gate_sha is made of them)
    assert load_export(path).config["checksums"] == {n: e["sha256"] for n, e in manifest["files"].items()
                                                     if n != "config.json"}


@pytest.mark.parametrize("name", ["gate.safetensors", "config.json", "exemplar_embeddings.npy",
                                  "personas.jsonl"])
def test_flipped_byte_or_truncated_file_is_refused(tmp_path, name):
    path = make_export(tmp_path / "gate", dim=16).path
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    _refused(path, f"{name} does not match its sha256 in manifest.json", "re-export the gate")
    (path / name).write_bytes(bytes(data[:-3]))
    _refused(path, f"{name} has {len(data) - 3:,} bytes but manifest.json lists {len(data):,}")


def test_other_embedder_dimension_is_refused(tmp_path):
    path = make_export(tmp_path / "gate", dim=16).path
    with pytest.raises(MopError,
                       match="'minilm-l6' of dimension 16, but the embedder in use has dimension 384"):
        load_export(path, expected_embed_dim=384)
    export = load_export(path, expected_embed_dim=16)
    with pytest.raises(MopError, match="dimension 16.*dimension 768"):
        export.check_embed_dim(768)


def test_newer_format_and_missing_files_are_refused(tmp_path):
    path = make_export(tmp_path / "gate", dim=16).path
    _edit_config(path, format_version=FORMAT_VERSION + 1)
    _refused(path, f"format_version {FORMAT_VERSION + 1}, newer than this MoP reads ({FORMAT_VERSION}): "
             "upgrade mop")
    path = make_export(tmp_path / "gate2", dim=16).path
    (path / "exemplar_embeddings.npy").unlink()
    _refused(path, "is missing exemplar_embeddings.npy")
    (path / "manifest.json").unlink()
    _refused(path, "is missing manifest.json")
    (path / "config.json").unlink()
    _refused(path, "is missing config.json: not a MoP gate export")
    _refused(tmp_path / "nowhere", "does not exist")


def test_paths_escaping_the_export_are_refused(tmp_path):
    path = make_export(tmp_path / "gate", dim=16).path
    outside = tmp_path / "x"
    outside.write_text("secret")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../x"] = {"bytes": 6, "sha256": file_sha256(outside)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    _refused(path, "manifest.json lists '../x', which is not a file inside the export")
    # a symbolic link leading out of the export, even with the right content and digest
    path = make_export(tmp_path / "gate2", dim=16).path
    moved = tmp_path / "personas-outside.jsonl"
    os.replace(path / "personas.jsonl", moved)
    (path / "personas.jsonl").symlink_to(moved)
    _refused(path, "personas.jsonl points outside the export directory")
    path = make_export(tmp_path / "gate3", dim=16).path
    os.replace(path / "config.json", tmp_path / "config.json")
    (path / "config.json").symlink_to(tmp_path / "config.json")
    _refused(path, "config.json points outside the export directory")


@pytest.mark.parametrize("changes, fragment", [
    ({"embed_dim": "16"}, "config.json key 'embed_dim' must be an integer between 1 and 65,536, found '16' "
                          "(a string)"),
    ({"hidden_dim": True}, "key 'hidden_dim' must be an integer between 1 and 65,536, found True "
                           "(a boolean)"),
    ({"num_exemplars": -5}, "key 'num_exemplars' must be an integer between 1 and 1,000,000,000, found -5"),
    ({"num_exemplars": 10**30}, "key 'num_exemplars' must be an integer between 1 and 1,000,000,000"),
    ({"use_chat_template": "yes"}, "key 'use_chat_template' must be true or false, found 'yes' (a string)"),
    ({"context_columns": ["movie.title"]}, "key 'context_columns' must be a list of distinct column names"),
    ({"metrics": {"val/nll": "low"}}, "key 'metrics' must be an object {name: number}"),
    ({"embedder": "\x1b[2Jminilm"}, "key 'embedder' must be a printable, non-empty string"),
    ({"index": {"kind": "hnsw"}}, "key 'index' must be {\"kind\": \"flat\"} or"),
    ({"prompt_templte": "x"}, "unknown key(s) 'prompt_templte' (did you mean 'prompt_template'?)"),
    ({"checksums": {}}, "(format 2) has unknown key(s) 'checksums'"),
    ({"drop": ("embedder",)}, "config.json lacks embedder"),
    # in range, but not what the files hold: the shapes that tie them together
    ({"num_personas": 4}, "gate.safetensors tensor log_tau is float32 of shape (3,), expected float32 of "
                          "shape (4,)"),
    ({"num_exemplars": 7}, "exemplars.jsonl has 6 exemplars but config.json says num_exemplars 7"),
    ({"hidden_dim": 8}, "tensor W_x.weight is float32 of shape (16, 16), expected float32 of shape (8, 16)"),
    ({"context_columns": ["film"]}, "prompt_template uses unknown field(s) movie"),
])
def test_config_schema_is_enforced(tmp_path, changes, fragment):
    """Each defect of config.json (re-signed, as a stranger's export would be) is refused with one line."""
    path = make_export(tmp_path / "gate", dim=16, k=3, n_pool=6).path
    changes = dict(changes)
    _edit_config(path, resign=True, drop=changes.pop("drop", ()), **changes)
    _refused(path, fragment)


def test_export_templates_are_plain_fields(tmp_path):
    """Probe 1 of the issue: config.json's prompt_template reads attributes. Refused with one line whether the
    manifest was re-signed or not, and in an export of format 1 (whose checksums skip config.json)."""
    field = "'{persona.__class__.__mro__[1].__subclasses__}'"
    path = make_export(tmp_path / "gate", dim=16, k=3, n_pool=6).path
    _edit_config(path, prompt_template=EXPORT_PROBE)
    _refused(path, "config.json has", "bytes but manifest.json lists", "modified after export")
    _resign(path)
    line = _refused(path, f"config.json prompt_template has the field {field}: a template may use only plain "
                    "fields {name} and {exemplar[FIELD]}")
    assert line.startswith(f"gate export '{path}'")
    legacy = as_legacy_export(make_export(tmp_path / "legacy", dim=16, k=3, n_pool=6).path)
    assert load_export(legacy).num_personas == 3
    _edit_config(legacy, prompt_template=EXPORT_PROBE)
    _refused(legacy, f"config.json prompt_template has the field {field}")
    for template, fragment in [("{movie.upper}", "context_template has the field '{movie.upper}'"),
                               ("{movie!r}", "context_template has the field '{movie!r}'"),
                               ("{persona}", "context_template uses the field {persona}, which is neither a "
                                             "context column (movie) nor label")]:
        _edit_config(path, resign=True, context_template=template, prompt_template=PROMPT)
        _refused(path, fragment)
    # and through the command line: one line, exit 2, no traceback
    _edit_config(path, resign=True, context_template=CONTEXT, prompt_template=EXPORT_PROBE)
    assert_one_line_error(run_cli("export", "verify", str(path)), "mop: error: gate export",
                          f"prompt_template has the field {field}")


def test_user_templates_are_plain_fields():
    """Probe 2 of the issue: a user's own template with a conversion and a nested format spec."""
    from mop.prompts import validate_prompt_template

    with pytest.raises(MopError) as err:
        validate_prompt_template(USER_PROBE, ["movie"])
    assert str(err.value) == ("prompt_template has the field '{context!r:>{persona}}': a template may use "
                              "only plain fields {name} and {exemplar[FIELD]} (no attribute access, "
                              "indexing, conversion or format spec)")
    for bad in ["{persona.__class__}", "{exemplar[movie].__class__}", "{exemplar[movie][0]}", "{movie[0]}",
                "{context:>10}", "{persona!s}", "{}", "{0}", "{exemplar[0]}", "{exemplar}", "{ persona}",
                "Persona: {persona", "Persona} {persona}"]:
        with pytest.raises(MopError, match="prompt_template (has the field|is not a valid template)"):
            validate_prompt_template(bad, ["movie"])
    validate_prompt_template("{persona} {exemplar[movie]} {exemplar[label]} {exemplar[response]} "
                             "{exemplar_context} {exemplar_response} {context} {movie} {label} {{literal}}",
                             ["movie"])


def test_bundled_config_templates_pass():
    import yaml

    from mop.data import load_dataset_config, resolve_spec
    from mop.prompts import check_plain_template, validate_prompt_template

    configs = sorted((REPO / "configs").glob("*.yaml"))
    checked = 0
    for path in configs:
        raw = yaml.safe_load(path.read_text())
        if "data" not in raw:
            continue
        spec = resolve_spec(load_dataset_config(path))
        check_plain_template(spec.context_template, "context_template")
        template = (raw.get("model") or {}).get("prompt_template")
        if template is not None:
            validate_prompt_template(template, list(spec.context_columns), bool(spec.label_column))
            checked += 1
    assert checked >= 6, checked


def test_no_faiss_index_is_written_or_read(tmp_path, monkeypatch):
    """The loader parses no serialised FAISS index: not in format 2 (none is written) and not in format 1
    (its exemplars.faiss is ignored, even when it is garbage)."""
    import faiss

    path = make_export(tmp_path / "gate", dim=16).path
    legacy = as_legacy_export(make_export(tmp_path / "legacy", dim=16).path)
    (legacy / "exemplars.faiss").write_bytes(b"IxFI" + os.urandom(64))  # its checksum no longer matches

    def refuse(*args, **kwargs):
        raise AssertionError("faiss.read_index called on the load path")

    monkeypatch.setattr(faiss, "read_index", refuse)
    for p in (path, legacy):
        assert load_export(p).index.ntotal == 12


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim))
    x = centres[rng.integers(0, 12, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_index_is_rebuilt_with_equal_search_results(tmp_path):
    """An IVF export holds its coarse centroids (not a FAISS file); loading rebuilds the index from them and
    the embeddings, and every search returns what the trained index returned, scores included."""
    base = load_export(make_export(tmp_path / "flat", dim=16, k=3, n_pool=600).path)
    ivf = ExemplarIndex(_clustered(600, 16, seed=1), kind="ivf", nlist=12, nprobe=3, seed=7, device="cpu")
    base.index = ivf
    path = base.save_pretrained(tmp_path / "ivf")
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, "ivf_centroids.npy"])
    got = load_export(path)
    assert got.config["index"] == {"kind": "ivf", "nlist": 12, "nprobe": 3, "seed": 7}
    assert (got.index.kind, got.index.nlist, got.index.nprobe, got.index.seed) == ("ivf", 12, 3, 7)
    np.testing.assert_array_equal(np.load(path / "ivf_centroids.npy"), ivf.centroids())
    queries = _clustered(200, 16, seed=2)
    exclude = [[b % 600, (7 * b) % 600] for b in range(200)]
    for k in (1, 10, 40):
        for want, found in zip(ivf.search(queries, k, exclude), got.index.search(queries, k, exclude)):
            np.testing.assert_array_equal(found, want)
    assert not np.array_equal(got.index.search(queries, 40)[1],  # approximate: it is really an IVF index
                              ExemplarIndex(got.index.embeddings, kind="flat").search(queries, 40)[1])
    # the centroids must agree with the index the config describes
    _edit_config(path, resign=True, index={"kind": "ivf", "nlist": 11, "nprobe": 3, "seed": 7})
    _refused(path, "ivf_centroids.npy holds an array of float32 of shape (12, 16), expected float32 of shape "
             "(11, 16)")
    _edit_config(path, resign=True, index={"kind": "flat"})
    _refused(path, "manifest.json lists ivf_centroids.npy, but the index is flat")


def test_format_1_export_loads_the_same(tmp_path):
    """An export written before the manifest loads as it did: same gate, pool and search results, the same
    checksums (so mop generate's gate_sha, and the rows it resumes, are unchanged); its data files are still
    verified against them, and its config.json by the schema."""
    ref = load_export(make_export(tmp_path / "gate", dim=16, k=3, n_pool=6).path)
    legacy = as_legacy_export(make_export(tmp_path / "legacy", dim=16, k=3, n_pool=6).path)
    got = load_export(legacy)
    assert got.config["checksums"] == json.loads((legacy / "config.json").read_text())["checksums"]
    assert got.exemplars == ref.exemplars and torch.equal(got.gate.W_x.weight, ref.gate.W_x.weight)
    q = unit_rows(np.random.default_rng(3), 5, 16)
    assert np.array_equal(got.index.search(q, 6)[1], ref.index.search(q, 6)[1])
    data = bytearray((legacy / "exemplars.jsonl").read_bytes())
    (legacy / "exemplars.jsonl").write_bytes(bytes(data).replace(b"exemplar review number 3",
                                                                 b"exemplar review number 4"))
    _refused(legacy, "exemplars.jsonl does not match its sha256 in config.json")
    legacy = as_legacy_export(make_export(tmp_path / "legacy2", dim=16, k=3, n_pool=6).path)
    _edit_config(legacy, num_exemplars="6")
    _refused(legacy, "key 'num_exemplars' must be an integer")
    _edit_config(legacy, num_exemplars=6, index={"kind": "flat"})
    _refused(legacy, "(format 1) has unknown key(s) 'index'")
    # re-saving converts it to format 2
    legacy = as_legacy_export(make_export(tmp_path / "legacy3", dim=16, k=3, n_pool=6).path)
    again = load_export(load_export(legacy).save_pretrained(tmp_path / "converted"))
    assert again.config["format_version"] == 2 and not (tmp_path / "converted" / "exemplars.faiss").exists()
    assert np.array_equal(again.index.search(q, 6)[1], ref.index.search(q, 6)[1])


@pytest.mark.parametrize("gate", COMMITTED_GATES, ids=lambda p: p.name)
def test_committed_gates_load_and_as_format_1_find_what_their_faiss_index_finds(gate, tmp_path):
    """The benchmarks' committed gates (format 2 since they were re-saved from format 1: same weights,
    personas, exemplars and embeddings) load; written back as format 1 (with exemplars.faiss, as they were),
    they load too, and the index rebuilt from the embeddings finds what that exemplars.faiss finds (read here,
    by the test, never by the loader)."""
    import shutil

    import faiss

    assert load_export(gate).config["format_version"] == FORMAT_VERSION
    legacy = as_legacy_export(Path(shutil.copytree(gate, tmp_path / gate.name)))
    got = load_export(legacy)
    assert got.config["format_version"] == 1 and got.index.kind == "flat"
    assert (got.num_personas, len(got.exemplars)) == (20, 1000)
    saved = faiss.read_index(str(legacy / "exemplars.faiss"))
    hx = unit_rows(np.random.default_rng(0), 64, 384)
    k = torch.arange(64) % got.num_personas
    q = got.gate.queries(torch.from_numpy(hx), got.persona_emb, k[:, None])[:, 0].numpy()
    assert np.array_equal(got.index.search(q, 20)[1], saved.search(np.ascontiguousarray(q), 20)[1])


def test_verify_prints_what_the_export_holds(tmp_path, capsys):
    from mop.cli import main

    ref = make_export(tmp_path / "gate", dim=16, k=3, n_pool=6)
    assert main(["export", "verify", str(ref.path)]) == 0
    out = capsys.readouterr().out
    for fragment in [f"gate export {ref.path}: OK, format 2", "embedder          minilm-l6 (dimension 16)",
                     "personas (K)      3", "exemplar pool     6 exemplars, index flat (exact inner product)",
                     "trained with LM   tiny", 'context template  "a {label} review of the movie {movie}"',
                     'prompt template   "You embody the persona', "num_candidates (M) 4"]:
        assert fragment in out, (fragment, out)
    manifest = json.loads((ref.path / "manifest.json").read_text())["files"]
    for name, entry in manifest.items():
        assert f"{entry['sha256']}  {name} ({entry['bytes']:,} bytes)" in out, name
    assert f"{file_sha256(ref.path / 'manifest.json')}  manifest.json" in out
    assert main(["export", "verify", str(COMMITTED_GATES[0])]) == 0
    out = capsys.readouterr().out
    assert "OK, format 2" in out and "1,000 exemplars" in out and "smollm2-135m" in out
    import shutil

    legacy = as_legacy_export(Path(shutil.copytree(COMMITTED_GATES[0], tmp_path / "legacy")))
    assert main(["export", "verify", str(legacy)]) == 0
    out = capsys.readouterr().out
    assert "OK, format 1 (legacy" in out and "1,000 exemplars" in out and "smollm2-135m" in out
    (ref.path / "notes.pkl").write_bytes(b"\x80\x04.")
    assert main(["export", "verify", str(ref.path)]) == 0
    assert "notes.pkl (not listed, never read)" in capsys.readouterr().out
    # a bad export: one line and exit status 2
    _edit_config(ref.path, resign=True, num_exemplars=7)
    assert main(["export", "verify", str(ref.path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("mop: error: gate export") and "num_exemplars 7" in captured.err


def _training_run(tmp_path, write_csv):
    """A checkpoint as train.py writes it (weights_only-loadable), its artifacts folder and its config."""
    rows = [{"text": f"review {i} about film {i % 7}", "movie": f"Film {i % 7}",
             "label": ["fresh", "rotten"][i % 2]}
            for i in range(60)]
    csv = write_csv(rows)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"data:\n  dataset:\n    source: {csv}\n    response_column: text\n"
                   "    context_columns: [movie]\n"
                   f"    label_column: label\n    context_template: '{CONTEXT}'\n")
    from mop.data import load_dataset_config, load_population

    train = load_population(load_dataset_config(cfg))["train"]
    pool = train[:10]
    rng = np.random.default_rng(3)
    dim, k = 24, 4
    art = tmp_path / "artifacts" / "abc"
    art.mkdir(parents=True)
    (art / "personas.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "text": f"You are reviewer {i}.",
                                                            "cluster_size": 3 + i}) + "\n" for i in range(k)))
    np.save(art / "persona_emb.npy", unit_rows(rng, k, dim))
    (art / "pool_ids.json").write_text(json.dumps([r.id for r in pool]))
    ExemplarIndex(unit_rows(rng, len(pool), dim), kind="flat").save(art)
    (art / "meta.json").write_text(json.dumps({"embedder": "minilm-l6", "embed_dim": dim, "num_personas": k}))
    gate = Gate(dim, k, 8, seed=5)
    ckpt = {"epoch": 1, "global_step": 30,
            "state_dict": {f"gate.{n}": t for n, t in gate.state_dict().items()},
            "hyper_parameters": {"lm": "smollm2-135m", "prompt_template": PROMPT, "use_chat_template": False,
                                 "hidden_dim": 8, "num_candidates": 4},
            "mop": {"artifacts_dir": str(art), "embedder": "minilm-l6", "embed_dim": dim, "num_personas": k,
                    "persona_texts": [f"You are reviewer {i}." for i in range(k)], "lm": "smollm2-135m"}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    return tmp_path / "last.ckpt", cfg, gate, pool


def test_export_from_checkpoint(tmp_path, write_csv):
    ckpt, cfg, gate, pool = _training_run(tmp_path, write_csv)
    from mop.export import export_checkpoint

    out = export_checkpoint(ckpt, tmp_path / "gate", config_path=str(cfg))
    got = load_export(out)
    for name, tensor in gate.state_dict().items():
        assert torch.equal(got.gate.state_dict()[name], tensor), name
    assert got.exemplars == pool and got.persona_sizes == [3, 4, 5, 6]
    assert got.config["context_template"] == CONTEXT and got.config["trained_with_lm"] == "smollm2-135m"
    assert got.config["checkpoint"] == {"file": "last.ckpt", "epoch": 1, "global_step": 30}
    # a gate trained on label-consistent exemplars (data.mask_other_label) says so, so generation does too
    assert got.config["mask_other_label"] is False and not got.gate_config.mask_other_label
    raw = torch.load(ckpt, weights_only=True)
    raw["mop"]["mask_other_label"] = True
    torch.save(raw, ckpt)
    assert load_export(export_checkpoint(ckpt, tmp_path / "gate-label", config_path=str(cfg))
                       ).gate_config.mask_other_label is True


def test_export_cli_errors_are_one_line(tmp_path, write_csv):
    ckpt, cfg, _, _ = _training_run(tmp_path, write_csv)
    assert_one_line_error(run_cli("export", str(ckpt), str(tmp_path / "g")), "does not record its dataset",
                          "--config")
    assert_one_line_error(run_cli("export", str(tmp_path / "none.ckpt"), str(tmp_path / "g")),
                          "does not exist")
    proc = run_cli("export", str(ckpt), str(tmp_path / "g"), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "4 personas, 10 exemplars" in proc.stdout


def test_save_refuses_what_the_loader_would(tmp_path):
    """An export the loader would refuse is never written (e.g. a context template with attribute access from
    a training config)."""
    import dataclasses

    good = load_export(make_export(tmp_path / "gate", dim=16, k=3, n_pool=6).path)
    bad = dataclasses.replace(good.gate_config, context_template="a {label} review of {movie.__class__}")
    with pytest.raises(MopError, match=r"^export: config.json context_template has the field "
                                       r"'\{movie.__class__\}'"):
        GateExport.save_pretrained(dataclasses.replace(good, config={**good.config, **bad.to_dict()}),
                                   tmp_path / "out")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gate"]
