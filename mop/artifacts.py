"""The artifacts directory: everything built once before training and read by every rank and by
``mop export``.

    meta.json                      format, embedder, sizes (written last: marks a complete directory)
    personas.jsonl                 the personas (mop.personas.Persona)
    persona_emb.npy                (K, D) h(g_k)
    context_emb_{train,val,test}.npy   (n, D) h(x) of each split's contexts
    pool_ids.json                  the exemplar pool as training-record ids
    exemplars.faiss + exemplar_embeddings.npy   the exemplar index over h(e_j) (mop.index)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mop.data import Population, Record
from mop.errors import MopError
from mop.personas import Persona, PersonaList

ARTIFACT_FORMAT = 1


@dataclass
class Artifacts(PersonaList):
    """Everything the gate reads: frozen embeddings, personas, the exemplar pool and its index.

    Owns the artifacts directory's format: :meth:`save` writes it, :meth:`load` reads it (the DataModule and
    ``mop export`` both go through them). The population itself is not stored: the pool is saved as record ids
    and re-joined with the population the directory was built from.
    """

    PERSONAS = "personas.jsonl"
    PERSONA_EMB = "persona_emb.npy"
    POOL_IDS = "pool_ids.json"
    META = "meta.json"  # written last: its presence marks a complete directory
    CONTEXT_EMB = "context_emb_{split}.npy"

    directory: Path
    population: Population
    personas: list[Persona]
    persona_emb: np.ndarray  # (K, D)
    pool: list[Record]  # exemplars e_j
    pool_emb: np.ndarray  # (N, D) h(rendered exemplar)
    context_emb: dict[str, np.ndarray]  # split -> (n_split, D) h(x)
    index: object  # mop.index.ExemplarIndex over pool_emb
    embedder: str

    @property
    def embed_dim(self) -> int:
        return int(self.pool_emb.shape[1])

    @classmethod
    def files(cls) -> list[str]:
        """The files :meth:`load` needs (besides the per-split context embeddings)."""
        from mop.index import EMBEDDINGS_FILE, INDEX_FILE

        return [cls.PERSONAS, cls.PERSONA_EMB, cls.POOL_IDS, cls.META, INDEX_FILE, EMBEDDINGS_FILE]

    def save(self, directory: str | Path) -> Path:
        """Write every file into ``directory`` (meta.json last)."""
        from mop.personas import save_personas

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_personas(self.personas, out / self.PERSONAS)
        np.save(out / self.PERSONA_EMB, self.persona_emb)
        for split, emb in self.context_emb.items():
            np.save(out / self.CONTEXT_EMB.format(split=split), emb)
        self.index.save(out)
        (out / self.POOL_IDS).write_text(json.dumps([r.id for r in self.pool]))
        (out / self.META).write_text(json.dumps(
            {"format": ARTIFACT_FORMAT, "embedder": self.embedder, "embed_dim": self.embed_dim,
             "num_personas": len(self.personas), "num_exemplars": len(self.pool)}, indent=1))
        return out

    @classmethod
    def read_meta(cls, directory: str | Path) -> dict:
        """meta.json of an artifacts directory, after checking that every file :meth:`load` needs is there."""
        d = Path(directory)
        absent = [n for n in cls.files() if not (d / n).is_file()]
        if absent:
            raise MopError(f"artifacts directory '{d}' is missing {', '.join(absent)}")
        return json.loads((d / cls.META).read_text())

    @classmethod
    def load(cls, directory: str | Path, population: Population, splits=("train", "val", "test"),
             device: str = "cpu") -> Artifacts:
        """Read an artifacts directory built from ``population`` (its pool ids must be training records)."""
        from mop.index import ExemplarIndex
        from mop.personas import read_personas

        d = Path(directory)
        meta = cls.read_meta(d)
        by_id = {r.id: r for r in population["train"]}
        pool_ids = json.loads((d / cls.POOL_IDS).read_text())
        lost = [i for i in pool_ids if i not in by_id]
        if lost:
            raise MopError(f"{len(lost)} exemplar id(s) of '{d}' (e.g. '{lost[0]}') are not in the training "
                           "split of the dataset: the config differs from the one the gate was trained with")
        index = ExemplarIndex.load(d, device=device)
        return cls(directory=d, population=population, personas=read_personas(d / cls.PERSONAS),
                   persona_emb=np.load(d / cls.PERSONA_EMB, allow_pickle=False),
                   pool=[by_id[i] for i in pool_ids], pool_emb=np.asarray(index.embeddings),
                   context_emb={s: np.load(d / cls.CONTEXT_EMB.format(split=s), allow_pickle=False)
                                for s in splits if (d / cls.CONTEXT_EMB.format(split=s)).is_file()},
                   index=index, embedder=meta["embedder"])
