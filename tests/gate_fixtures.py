"""Synthetic populations with known structure, wired into the real DataModule / LightningModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mop.data import DatasetSpec, Population, Record
from mop.datamodule import Artifacts, PopulationDataModule, exclusions


def synthetic_datamodule(n_train: int, n_val: int, k: int, dim: int = 16, n_pool: int | None = None,
                         noise: float = 0.3, seed: int = 0, batch_size: int = 8) -> PopulationDataModule:
    """Records whose context embedding points along their hidden group's direction (group = persona)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(k, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)

    def make(split: str, n: int):
        groups = rng.integers(0, k, size=n)
        emb = directions[groups] + noise * rng.normal(size=(n, dim))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        recs = [Record(id=f"{split}{i}", response=f"text of group {g} number {i}", context={"topic": f"t{g}"},
                       label=f"g{g}", group=str(g)) for i, g in enumerate(groups)]
        return recs, emb.astype(np.float32)

    train, train_emb = make("train", n_train)
    val, val_emb = make("val", n_val)
    spec = DatasetSpec(source="synthetic", response_column="text", context_columns=["topic"],
                       label_column="label", context_template="about {topic}")
    population = Population(spec=spec, splits={"train": train, "val": val, "test": val})
    pool = train[: n_pool or n_train]
    pool_emb = train_emb[: len(pool)]
    persona_emb = rng.normal(size=(k, dim)).astype(np.float32)
    persona_emb /= np.linalg.norm(persona_emb, axis=1, keepdims=True)
    from mop.index import ExemplarIndex

    dm = PopulationDataModule(dataset=spec, batch_size=batch_size)
    dm.artifacts = Artifacts(
        directory=Path("."), population=population, persona_texts=[f"persona-{i}" for i in range(k)],
        persona_ids=[f"p{i:03d}" for i in range(k)], persona_emb=persona_emb, pool=pool, pool_emb=pool_emb,
        context_emb={"train": train_emb, "val": val_emb, "test": val_emb}, index=ExemplarIndex(pool_emb),
        embedder="synthetic")
    dm.exclude = {s: exclusions(population[s], pool) for s in ("train", "val", "test")}
    return dm
