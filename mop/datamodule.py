"""Lightning DataModule: population -> embeddings -> personas -> exemplar index, built once, loaded per rank.

``prepare_data`` (rank 0 only) loads the population, embeds contexts / responses / exemplars, synthesises the
personas and builds the FAISS index into ``artifacts_dir/<key>``, where the key hashes every input that
affects them; an unchanged configuration reuses the folder. ``setup`` (every rank) loads it. Batches are
record indices; Lightning's distributed sampler shares them across ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from mop.artifacts import ARTIFACT_FORMAT, Artifacts
from mop.data import DatasetSpec, Population, Record, load_population
from mop.errors import MopError
from mop.personas import PersonaSpec
from mop.types import NonNegativeInt, PositiveInt


def exemplar_text(population: Population, record: Record) -> str:
    """The text whose embedding h(e_j) represents an exemplar: its rendered context and response."""
    return f"{population.render_context(record)}\n{record.response}"


def other_label_positions(labels, pool: list[Record]) -> list[list[int]]:
    """Per label (None: no label), the pool positions of the exemplars whose label is another one: what
    label-consistent exemplars exclude (exemplars without a label are never excluded)."""
    by_label: dict[str, list[int]] = {}
    for j, e in enumerate(pool):
        if e.label is not None:
            by_label.setdefault(e.label, []).append(j)
    return [[] if lab is None else sorted(j for other, js in by_label.items() if other != lab for j in js)
            for lab in labels]


def exclusions(records: list[Record], pool: list[Record], same_response: bool = True,
               same_group: bool = False, other_label: bool = False) -> list[list[int]]:
    """Target masking: pool positions a record may not use as exemplar (itself; optionally same
    text/group, or another label)."""
    by_id: dict[str, list[int]] = {}
    by_text: dict[str, list[int]] = {}
    by_group: dict[str, list[int]] = {}
    for j, e in enumerate(pool):
        by_id.setdefault(e.id, []).append(j)
        by_text.setdefault(e.response.strip().lower(), []).append(j)
        if e.group is not None:
            by_group.setdefault(e.group, []).append(j)
    others = other_label_positions([r.label for r in records], pool) if other_label else None
    out = []
    for n, r in enumerate(records):
        ex = set(by_id.get(r.id, []))
        if same_response:
            ex.update(by_text.get(r.response.strip().lower(), []))
        if same_group and r.group is not None:
            ex.update(by_group.get(r.group, []))
        if others is not None:
            ex.update(others[n])
        out.append(sorted(ex))
    return out


class PopulationDataModule(pl.LightningDataModule):
    """Population data, personas and exemplar index for MoP training."""

    def __init__(
        self,
        dataset: DatasetSpec | None = None,
        personas: PersonaSpec | None = None,
        embedder: str = "minilm-l6",
        num_exemplars: PositiveInt | None = None,
        index_kind: Literal["auto", "flat", "ivf"] = "auto",
        batch_size: PositiveInt = 8,
        num_workers: NonNegativeInt = 0,
        artifacts_dir: str = "artifacts",
        mask_same_response: bool = True,
        mask_same_group: bool = False,
        mask_other_label: bool = False,
        seed: int = 0,
    ):
        """
        Args:
            dataset: the population (``mop.data.DatasetSpec``).
            personas: how personas are made (``PersonaSpec``).
            embedder: sentence embedder h (bundled name, path or hub id).
            num_exemplars: size of the exemplar pool, sampled from the training split (None: all of it).
            index_kind: FAISS index: ``flat`` (exact), ``ivf`` or ``auto`` (IVF for very large pools).
            batch_size: records per training step (each scored with M prompts, plus the exploration pairs).
            num_workers: DataLoader workers (batches are only indices; 0 is right).
            artifacts_dir: where embeddings, personas and the index are cached, keyed by their inputs.
            mask_same_response: also mask exemplars whose response equals the target's.
            mask_same_group: also mask exemplars from the target's group (e.g. the same movie).
            mask_other_label: label-consistent exemplars: also mask exemplars whose label differs from the
                target's, so Omega is learned (and, from the export, sampled) over the exemplars of the
                context's own label only.
            seed: seed of the exemplar-pool sample and of the per-epoch shuffling of the training records.
        """
        super().__init__()
        self.dataset = dataset or DatasetSpec()
        self.personas = personas or PersonaSpec()
        if isinstance(self.dataset, dict):
            self.dataset = DatasetSpec.from_dict(self.dataset)
        if isinstance(self.personas, dict):
            self.personas = PersonaSpec(**self.personas)
        if batch_size <= 0:
            raise MopError(f"batch_size must be positive, got {batch_size}")
        if num_exemplars is not None and num_exemplars <= 0:
            raise MopError(f"num_exemplars must be positive, got {num_exemplars}")
        if self.personas.num_personas <= 0:
            raise MopError(f"num_personas must be positive, got {self.personas.num_personas}")
        self.embedder = embedder
        self.num_exemplars = num_exemplars
        self.index_kind = index_kind
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.artifacts_root = Path(artifacts_dir)
        self.mask_same_response = mask_same_response
        self.mask_same_group = mask_same_group
        self.mask_other_label = mask_other_label
        self.seed = seed
        self.artifacts: Artifacts | None = None
        self.exclude: dict[str, list[list[int]]] = {}

    # ------------------------------------------------------------------------------------------- checks
    def check_sizes(self, num_candidates: int | None = None) -> None:
        """Fail fast, before any embedding or LM loading, on sizes the data cannot meet.

        Loads the population (which validates the dataset spec and file), then checks: K personas need at
        least K training records; M candidate pairs per record need at most K x pool (persona, exemplar)
        pairs.
        """
        from mop.personas import SYNTHESIZERS

        population = self.population()
        n_train = len(population["train"])
        if n_train == 0:
            raise MopError(f"the training split of '{self.dataset.source}' is empty ({population.summary()})")
        if self.mask_other_label and all(r.label is None for r in population["train"]):
            raise MopError(f"data.mask_other_label needs labelled records, but '{self.dataset.source}' has "
                           "no label (set data.dataset.label_column)")
        synth = self.personas.synthesizer
        if synth == "file":
            if not self.personas.file:
                raise MopError("data.personas.synthesizer is 'file' but data.personas.file is not set")
            from mop.personas import load_personas_jsonl

            k = len(load_personas_jsonl(self.personas.file))
        elif synth not in SYNTHESIZERS:
            raise MopError(f"data.personas.synthesizer '{synth}' is unknown; expected one of "
                           f"{', '.join([*SYNTHESIZERS, 'file'])}")
        else:
            k = self.personas.num_personas
            if k > n_train:
                raise MopError(f"data.personas.num_personas ({k}) exceeds the {n_train} training records of "
                               f"'{self.dataset.source}': lower it or use more data")
        pool = n_train if self.num_exemplars is None else min(self.num_exemplars, n_train)
        if num_candidates is not None and num_candidates > k * pool:
            raise MopError(f"model.num_candidates (M = {num_candidates}) exceeds the {k * pool} "
                           f"(persona, exemplar) pairs there are ({k} personas x {pool} exemplars)")

    # ------------------------------------------------------------------------------------------- artifacts
    def artifact_key(self) -> str:
        persona_file_hash = None
        if self.personas.synthesizer == "file" and self.personas.file:
            path = Path(self.personas.file)
            if not path.exists():
                raise MopError(f"personas file '{self.personas.file}' does not exist")
            persona_file_hash = hashlib.sha1(path.read_bytes()).hexdigest()
        spec = dataclasses.asdict(self.dataset)
        for key in ("options", "ordinal"):  # survey keys: free-text keys built before them stay valid
            if spec.get(key) is None:
                spec.pop(key, None)
        source = Path(str(self.dataset.source))
        if source.exists():  # a user file: its content, not its name, keys the artifacts
            spec["source_sha1"] = hashlib.sha1(source.read_bytes()).hexdigest()
        personas = dataclasses.asdict(self.personas)
        if not personas["null_persona"]:  # keys built before the option existed stay valid
            del personas["null_persona"]
        payload = dict(format=ARTIFACT_FORMAT, dataset=spec, personas=personas,
                       persona_file=persona_file_hash, embedder=self.embedder,
                       num_exemplars=self.num_exemplars, seed=self.seed)
        return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def artifact_path(self) -> Path:
        return self.artifacts_root / self.artifact_key()

    def _pool_records(self, population: Population) -> list[Record]:
        train = population["train"]
        if self.num_exemplars is None or self.num_exemplars >= len(train):
            return list(train)
        keep = np.sort(np.random.default_rng(self.seed).permutation(len(train))[: self.num_exemplars])
        return [train[i] for i in keep]

    def population(self) -> Population:
        """The dataset, loaded once per process (the checks, the build and setup all read it)."""
        if getattr(self, "_population", None) is None:
            self._population = load_population(self.dataset)
        return self._population

    def _build(self, out: Path) -> None:
        from mop.embed import Embedder
        from mop.index import ExemplarIndex
        from mop.personas import NULL_SOURCE, load_personas_jsonl, null_persona, synthesize_personas

        population = self.population()
        train = population["train"]
        k = self.personas.num_personas
        if k > len(train):
            raise MopError(f"num_personas ({k}) exceeds the number of training records ({len(train)})")
        embedder = Embedder(self.embedder)
        pool = self._pool_records(population)
        if self.personas.synthesizer == "file":
            if not self.personas.file:
                raise MopError("personas.synthesizer is 'file' but personas.file is not set")
            personas = load_personas_jsonl(self.personas.file)
        else:
            # a survey's answers are a few options: its personas describe clusters of respondents, each
            # clustered and described by profile and answer (mop.survey)
            texts = ([exemplar_text(population, r) for r in train] if population.spec.options
                     else [r.response for r in train])
            response_emb = embedder.encode(texts, desc="embedding responses")
            personas = synthesize_personas(
                texts, [r.id for r in train], response_emb, k,
                synthesizer=self.personas.synthesizer, lm=self.personas.lm, seed=self.personas.seed,
                labels=[r.label for r in train], text_kind=self.personas.text_kind,
                role=self.personas.role)
        if self.personas.null_persona:
            if any(p.source == NULL_SOURCE for p in personas):
                raise MopError("data.personas.null_persona is set but the personas file already holds the "
                               "persona-free component")
            personas = [*personas, null_persona()]
        context_emb = {split: _encode_unique(embedder,
                                             [population.render_context(r) for r in population[split]],
                                             f"embedding {split} contexts")
                       for split in ("train", "val", "test")}
        pool_emb = embedder.encode([exemplar_text(population, r) for r in pool], desc="embedding exemplars")
        Artifacts(directory=out, population=population, personas=personas,
                  persona_emb=embedder.encode([p.text for p in personas], desc="embedding personas"),
                  pool=pool, pool_emb=pool_emb, context_emb=context_emb,
                  index=ExemplarIndex(pool_emb, kind=self.index_kind), embedder=self.embedder).save(out)

    def prepare_data(self) -> None:
        if self.artifacts is not None:  # already loaded (or given directly, e.g. in tests)
            return
        from mop.assets import build_once

        build_once(self.artifact_path, self._build, marker=Artifacts.META)

    def setup(self, stage: str | None = None) -> None:
        if self.artifacts is not None:
            return
        path = self.artifact_path
        if not (path / Artifacts.META).exists():  # e.g. setup() without prepare_data() in a notebook
            self.prepare_data()
        self.artifacts = Artifacts.load(path, self.population())
        pool = self.artifacts.pool
        self.exclude = {s: exclusions(self.population()[s], pool, self.mask_same_response,
                                      self.mask_same_group, self.mask_other_label)
                        for s in ("train", "val", "test")}

    # ------------------------------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # The order is a function of (seed, epoch) only -- Lightning calls set_epoch() -- never of torch's
        # global RNG, so a run resumed from a checkpoint visits the records in the order an uninterrupted run
        # does; the training loader also starts a resumed epoch where the checkpoint left it
        # (``batches_done_in_epoch``).
        n = len(self.artifacts.population[split])
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            sampler = ExactDistributedSampler(_Indices(n), shuffle=shuffle, seed=self.seed)
        else:
            sampler = ExactDistributedSampler(_Indices(n), num_replicas=1, rank=0, shuffle=shuffle,
                                              seed=self.seed)
        if split == "train":
            sampler.batch_size = self.batch_size
            sampler.skip_batches = lambda: batches_done_in_epoch(self.trainer, math.ceil(len(sampler)
                                                                                          / self.batch_size))
        return DataLoader(_Indices(n), batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=_collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _encode_unique(embedder, texts: list[str], desc: str) -> np.ndarray:
    """Embed each distinct text once (contexts repeat: one per movie and label)."""
    uniq = sorted(set(texts))
    if not uniq:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    emb = embedder.encode(uniq, desc=desc)
    pos = {t: i for i, t in enumerate(uniq)}
    return emb[[pos[t] for t in texts]]


def batches_done_in_epoch(trainer, batches_per_epoch: int) -> int:
    """Training batches of the current epoch already taken when a run is resumed from a mid-epoch
    checkpoint (0 at an epoch's start, outside fit, or with gradient accumulation); ``batches_per_epoch``:
    the training loader's length, before ``limit_train_batches``.

    Lightning 2.6 alone restarts a loader that keeps no state at the epoch's first batch, so a resumed run
    would train on those batches again; the training sampler leaves them out instead. Computed from the
    restored global step, not from Lightning's batch counters, which do not survive every resume (see
    mop.module._mark_epoch_started). In an uninterrupted run this is the batch index, so a resumed run draws
    the same batches and the same exploration pairs (mop.module) as an uninterrupted one."""
    if trainer is None or getattr(trainer, "accumulate_grad_batches", 1) != 1:
        return 0
    per_epoch = trainer.num_training_batches  # set once fit has sized the loader (after its first iter())
    if per_epoch == float("inf"):  # Lightning's sizing (_parse_num_batches) of a loader of this length
        limit = trainer.limit_train_batches
        per_epoch = (min(batches_per_epoch, limit) if isinstance(limit, int)
                     else int(batches_per_epoch * limit))
    per_epoch = int(per_epoch)
    if per_epoch <= 0:
        return 0
    done = int(trainer.global_step) - int(trainer.current_epoch) * per_epoch
    return done if 0 < done < per_epoch else 0


class ExactDistributedSampler(DistributedSampler):
    """Shards records across ranks without duplicates: every record is seen exactly once per epoch.

    torch's DistributedSampler pads the shortest ranks with repeated records; here the padding is the
    index -1, which the module skips, so ranks still run the same number of steps (DDP needs that).
    ``skip_batches`` (set on the training sampler): a callable giving the batches of ``batch_size`` records
    to leave out at the start of an iteration (the part of an epoch a resumed run has already trained).
    """

    batch_size: int = 1
    skip_batches = None

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n,
                                   generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(n))
        mine = order[self.rank::self.num_replicas]
        mine = mine + [-1] * (self.num_samples - len(mine))
        skip = self.skip_batches() if self.skip_batches is not None else 0
        return iter(mine[skip * self.batch_size:])

    def __len__(self) -> int:
        return self.num_samples


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate(items: list[int]) -> torch.Tensor:
    return torch.as_tensor(items, dtype=torch.long)
