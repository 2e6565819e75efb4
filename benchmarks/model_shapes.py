"""Models shaped like the bundled ones, with random weights: for speed checks on a machine without them.

Speed and model FLOPs utilisation do not depend on the weights, so a GPU machine that cannot hold or download
the bundled models can still time them. Two steps:

    python benchmarks/model_shapes.py pack SHAPES    # here: config + tokenizer of each model (xz), no weights
    python benchmarks/model_shapes.py build SHAPES MODELS [--dtype bfloat16]   # there: random weights

``pack`` writes one folder per model: the bundled LMs (smollm2-135m, gemma3-270m) and the embedder
(minilm-l6) with their own configs and tokenizers, and ``llama3-8b``, the Llama-3-8B shape (the paper's LM:
32 layers, hidden 4096, 8 KV heads, vocabulary 128,256) with SmolLM2's tokenizer (its ids fit the vocabulary;
token counts differ a little from Llama-3's own tokenizer). ``build`` writes, for each packed folder (or
those named with ``--only``), a loadable model folder with normal(0, initializer_range) weights from a fixed
seed; ``--config-only`` unpacks a folder without weights: ``benchmarks/scoring_speed.py --random-weights``
then builds the same model on the device without writing it (for the 8B).
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
from pathlib import Path

import torch

# the Llama-3-8B shape (meta-llama/Meta-Llama-3-8B's config.json, the paper's LM)
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "vocab_size": 128256,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "use_cache": True,
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def _copy_light(src: Path, dst: Path) -> None:
    """Copy every file but the weights; tokenizer.json is xz-compressed (Gemma's is 33 MB)."""
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        skip = path.name.endswith(WEIGHT_SUFFIXES) or path.name in ("README.md", ".gitattributes")
        if path.is_dir() or skip:
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "tokenizer.json":
            out.with_name("tokenizer.json.xz").write_bytes(lzma.compress(path.read_bytes(), preset=9))
        else:
            shutil.copy2(path, out)


def pack(dst: Path) -> list[str]:
    from mop.assets import resolve_embedder, resolve_lm

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("smollm2-135m", "gemma3-270m"):
        _copy_light(Path(resolve_lm(name)), dst / name)
    _copy_light(Path(resolve_embedder("minilm-l6")), dst / "minilm-l6")
    llama = dst / "llama3-8b"
    _copy_light(Path(resolve_lm("smollm2-135m")), llama)  # the tokenizer
    (llama / "config.json").write_text(json.dumps(LLAMA3_8B, indent=2) + "\n")
    (llama / "chat_template.jinja").unlink(missing_ok=True)
    return sorted(p.name for p in dst.iterdir() if p.is_dir())


def unpack_tokenizer(folder: Path, out: Path) -> None:
    """Copy a packed folder's light files to ``out``, decompressing tokenizer.json."""
    out.mkdir(parents=True, exist_ok=True)
    for path in folder.rglob("*"):
        if path.is_dir():
            continue
        target = out / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "tokenizer.json.xz":
            target.with_name("tokenizer.json").write_bytes(lzma.decompress(path.read_bytes()))
        else:
            shutil.copy2(path, target)


def random_lm(folder: str | Path, dtype: str = "float32", device: str = "cpu", seed: int = 0):
    """A causal LM built from ``folder``'s config.json with random weights (seeded), frozen, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.to(device)  # where a version builds on the CPU whatever the default device
    model.eval()
    model.requires_grad_(False)
    return model


def build(shapes: Path, models: Path, dtype: str, only: list[str] | None = None,
          config_only: list[str] = (), seed: int = 0) -> list[str]:
    from transformers import AutoConfig, AutoModel

    built = []
    for folder in sorted(p for p in shapes.iterdir() if p.is_dir()):
        if only and folder.name not in only and folder.name not in config_only:
            continue
        out = models / folder.name
        unpack_tokenizer(folder, out)
        if folder.name in config_only:  # for --random-weights, which builds it on the device
            built.append(f"{folder.name} (config and tokenizer only)")
            continue
        torch.manual_seed(seed)
        if (folder / "modules.json").exists():  # a sentence-transformers folder: its transformer body
            model = AutoModel.from_config(AutoConfig.from_pretrained(out))
        else:
            model = random_lm(out, dtype, seed=seed)
        model.save_pretrained(out)
        built.append(f"{folder.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)")
    return built


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="config + tokenizer folders of the bundled models and the 8B shape")
    p.add_argument("shapes", type=Path)
    b = sub.add_parser("build", help="loadable random-weight model folders from packed ones")
    b.add_argument("shapes", type=Path)
    b.add_argument("models", type=Path)
    b.add_argument("--dtype", default="float32", help="LM weights' dtype (the embedder stays float32)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--only", nargs="+", default=None, help="packed folder names to build (default: all)")
    b.add_argument("--config-only", nargs="+", default=[],
                   help="packed folders to unpack without weights (for --random-weights: the 8B)")
    args = parser.parse_args(argv)
    if args.command == "pack":
        print("packed:", ", ".join(pack(args.shapes)))
    else:
        built = build(args.shapes, args.models, args.dtype, args.only, args.config_only, args.seed)
        print("built:", ", ".join(built))


if __name__ == "__main__":
    main()
