"""Population fidelity (docs/method.md section 7): real held-out texts vs generated texts, on embeddings.

Metrics, all on the same embedder's vectors of both sets:

- ``fid``: Frechet distance of Gaussians fitted to the L2-normalised embeddings (lower is better);
- ``mauve_score``: the reference ``mauve-text`` implementation on the embeddings, mean and std over k-means
  seeds (higher is better);
- ``kl_cosine``: KL(P_real || P_gen) between the histograms of within-set pairwise cosine similarities (lower
  is better: the generated population is as diverse as the real one);
- ``downstream_f1``: a logistic regression trained on one set's embeddings and labels, macro-F1 on the real
  held-out texts (higher is better).

Sets are compared at equal size: :func:`evaluate_sets` subsamples the real set and every generated set to the
same n (the smallest of their sizes, or ``sample_size``), seeded, since FID, MAUVE and the cosine histograms
all depend on the sample size. Each metric has a 95% bootstrap interval over texts
(:func:`bootstrap_metrics`); a reference row puts n real training texts through the same metrics (what a set
indistinguishable from the real texts scores); each set's diversity (:func:`distinct_n`,
:func:`vendi_score`) and lengths (:func:`length_stats`) are reported with the real set's. ``mop evaluate`` is
the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mop.errors import MopError
from mop.files import atomic_path
from mop.types import NonNegativeInt, PositiveInt

MAUVE_SEEDS = (0, 1, 2, 3, 4)
MIN_TEXTS = 10  # fewer texts than this make every metric meaningless (MAUVE needs >= 2 clusters of ~10)
KL_MAX_N = 2000
KL_BINS = 100
KL_EPS = 1e-10
BOOTSTRAP = 200  # resamples of the 95% intervals of FID, KL-cosine and F1
MAUVE_BOOTSTRAP = 20  # MAUVE's (one k-means run each, the seeds in turn)
CI_LEVEL = 0.95


# ---------------------------------------------------------------------------------------------------- metrics
def _as_2d(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise MopError(f"{name} embeddings must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise MopError(f"{name} embeddings contain NaN or infinite values")
    return x


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_pair(real, gen) -> tuple[np.ndarray, np.ndarray]:
    real, gen = _as_2d(real, "real"), _as_2d(gen, "generated")
    if real.shape[1] != gen.shape[1]:
        raise MopError(f"real and generated embeddings differ in dimension ({real.shape[1]} vs "
                       f"{gen.shape[1]}): embed both with the same embedder")
    return real, gen


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) of two Gaussians, in float64.

    ``scipy.linalg.sqrtm`` of the product; where it is not finite (near-singular covariances), a tiny multiple
    of the identity is added to both, as in pytorch-fid. The imaginary part (round-off) is dropped and the
    result, non-negative in exact arithmetic, is clipped at 0.
    """
    from scipy import linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-10
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def fid(real, gen, normalize: bool = True) -> float:
    """FID between two embedding sets (N_r, D), (N_g, D): L2-normalised first unless ``normalize=False``.

    Means and covariances (``np.cov``, ddof 1) in float64; see :func:`frechet_distance`. Lower is better.
    """
    real, gen = _check_pair(real, gen)
    if min(len(real), len(gen)) < 2:
        raise MopError("FID needs at least 2 embeddings per set")
    if normalize:
        real, gen = l2_normalise(real), l2_normalise(gen)
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False), gen.mean(0), np.cov(gen, rowvar=False))


FID_INF_FRACTIONS = (0.2, 0.3, 0.4, 0.6, 0.8, 1.0)  # the subsample sizes of FID-infinity, as shares of n
FID_INF_REPEATS = 5  # subsamples averaged per size below n


def fid_infinity(real, gen, seed: int = 0, fractions: Sequence[float] = FID_INF_FRACTIONS,
                 repeats: int = FID_INF_REPEATS) -> dict[str, Any] | None:
    """FID extrapolated to infinitely many texts (Chong and Forsyth, CVPR 2020), for two equal-size sets.

    FID is biased upwards at finite n, by about c / n with c depending on the sets (two samples of one
    distribution score well above 0: the real training texts against the real test texts, n = 1,000, score
    0.11 on MiniLM). For each size m = fraction x n (both sets subsampled to m without replacement,
    ``repeats`` times and averaged; once at m = n), FID(m) is fitted by least squares as a + c / m; ``a``,
    FID at 1 / m = 0, is the estimate (each FID(m) through :func:`_frechet_eigh`, equal to :func:`fid` up to
    round-off and several times faster; the estimate can fall a little below 0: an extrapolation). Equal-size
    sets are subsampled at the same positions on both sides (row i of a generated set was written for the
    context of real row i in ``benchmarks/fidelity.py``; a set against itself stays at 0). Returns
    ``{"fid_inf", "slope", "sizes", "fids"}``, or None with fewer than 3 distinct sizes of at least 5 texts.
    Seeded: the same seed gives every set the same real subsets.
    """
    real, gen = _check_pair(real, gen)
    n = min(len(real), len(gen))
    sizes = sorted({int(round(f * n)) for f in fractions if int(round(f * n)) >= 5})
    if len(sizes) < 3:
        return None
    real, gen = l2_normalise(real), l2_normalise(gen)
    rng = _stream(seed, "\0fid-inf")
    fids = []
    for m in sizes:
        vals = []
        for _ in range(1 if m == n else repeats):
            i = rng.choice(len(real), m, replace=False)
            j = i if len(gen) == len(real) else rng.choice(len(gen), m, replace=False)
            a, b = real[i], gen[j]
            vals.append(_frechet_eigh(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
        fids.append(float(np.mean(vals)))
    slope, intercept = np.polyfit(1.0 / np.asarray(sizes, dtype=np.float64), np.asarray(fids), 1)
    return {"fid_inf": float(intercept), "slope": float(slope), "sizes": sizes, "fids": fids}


@contextlib.contextmanager
def _faiss_warnings_dropped():
    """Drop FAISS's C-level "WARNING clustering N points to K centroids" lines (MAUVE's default n/10 clusters
    always trigger it); anything else written to stderr meanwhile is passed through."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured by pytest): leave it be
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not ln.startswith("WARNING clustering")]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextlib.contextmanager
def _svd_falls_back_to_gesvd():
    """Within it, ``scipy.linalg.svd`` (which MAUVE's PCA calls through scikit-learn) retries a failed
    divide-and-conquer SVD (LAPACK gesdd, the default) with gesvd: the same decomposition by another
    algorithm. OpenBLAS's gesdd can fail on particular matrices ("SVD did not converge": seen on a bootstrap
    resample of 200 MiniLM embeddings a side) where gesvd succeeds."""
    import scipy.linalg

    original = scipy.linalg.svd

    def svd(a, *args, **kwargs):
        try:
            return original(a, *args, **kwargs)
        except np.linalg.LinAlgError:
            if kwargs.get("lapack_driver", "gesdd") != "gesdd":
                raise
            return original(a, *args, **{**kwargs, "lapack_driver": "gesvd"})

    scipy.linalg.svd = svd
    try:
        yield
    finally:
        scipy.linalg.svd = original


def _compute_mauve(real, gen, seed: int):
    """``mauve.compute_mauve`` on features (default settings), robust to a failed gesdd (above)."""
    import mauve

    with _svd_falls_back_to_gesvd():
        return mauve.compute_mauve(p_features=real, q_features=gen, seed=int(seed), verbose=False)


def mauve_score(real, gen, seeds: Sequence[int] = MAUVE_SEEDS) -> dict[str, Any]:
    """MAUVE of the reference implementation (default settings) per k-means seed: mean, std (ddof 0), scores.

    Features are given, so ``mauve-text`` loads no model and downloads nothing. Higher is better (1: same).
    """
    real, gen = _check_pair(real, gen)
    if not seeds:
        raise MopError("MAUVE needs at least one seed")
    scores = []
    with _faiss_warnings_dropped():
        for s in seeds:
            out = _compute_mauve(real, gen, s)
            scores.append(float(out.mauve))
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "scores": scores,
            "seeds": [int(s) for s in seeds]}


def cosine_histogram(emb, max_n: int = KL_MAX_N, seed: int = 0, bins: int = KL_BINS) -> np.ndarray:
    """Normalised histogram (``bins`` on [-1, 1], +1e-10 per bin) of the cosines of all pairs i < j of a set,
    subsampled (seeded) to at most ``max_n`` embeddings."""
    emb = _as_2d(emb, "set")
    if len(emb) < 2:
        raise MopError("a cosine histogram needs at least 2 embeddings")
    if len(emb) > max_n:
        emb = emb[np.sort(np.random.default_rng(seed).choice(len(emb), max_n, replace=False))]
    x = l2_normalise(emb)
    iu = np.triu_indices(len(x), k=1)
    cos = np.clip((x @ x.T)[iu], -1.0, 1.0)  # (N (N - 1) / 2,)
    hist = np.histogram(cos, bins=bins, range=(-1.0, 1.0))[0].astype(np.float64) + KL_EPS
    return hist / hist.sum()


def kl_cosine(real, gen, max_n: int = KL_MAX_N, seed: int = 0, bins: int = KL_BINS) -> float:
    """KL(P_real || P_gen) of the within-set pairwise-cosine histograms. Lower is better (0: same
    diversity)."""
    real, gen = _check_pair(real, gen)
    p = cosine_histogram(real, max_n, seed, bins)
    q = cosine_histogram(gen, max_n, seed, bins)
    return float(np.sum(p * np.log(p / q)))


def downstream_f1(train_emb, train_labels: Sequence, test_emb, test_labels: Sequence, seed: int = 0) -> float:
    """Macro-F1 on the test set of a logistic regression trained on (train_emb, train_labels).

    Macro over the test set's labels (a label the classifier predicts but the test set lacks counts only as an
    error). Higher is better.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    train_emb, test_emb = _check_pair(train_emb, test_emb)
    train_labels, test_labels = [str(v) for v in train_labels], [str(v) for v in test_labels]
    if len(train_labels) != len(train_emb) or len(test_labels) != len(test_emb):
        raise MopError("downstream F1: one label per embedding is needed")
    if len(set(train_labels)) < 2:
        raise MopError(f"downstream F1: the training set has a single label ({train_labels[0]!r})")
    clf = LogisticRegression(max_iter=5000, random_state=seed)
    clf.fit(train_emb, train_labels)
    pred = clf.predict(test_emb)
    return float(f1_score(test_labels, pred, average="macro", labels=sorted(set(test_labels)),
                          zero_division=0))


# ------------------------------------------------------------------------------------------------- diversity
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def text_tokens(text: str) -> list[str]:
    """Lower-cased word tokens of a text: runs of letters and digits, with inner apostrophes ("it's")."""
    return _TOKEN.findall(text.lower().replace("’", "'"))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n of a set: unique n-grams / all n-grams, over every text's tokens (n-grams do not cross
    texts); 0 when the set has no n-gram."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        words = text_tokens(t)
        grams.extend(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def vendi_score(emb) -> float:
    """Vendi score of a set (Friedman & Dieng 2023): exp of the Shannon entropy of the eigenvalues of K / n,
    K the cosine-similarity kernel of the L2-normalised embeddings (1: all alike; n: mutually orthogonal).

    The non-zero eigenvalues of K / n = X X^T / n are the squared singular values of X / sqrt(n) (X: (n, D)),
    so no n x n matrix is formed.
    """
    x = l2_normalise(_as_2d(emb, "set"))
    lam = np.linalg.svd(x / np.sqrt(len(x)), compute_uv=False) ** 2
    lam = lam[lam > 1e-12]
    if not len(lam):
        return 0.0
    lam = lam / lam.sum()
    return float(np.exp(-np.sum(lam * np.log(lam))))


def length_stats(texts: Sequence[str], real_texts: Sequence[str] | None = None) -> dict[str, Any]:
    """Word counts (:func:`text_tokens`) of a set: mean, median and, given the real texts, the Wasserstein-1
    distance between the two word-count distributions (in words; 0: the same lengths)."""
    from scipy.stats import wasserstein_distance

    counts = np.array([len(text_tokens(t)) for t in texts], dtype=np.float64)
    out = {"mean_words": float(counts.mean()), "median_words": float(np.median(counts))}
    if real_texts is not None:
        real = np.array([len(text_tokens(t)) for t in real_texts], dtype=np.float64)
        out["wasserstein_words"] = float(wasserstein_distance(counts, real))
    return out


def diversity(texts: Sequence[str], emb) -> dict[str, float]:
    """distinct-1, distinct-2 (:func:`distinct_n`) and the Vendi score (:func:`vendi_score`) of a set."""
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2), "vendi": vendi_score(emb)}


# ------------------------------------------------------------------------------------------------- bootstrap
def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def prompt_copy_rates(rows: Sequence[dict[str, Any]], export, echo_n: int = 5,
                      copy_n: int = 8) -> dict[str, float]:
    """How often generated texts repeat their prompt instead of answering it (rows as mop generate writes
    them, the export they were generated with; word tokens as :func:`text_tokens`).

    - ``prompt_echo``: share of texts holding a run of ``echo_n`` words of their own prompt outside the
      exemplar's response (the instructions, the persona, the context, the attribute line);
    - ``persona_start``: share of texts starting with the first two words of the prompt's persona
      ("You are ...": a base LM continuing the persona rather than writing the text; rows with a persona
      line);
    - ``exemplar_copy``: share of the texts with an exemplar that hold a run of ``copy_n`` words of the
      exemplar's response (copying the real text the prompt showed).
    """
    from mop.data import Record
    from mop.generate import Component, build_prompt

    persona_at = {pid: k for k, pid in enumerate(export.persona_ids)}
    exemplar_at = {e.id: j for j, e in enumerate(export.exemplars)}
    echo = start = copied = with_persona = with_exemplar = 0
    for row in rows:
        words = text_tokens(row.get("text") or "")
        k = persona_at.get(row.get("persona_id"))
        j = exemplar_at.get(row.get("exemplar_id"))
        record = Record(id=str(row.get("record_id")), response="", context=row.get("context") or {},
                        label=row.get("label"))
        prompt = build_prompt(export, record, Component(k, j, 1.0, row.get("attributes")))
        response = export.exemplars[j].response if j is not None else ""
        if response:
            prompt = prompt.replace(response, "\n")
        echo += bool(_ngrams(words, echo_n) & _ngrams(text_tokens(prompt), echo_n))
        if k is not None and export.persona_texts[k]:  # the persona-free component has no persona line
            with_persona += 1
            start += words[:2] == text_tokens(export.persona_texts[k])[:2]
        if j is not None:
            with_exemplar += 1
            copied += bool(_ngrams(words, copy_n) & _ngrams(text_tokens(response), copy_n))
    n = max(1, len(rows))
    return {"prompt_echo": echo / n,
            "persona_start": start / with_persona if with_persona else None,
            "exemplar_copy": copied / with_exemplar if with_exemplar else None}


def _weighted_moments(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1) of the rows of x repeated w times: those of a bootstrap resample."""
    total = w.sum()
    mu = w @ x / total
    xc = x - mu
    return mu, (xc * w[:, None]).T @ xc / (total - 1)


def _frechet_eigh(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """:func:`frechet_distance` through symmetric eigenproblems (faster than ``sqrtm``; equal up to
    round-off): Tr((S1 S2)^1/2) = sum of the square roots of the eigenvalues of R^T S2 R, S1 = R R^T."""
    return _frechet_factored(mu1, _sqrt_factor(s1), np.trace(s1), mu2, s2)


def _sqrt_factor(s: np.ndarray) -> np.ndarray:
    """R with S = R R^T (S symmetric PSD), through its eigendecomposition."""
    w, v = np.linalg.eigh(s)
    return v * np.sqrt(np.clip(w, 0.0, None))


def _frechet_factored(mu1: np.ndarray, r: np.ndarray, trace1: float, mu2: np.ndarray,
                      s2: np.ndarray) -> float:
    """:func:`_frechet_eigh` with S1 given as its factor R (:func:`_sqrt_factor`) and trace, so that one set's
    factor serves several comparisons."""
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(r.T @ s2 @ r), 0.0, None)).sum()
    diff = mu1 - mu2
    return max(float(diff @ diff + trace1 + np.trace(s2) - 2.0 * trace_sqrt), 0.0)


class _PairBins:
    """The cosine-histogram bin of every pair i < j of a set (the subset :func:`cosine_histogram` uses), so
    the histogram of a bootstrap resample is a weighted count: pair (i, j) weighs w_i w_j; a text drawn twice
    is not paired with its own copy."""

    def __init__(self, emb: np.ndarray, max_n: int = KL_MAX_N, seed: int = 0, bins: int = KL_BINS):
        self.size, self.bins = len(emb), bins
        self.keep = np.arange(len(emb))
        if len(emb) > max_n:
            self.keep = np.sort(np.random.default_rng(seed).choice(len(emb), max_n, replace=False))
        x = l2_normalise(emb[self.keep])
        i, j = np.triu_indices(len(x), k=1)
        self.i, self.j = i.astype(np.int32), j.astype(np.int32)
        cos = np.clip((x @ x.T)[i, j], -1.0, 1.0)
        edges = np.linspace(-1.0, 1.0, bins + 1)  # np.histogram's bins: [e_k, e_k+1), the last one closed
        self.bin = np.clip(np.searchsorted(edges, cos, side="right") - 1, 0, bins - 1)

    def histogram(self, w: np.ndarray) -> np.ndarray:
        w = w[self.keep].astype(np.float64)
        hist = np.bincount(self.bin, weights=w[self.i] * w[self.j], minlength=self.bins) + KL_EPS
        return hist / hist.sum()


def _counts(rng: np.random.Generator, size: int, draws: int) -> np.ndarray:
    """(draws, size) multiplicities of bootstrap resamples (size texts drawn with replacement)."""
    out = np.zeros((draws, size), dtype=np.int64)
    for b in range(draws):
        out[b] = np.bincount(rng.integers(0, size, size), minlength=size)
    return out


def _stream(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8")), 1])


def bootstrap_interval(values: Sequence[float], point: float, level: float = CI_LEVEL,
                       bounds: tuple[float, float] = (0.0, np.inf)) -> dict[str, Any]:
    """The percentile interval of bootstrap replicates, re-centred on the point estimate.

    The replicates are shifted by the bootstrap bias estimate (their mean minus ``point``) before the
    percentiles are taken: FID, KL and MAUVE of resamples (duplicates, fewer distinct texts) are biased, and
    the plain percentile interval of FID often lies wholly above the point estimate. Clipped to ``bounds``.
    Returns ``{"ci95", "percentile", "mean", "resamples"}`` (``percentile``: the plain interval).
    """
    v = np.asarray(values, dtype=np.float64)
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    raw = np.percentile(v, q)
    lo, hi = np.clip(np.percentile(v - v.mean() + point, q), *bounds)
    return {"ci95": [float(lo), float(hi)], "percentile": [float(raw[0]), float(raw[1])],
            "mean": float(v.mean()), "resamples": int(len(v))}


def _weighted_f1(train_emb, train_labels, w_train, test_emb, test_labels, w_test, clf) -> float:
    """Macro-F1 of :func:`downstream_f1` for resamples given as multiplicities (sample weights): ``clf``
    fitted on the weighted training rows, F1 = 2 TP / (2 TP + FP + FN) per label drawn into the test
    resample (0 where undefined), as ``sklearn.metrics.f1_score`` (slow to call thousands of times)."""
    clf.fit(train_emb, train_labels, sample_weight=w_train)
    pred = clf.predict(test_emb)
    truth, w = np.asarray(test_labels), np.asarray(w_test, dtype=np.float64)
    scores = []
    for label in sorted(set(truth[w > 0].tolist())):
        t, p = truth == label, pred == label
        tp, fp, fn = w[t & p].sum(), w[~t & p].sum(), w[t & ~p].sum()
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def bootstrap_metrics(real_emb: np.ndarray, gen_emb: np.ndarray, point: dict[str, Any],
                      real_draws: np.ndarray, gen_draws: np.ndarray, real_bins: _PairBins | None = None,
                      n_boot: int | None = None, n_mauve: int = MAUVE_BOOTSTRAP,
                      mauve_seeds: Sequence[int] = MAUVE_SEEDS,
                      f1_data: dict[str, Any] | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Bootstrap intervals (:func:`bootstrap_interval`) of FID, KL-cosine, MAUVE and F1 of one comparison.

    ``real_draws`` / ``gen_draws``: (B, n) multiplicities of the real and generated n-subsets (replicate b
    resamples both); FID, KL-cosine and F1 use the first ``n_boot`` (default all B), MAUVE the first
    ``n_mauve`` (k-means seeds ``mauve_seeds`` in turn, so its interval holds the seeds' spread too). F1:
    ``f1_data`` = {"labels": the generated rows' labels, "test_emb", "test_labels", "test_draws": (B, N_test)}
    retrains the classifier on each resample of the generated texts and scores it on a resample of the real
    test texts. ``point``: the point estimates (fid, kl_cosine, mauve, f1). ``real_bins``: the real set's
    :class:`_PairBins` (made here when not given).
    """
    n_boot = len(real_draws) if n_boot is None else n_boot
    raw_gen = gen_emb
    real_emb, gen_emb = l2_normalise(real_emb), l2_normalise(gen_emb)
    out: dict[str, dict[str, Any]] = {}
    if n_boot:
        real_bins = real_bins or _PairBins(real_emb, seed=seed)
        gen_bins = _PairBins(gen_emb, seed=seed)
        fids, kls = [], []
        for wr, wg in zip(real_draws[:n_boot], gen_draws[:n_boot]):
            fids.append(_frechet_eigh(*_weighted_moments(real_emb, wr), *_weighted_moments(gen_emb, wg)))
            p, q = real_bins.histogram(wr), gen_bins.histogram(wg)
            kls.append(float(np.sum(p * np.log(p / q))))
        out["fid"] = bootstrap_interval(fids, point["fid"])
        out["kl_cosine"] = bootstrap_interval(kls, point["kl_cosine"])
    if n_mauve:
        scores = []
        with _faiss_warnings_dropped():
            for b, (wr, wg) in enumerate(zip(real_draws[:n_mauve], gen_draws[:n_mauve])):
                res = _compute_mauve(np.repeat(real_emb, wr, axis=0), np.repeat(gen_emb, wg, axis=0),
                                     mauve_seeds[b % len(mauve_seeds)])
                scores.append(float(res.mauve))
        out["mauve"] = bootstrap_interval(scores, point["mauve"], bounds=(0.0, 1.0))
    if n_boot and f1_data is not None and point.get("f1") is not None:
        from sklearn.linear_model import LogisticRegression

        labels, clf, f1s = np.asarray(f1_data["labels"]), None, []
        classes = set(labels.tolist())
        for wg, wt in zip(gen_draws[:n_boot], f1_data["test_draws"][:n_boot]):
            drawn = set(labels[wg > 0].tolist())
            if len(drawn) < 2:
                continue  # a resample with one label trains no classifier
            if drawn != classes:  # a class missing from the resample: a fresh fit, not a warm start
                fresh = LogisticRegression(max_iter=5000, random_state=seed)
                f1s.append(_weighted_f1(raw_gen, labels, wg, f1_data["test_emb"], f1_data["test_labels"], wt,
                                        fresh))
                continue
            # the same classifier warm-started from the previous resample's fit: the same optimum, sooner
            clf = clf or LogisticRegression(max_iter=5000, random_state=seed, warm_start=True)
            f1s.append(_weighted_f1(raw_gen, labels, wg, f1_data["test_emb"], f1_data["test_labels"], wt,
                                    clf))
        if f1s:
            out["f1"] = bootstrap_interval(f1s, point["f1"], bounds=(0.0, 1.0))
    return out


# --------------------------------------------------------------------------------------------------- sets
def paired_difference(real, a, b, draws: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """FID and KL-cosine of set ``a`` minus those of set ``b``, against the same real texts, with a paired
    bootstrap interval of each difference.

    Row i of ``real``, ``a`` and ``b`` (each (n, D)) must belong to the same context: the same shuffled test
    contexts, as ``benchmarks/fidelity.py`` generates them. A replicate resamples the n contexts with
    replacement and weighs all three sets by the same multiplicities, so what the contexts share (a context's
    real text and both generated texts are about one movie) cancels in the difference, where the per-set
    intervals of :func:`bootstrap_metrics` (each set resampled on its own) count it twice. Two per-set
    intervals can overlap while the paired interval of their difference excludes 0.

    Returns ``{"n", "resamples", "fid": {...}, "kl_cosine": {...}}``, each metric ``{"a", "b", "diff", "ci95",
    "a_lower_share"}``: the two point estimates, a - b, its :func:`bootstrap_interval` (re-centred, unbounded)
    and the share of replicates where a scores lower (better) than b, counted on the replicates re-centred as
    the interval is.
    """
    return paired_differences(real, a, [b], draws=draws, seed=seed)[0]


def paired_differences(real, a, others: Sequence, draws: int = BOOTSTRAP,
                       seed: int = 0) -> list[dict[str, Any]]:
    """:func:`paired_difference` of ``a`` against each set of ``others``, in one pass: every replicate draws
    its context multiplicities once and computes the real and ``a`` sides once for all the comparisons, so
    the k results equal k calls of :func:`paired_difference` (the same replicates) at about 1/k of the real
    side's cost."""
    real, a = _check_pair(real, a)
    others = [_check_pair(real, b)[1] for b in others]
    if not others:
        raise MopError("a paired comparison needs at least one set to compare with")
    if any(not len(real) == len(a) == len(b) for b in others):
        raise MopError(f"a paired comparison needs one row per context in every set: {len(real)} real, "
                       f"{len(a)} and {', '.join(str(len(b)) for b in others)} generated rows")
    if len(real) < MIN_TEXTS:
        raise MopError(f"a paired comparison needs at least {MIN_TEXTS} contexts, got {len(real)}")
    if draws < 1:
        raise MopError(f"draws must be at least 1, got {draws}")
    real, a = l2_normalise(real), l2_normalise(a)
    others = [l2_normalise(b) for b in others]
    bins_real, bins_a = _PairBins(real, seed=seed), _PairBins(a, seed=seed)
    bins = [_PairBins(b, seed=seed) for b in others]
    fid_a, kl_a = fid(real, a), kl_cosine(real, a, seed=seed)
    points = [{"fid": (fid_a, fid(real, b)), "kl_cosine": (kl_a, kl_cosine(real, b, seed=seed))}
              for b in others]
    reps = [{"fid": [], "kl_cosine": []} for _ in others]
    for w in _counts(_stream(seed, "\0paired"), len(real), draws):
        mu, cov = _weighted_moments(real, w)
        r, trace = _sqrt_factor(cov), np.trace(cov)  # the real resample's factor, once for every set
        fa = _frechet_factored(mu, r, trace, *_weighted_moments(a, w))
        p, qa = bins_real.histogram(w), bins_a.histogram(w)
        ka = float(np.sum(p * np.log(p / qa)))
        for b, bb, rep in zip(others, bins, reps):
            rep["fid"].append(fa - _frechet_factored(mu, r, trace, *_weighted_moments(b, w)))
            rep["kl_cosine"].append(ka - float(np.sum(p * np.log(p / bb.histogram(w)))))
    results = []
    for point, rep in zip(points, reps):
        out: dict[str, Any] = {"n": len(real), "resamples": int(draws)}
        for metric, (pa, pb) in point.items():
            v = np.asarray(rep[metric])
            ci = bootstrap_interval(v, pa - pb, bounds=(-np.inf, np.inf))["ci95"]
            centred = v - v.mean() + (pa - pb)  # as the interval: the resamples' bias removed
            out[metric] = {"a": pa, "b": pb, "diff": pa - pb, "ci95": ci,
                           "a_lower_share": float((centred < 0).mean())}
        results.append(out)
    return results


def _clean_labels(labels: Sequence | None, n: int, where: str) -> list[str] | None:
    """Labels as strings, or None when missing for any text (None, NaN or empty)."""
    if labels is None:
        return None
    labels = list(labels)
    if len(labels) != n:
        raise MopError(f"{where}: {n} texts but {len(labels)} labels")
    out = []
    for v in labels:
        if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip():
            return None
        out.append(str(v).strip())
    return out


def _subsample(size: int, n: int, seed: int, key: str) -> np.ndarray:
    """Sorted positions of a seeded n-subset of range(size); the stream depends on (seed, key) only."""
    if n >= size:
        return np.arange(size)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8"))])
    return np.sort(rng.choice(size, n, replace=False))


def _encode(embedder, texts: list[str], desc: str, progress: bool) -> np.ndarray:
    import inspect

    params = inspect.signature(embedder.encode).parameters
    if "desc" in params and "show_progress" in params:  # mop.embed.Embedder: a progress bar per set
        emb = embedder.encode(texts, desc=desc, show_progress=progress)
    else:
        emb = embedder.encode(texts)
    return np.asarray(emb, dtype=np.float64)


def bootstrap_method(bootstrap: int, mauve_bootstrap: int, mauve_seeds: Sequence[int]) -> str:
    """The interval method in words, as the report and the printed table state it."""
    if not bootstrap and not mauve_bootstrap:
        return "no intervals (--bootstrap 0 --mauve-bootstrap 0)"
    seeds = [int(s) for s in mauve_seeds]
    mauve_part = (f"MAUVE {mauve_bootstrap} resamples, one k-means run each with seeds "
                  f"{', '.join(map(str, seeds))} in turn" if mauve_bootstrap else "MAUVE none")
    return (f"95% CI: bootstrap over texts (the real and the generated texts resampled with replacement), "
            f"{bootstrap} resamples for FID / KL-cos / F1, {mauve_part}; percentile interval re-centred on "
            f"the point estimate")


def _compare(name: str, texts: list[str], emb: np.ndarray, labels: list[str] | None, ctx: dict[str, Any],
             row_notes: list[str], n_total: int) -> dict[str, Any]:
    """One row: the point estimates (on the two equal-n subsets), their intervals, diversity and lengths."""
    real_emb, mauve_seeds, seed = ctx["real_emb"], ctx["mauve_seeds"], ctx["seed"]
    mv = mauve_score(real_emb, emb, mauve_seeds)
    row = {"name": name, "n": len(texts), "n_total": n_total, "fid": fid(real_emb, emb),
           "mauve": mv["mean"], "mauve_std": mv["std"], "mauve_scores": mv["scores"],
           "kl_cosine": kl_cosine(real_emb, emb, seed=seed), "f1": None}
    inf = fid_infinity(real_emb, emb, seed=seed)
    row["fid_inf"] = inf["fid_inf"] if inf else None
    row["fid_inf_fit"] = inf
    if ctx["real_labels"] is not None:
        if labels is None:
            row_notes.append("no labels on every row: F1 left out")
        elif len(set(labels)) < 2:
            row_notes.append(f"a single label ({labels[0]!r}): F1 left out")
        else:
            row["f1"] = downstream_f1(emb, labels, ctx["real_emb_all"], ctx["real_labels"], seed=seed)
    draws = max(ctx["bootstrap"], ctx["mauve_bootstrap"])
    ci = {"fid": None, "mauve": None, "kl_cosine": None, "f1": None}
    details: dict[str, Any] = {}
    if draws:
        rng = _stream(seed, f"{name}\0bootstrap")
        gen_draws = _counts(rng, len(texts), draws)
        real_draws = ctx["real_draws"]
        f1_data = None
        if row["f1"] is not None:
            f1_data = {"labels": labels, "test_emb": ctx["real_emb_all"], "test_labels": ctx["real_labels"],
                       "test_draws": ctx["test_draws"]}
        details = bootstrap_metrics(real_emb, emb, row, real_draws, gen_draws, ctx["real_bins"],
                                    n_boot=ctx["bootstrap"], n_mauve=ctx["mauve_bootstrap"],
                                    mauve_seeds=mauve_seeds, f1_data=f1_data, seed=seed)
        if row["f1"] is not None and ctx["bootstrap"] and "f1" not in details:
            row_notes.append("every F1 resample drew a single label: no F1 interval")
        ci.update({k: v["ci95"] for k, v in details.items()})
    row["ci95"] = ci
    row["bootstrap"] = details
    row["diversity"] = diversity(texts, emb)
    row["length"] = length_stats(texts, ctx["real_sub_texts"])
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        row_notes.append(f"{empty} empty text(s) in the sample")
    row["notes"] = row_notes
    return row


def evaluate_sets(real_texts: Sequence[str], real_labels: Sequence | None,
                  synthetic: dict[str, tuple[Sequence[str], Sequence | None]], embedder,
                  reference_train: tuple[Sequence[str], Sequence | None] | None = None,
                  sample_size: int | None = None, seed: int = 0, mauve_seeds: Sequence[int] = MAUVE_SEEDS,
                  plot: str | Path | None = None, progress: bool = True, bootstrap: int = BOOTSTRAP,
                  mauve_bootstrap: int = MAUVE_BOOTSTRAP) -> dict[str, Any]:
    """Every metric for each synthetic set against the real held-out set, at one sample size n.

    ``embedder``: a :class:`mop.embed.Embedder` (or a bundled name / path, or any object with
    ``encode(texts) -> (N, D)``). n is the smallest of the real and synthetic sets' sizes, or ``sample_size``
    (which must not exceed it); the real set is subsampled once (seed) and every synthetic set on its own
    seeded stream. FID, MAUVE and KL-cosine compare the two n-subsets. Downstream F1 trains on a synthetic
    n-subset (its rows' labels) and tests on all the labelled real texts. ``reference_train`` (real training
    texts, labels or None) gives the reference row: n of them through the same metrics, what a set
    indistinguishable from the real texts scores. ``plot``: a PNG path for :func:`plot_projection`.

    95% intervals (:func:`bootstrap_metrics`): ``bootstrap`` resamples of both sets' texts for FID, KL-cosine
    and F1 (whose classifier is retrained on each resample and scored on resampled real test texts),
    ``mauve_bootstrap`` for MAUVE; the same real resamples for every row; 0: none.

    Returns ``{"n", "seed", "embedder", "mauve_seeds", "bootstrap", "real", "rows", "reference", "notes"}``;
    each row (and the reference) holds name, n, n_total, fid, mauve, mauve_std, mauve_scores, kl_cosine, f1
    (None where not computable), ci95 ({metric: [lo, hi] or None}), bootstrap (per metric: the plain
    percentile interval, the replicates' mean, the resample count), diversity (distinct_1, distinct_2,
    vendi), length (mean_words, median_words, wasserstein_words against the real n-subset) and notes;
    ``real`` holds the real n-subset's diversity and length.
    """
    if isinstance(embedder, (str, Path)):
        from mop.embed import Embedder

        embedder = Embedder(str(embedder))
    real_texts = list(real_texts)
    if not synthetic:
        raise MopError("no synthetic set to evaluate")
    if bootstrap < 0 or mauve_bootstrap < 0:
        raise MopError(f"bootstrap resamples must be >= 0, got {bootstrap} and {mauve_bootstrap}")
    sizes = {"real": len(real_texts), **{name: len(texts) for name, (texts, _) in synthetic.items()}}
    small = {k: v for k, v in sizes.items() if v < MIN_TEXTS}
    if small:
        raise MopError("every set needs at least %d texts; too few in: %s" % (
            MIN_TEXTS, ", ".join(f"{k} ({v})" for k, v in small.items())))
    for where, texts in [("real", real_texts), *((name, t) for name, (t, _) in synthetic.items())]:
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise MopError(f"{where}: text {bad} is {type(texts[bad]).__name__}, expected a string")
    n_max = min(sizes.values())
    if sample_size is None:
        n = n_max
    else:
        if sample_size < MIN_TEXTS:
            raise MopError(f"sample size must be at least {MIN_TEXTS}, got {sample_size}")
        if sample_size > n_max:
            smallest = min(sizes, key=sizes.get)
            raise MopError(f"sample size {sample_size} exceeds the smallest set ({smallest}: {n_max} texts)")
        n = int(sample_size)
    notes: list[str] = []
    real_labels = _clean_labels(real_labels, len(real_texts), "real set")
    if real_labels is not None and len(set(real_labels)) < 2:
        notes.append("the real set has a single label: no downstream F1")
        real_labels = None
    elif real_labels is None:
        notes.append("the real set has no (complete) labels: no downstream F1")

    real_emb_all = _encode(embedder, real_texts, "embedding real", progress)  # (N_r, D)
    real_idx = _subsample(len(real_texts), n, seed, "\0real")
    real_emb = real_emb_all[real_idx]  # (n, D)
    real_sub_texts = [real_texts[i] for i in real_idx]
    draws = max(bootstrap, mauve_bootstrap)
    ctx = {"real_emb": real_emb, "real_emb_all": real_emb_all, "real_labels": real_labels, "seed": seed,
           "mauve_seeds": tuple(mauve_seeds), "real_sub_texts": real_sub_texts, "bootstrap": bootstrap,
           "mauve_bootstrap": mauve_bootstrap,
           # the same real resamples for every row, so that rows' intervals are comparable
           "real_draws": _counts(_stream(seed, "\0real\0bootstrap"), n, draws),
           "test_draws": _counts(_stream(seed, "\0f1 test\0bootstrap"), len(real_texts),
                                 bootstrap if real_labels is not None else 0),
           "real_bins": _PairBins(l2_normalise(real_emb), seed=seed) if bootstrap else None}

    rows, sets_for_plot = [], {}
    for name, (texts, labels) in synthetic.items():
        texts = list(texts)
        idx = _subsample(len(texts), n, seed, name)
        emb = _encode(embedder, [texts[i] for i in idx], f"embedding {name}", progress)  # (n, D)
        if emb.shape[1] != real_emb.shape[1]:
            raise MopError(f"set '{name}': embedding dimension {emb.shape[1]} differs from the real set's")
        labels = _clean_labels(labels, len(texts), f"set '{name}'")
        sub_labels = [labels[i] for i in idx] if labels is not None else None
        rows.append(_compare(name, [texts[i] for i in idx], emb, sub_labels, ctx, [], len(texts)))
        sets_for_plot[name] = (emb, sub_labels)

    reference = None
    if reference_train is not None:
        ref_texts = list(reference_train[0])
        ref_labels = _clean_labels(reference_train[1], len(ref_texts), "reference training set")
        if real_labels is not None and (ref_labels is None or len(set(ref_labels)) < 2):
            notes.append("the reference training set lacks labels (or has one label): no reference F1")
        m = min(n, len(ref_texts))
        if m < MIN_TEXTS:
            notes.append(f"the reference training set has only {m} texts: no reference row")
        else:
            idx = _subsample(len(ref_texts), m, seed, "\0reference")
            ref_emb = _encode(embedder, [ref_texts[i] for i in idx], "embedding reference", progress)
            ref_ctx = ctx
            if m < n:
                notes.append(f"the reference training set has only {m} texts (< n = {n}): its row compares "
                             f"{m} real test texts")
                keep = _subsample(n, m, seed, "\0reference real")
                kept = real_emb[keep]
                ref_ctx = {**ctx, "real_emb": kept, "real_sub_texts": [real_sub_texts[i] for i in keep],
                           "real_draws": _counts(_stream(seed, "\0real\0bootstrap"), m, draws),
                           "real_bins": _PairBins(l2_normalise(kept), seed=seed) if bootstrap else None}
            sub_labels = [ref_labels[i] for i in idx] if ref_labels is not None else None
            if sub_labels is not None and len(set(sub_labels)) < 2:
                sub_labels = None
            ref_notes: list[str] = []
            reference = _compare("real train (reference)", [ref_texts[i] for i in idx], ref_emb, sub_labels,
                                 ref_ctx, ref_notes, len(ref_texts))
            reference["notes"] = [t for t in ref_notes if "F1 left out" not in t]

    result = {"n": n, "seed": seed, "embedder": getattr(embedder, "name", type(embedder).__name__),
              "mauve_seeds": [int(s) for s in mauve_seeds],
              "bootstrap": {"method": bootstrap_method(bootstrap, mauve_bootstrap, mauve_seeds),
                            "resamples": bootstrap, "mauve_resamples": mauve_bootstrap, "level": CI_LEVEL},
              "real": {"n_total": len(real_texts), "n_f1_test": len(real_texts) if real_labels else 0,
                       "diversity": diversity(real_sub_texts, real_emb),
                       "length": length_stats(real_sub_texts)},
              "rows": rows, "reference": reference, "notes": notes}
    if plot is not None:
        plot_projection(real_emb, [real_labels[i] for i in real_idx] if real_labels else None, sets_for_plot,
                        plot, scores={r["name"]: r["fid"] for r in rows})
    return result


# ------------------------------------------------------------------------------------------------------ plot
def class_ellipse(points2d: np.ndarray, n_std: float = 2.0) -> tuple[np.ndarray, float, float, float]:
    """(center, width, height, angle in degrees) of the n-std ellipse of 2-D points' covariance."""
    center = points2d.mean(0)
    cov = np.cov(points2d, rowvar=False) if len(points2d) > 1 else np.zeros((2, 2))
    vals, vecs = np.linalg.eigh(cov)  # ascending
    vals = np.clip(vals, 0.0, None)
    angle = float(np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1])))
    return center, 2 * n_std * float(np.sqrt(vals[1])), 2 * n_std * float(np.sqrt(vals[0])), angle


def plot_projection(real_emb, real_labels: Sequence | None,
                    sets: dict[str, tuple[np.ndarray, Sequence | None]], path: str | Path,
                    scores: dict[str, float] | None = None) -> Path:
    """A PNG with one panel per set: PCA (fitted on the real embeddings) to 2-D, the real points in light
    grey, the set's points coloured by label, and each real class's 2-std ellipse; titled with the set's FID
    (``scores[name]``, else computed). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse
    from sklearn.decomposition import PCA

    real_emb = l2_normalise(_as_2d(real_emb, "real"))
    if not sets:
        raise MopError("nothing to plot: no synthetic set")
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise MopError(f"plot directory '{path.parent}' does not exist")
    pca = PCA(n_components=2, random_state=0).fit(real_emb)
    real2 = pca.transform(real_emb)  # (N_r, 2)
    classes = sorted(set(real_labels)) if real_labels is not None else []
    for _, labels in sets.values():
        classes += sorted({str(v) for v in labels or []} - set(classes))
    cmap = plt.get_cmap("tab10")
    colour = {c: cmap(i % 10) for i, c in enumerate(classes)}

    cols = min(3, len(sets))
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    for ax, (name, (emb, labels)) in zip(axes.flat, sets.items()):
        emb = l2_normalise(_as_2d(emb, name))
        gen2 = pca.transform(emb)
        ax.scatter(real2[:, 0], real2[:, 1], s=6, c="0.8", alpha=0.6, linewidths=0, label="real")
        if labels is None:
            ax.scatter(gen2[:, 0], gen2[:, 1], s=8, color="tab:blue", alpha=0.7, linewidths=0,
                       label="generated")
        else:
            labels = [str(v) for v in labels]
            for c in classes:
                mask = np.array([lab == c for lab in labels])
                if mask.any():
                    ax.scatter(gen2[mask, 0], gen2[mask, 1], s=8, color=colour[c], alpha=0.7, linewidths=0,
                               label=c)
        if real_labels is not None:
            for c in sorted(set(real_labels)):
                mask = np.array([lab == c for lab in real_labels])
                center, w, h, angle = class_ellipse(real2[mask])
                ax.add_patch(Ellipse(center, w, h, angle=angle, fill=False, edgecolor=colour[c],
                                     linewidth=1.5, linestyle="--"))
        value = (scores or {}).get(name)
        if value is None:
            value = fid(real_emb, emb)
        ax.set_title(f"{name}\nFID {value:.3f}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="best", markerscale=2)
    fig.suptitle("PCA of the real embeddings; dashed: real classes' 2-std ellipses", fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- file input
def read_texts(path: str | Path, text_field: str | None = None, label_field: str = "label"
               ) -> tuple[list[str], list[str] | None, dict[str, Any]]:
    """(texts, labels or None, first row) of a CSV / JSONL / Parquet file.

    The text column is ``text_field``, else ``text``, else ``response``; labels come from ``label_field`` when
    every row has one.
    """
    from mop.data import read_table

    return _table_texts(read_table(path), path, text_field, label_field)


def _table_texts(df, path: str | Path, text_field: str | None = None, label_field: str = "label"
                 ) -> tuple[list[str], list[str] | None, dict[str, Any]]:
    """:func:`read_texts` of a table already read from ``path``."""
    fields = [text_field] if text_field else ["text", "response"]
    column = next((f for f in fields if f in df.columns), None)
    if column is None:
        raise MopError(f"'{path}' has no text field ({' or '.join(repr(f) for f in fields)}); found columns: "
                       f"{', '.join(map(str, df.columns))}")
    texts = [str(t) for t in df[column]]
    labels = None
    if label_field in df.columns:
        labels = [str(v).strip() for v in df[label_field]]
        if any(not v or v == "None" for v in labels):
            labels = None
    first = df.iloc[0].to_dict() if len(df) else {}
    return texts, labels, first


def set_name(path: str | Path, first_row: dict[str, Any]) -> str:
    """``<method>/<model>`` from a generated file's first row, else the file's stem."""
    method, model = (str(first_row.get(k, "") or "").strip() for k in ("method", "model"))
    if method and model and method != "None" and model != "None":
        return f"{method}/{model}"
    return Path(path).name.split(".")[0]


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write JSON to a temporary file next to ``path`` and rename it into place."""
    path = Path(path).expanduser()
    with atomic_path(path, fsync=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _cell(value: float | None, ci: Sequence[float] | None, digits: int) -> str:
    if value is None:
        return "–"
    text = f"{value:.{digits}f}"
    return text + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _diversity_cells(div: dict[str, float], length: dict[str, float]) -> str:
    w1 = length.get("wasserstein_words")
    return (f"{div['distinct_1']:.3f} / {div['distinct_2']:.3f} | {div['vendi']:.1f} | "
            f"{length['mean_words']:.1f} / {length['median_words']:g} | "
            + (f"{w1:.2f}" if w1 is not None else "–"))


def format_table(result: dict[str, Any]) -> str:
    """The markdown table printed by ``mop evaluate``: one row per set, the reference row (real training texts
    through the same metrics) and the real texts' own diversity and lengths; then the interval method."""
    lines = ["| set | n | FID ↓ [95% CI] | FID∞ ↓ | MAUVE ↑ [95% CI] | KL-cos ↓ [95% CI] | F1 ↑ [95% CI] | "
             "distinct-1 / -2 | Vendi | words mean / median | length W1 ↓ |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ref = result.get("reference")
    for r in result["rows"] + ([ref] if ref else []):
        ci = r.get("ci95") or {}
        lines.append(f"| {r['name']} | {r['n']} | {_cell(r['fid'], ci.get('fid'), 4)} | "
                     f"{_cell(r.get('fid_inf'), None, 4)} | {_cell(r['mauve'], ci.get('mauve'), 3)} | "
                     f"{_cell(r['kl_cosine'], ci.get('kl_cosine'), 4)} | "
                     f"{_cell(r['f1'], ci.get('f1'), 3)} | {_diversity_cells(r['diversity'], r['length'])} |")
    real = result["real"]
    lines.append(f"| real (evaluated split) | {result['n']} | – | – | – | – | – | "
                 f"{_diversity_cells(real['diversity'], real['length'])} |")
    method = (result.get("bootstrap") or {}).get("method")
    if method:
        lines.append(f"\n{method}; FID∞: FID extrapolated to infinitely many texts (a fit of FID over 1 / n "
                     "on subsamples); length W1: Wasserstein-1 distance of the word counts to the real "
                     "texts'.")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- CLI
def _make_embedder(name: str, device: str = "auto", batch_size: int = 64):
    """The embedder for ``mop evaluate`` (a seam for tests): on ``device`` (auto: the GPU when there is one),
    ``batch_size`` texts per forward pass."""
    from mop.embed import Embedder

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Embedder(name, device=device, batch_size=batch_size)


def _check_output(path: str | None, what: str, overwrite: bool) -> None:
    if path is None:
        return
    p = Path(path).expanduser()
    if not p.parent.is_dir():
        raise MopError(f"{what} directory '{p.parent}' does not exist (create it first)")
    if p.is_dir():
        raise MopError(f"{what} '{path}' is a directory")
    if p.exists() and not overwrite:
        raise MopError(f"{what} '{path}' exists; pass --overwrite to replace it")


def _synthetic_sets(synthetic: list[str], names: list[str] | None):
    """{name: (texts, labels)}, {name: file} and {name: each row's record_id, or None where a row lacks one}
    of the generated files, named by --names or by their rows."""
    from mop.data import read_table

    sets, files, record_ids = {}, {}, {}
    for n, path in enumerate(synthetic):
        df = read_table(path)
        texts, labels, first = _table_texts(df, path)
        name = names[n] if names else set_name(path, first)
        if name in sets:
            if names:
                raise MopError(f"--names: duplicate name '{name}'")
            name = f"{name} ({Path(path).name})"
        sets[name] = (texts, labels)
        files[name] = str(path)
        has_ids = "record_id" in df.columns and not df["record_id"].isna().any()
        record_ids[name] = [str(v) for v in df["record_id"]] if has_ids else None
    return sets, files, record_ids


def _configured_embedder(config: str) -> str | None:
    """The config's data.embedder, when it names one."""
    from mop.data import config_data_section, read_config

    configured = config_data_section(read_config(config)).get("embedder")
    return configured if isinstance(configured, str) else None


def _real_sets(config: str | None, real: str | None, split: str, reference_split: str | None,
               reference: str | None, text_field: str | None):
    """(real texts, their labels, the reference training set or None, where they came from, the config's
    embedder or None): from a split of a config's dataset, or from files."""
    if config:
        from mop.data import load_dataset_config, load_population

        pop = load_population(load_dataset_config(config))
        records = pop[split]
        if not records:
            raise MopError(f"split '{split}' of the dataset of '{config}' has no records")
        labels = [r.label for r in records] if pop.spec.label_column else None
        ref_split, reference_set = reference_split or "train", None
        if ref_split != "none":
            ref = pop[ref_split]
            ref_labels = [r.label for r in ref] if pop.spec.label_column else None
            reference_set = ([r.response for r in ref], ref_labels) if ref else None
        return ([r.response for r in records], labels, reference_set,
                {"data": str(config), "split": split, "reference_split": ref_split},
                _configured_embedder(config))
    texts, labels, _ = read_texts(real, text_field)
    reference_set = None
    if reference:
        ref_texts, ref_labels, _ = read_texts(reference, text_field)
        reference_set = (ref_texts, ref_labels)
    return texts, labels, reference_set, {"real": str(real), "reference": reference}, None


def reference_draw(size: int, n: int, seed: int) -> np.ndarray:
    """The positions of the n reference texts drawn from a training split of ``size`` records (a seeded
    permutation's first n): the draw of ``benchmarks/fidelity.py`` and of ``mop evaluate --same-contexts``."""
    return np.random.default_rng(seed).permutation(size)[:n]


def _same_context_sets(config: str, split: str, sets: dict, files: dict, ids: dict, sample_size: int | None,
                       seed: int, reference_split: str | None):
    """(real texts, labels, reference set, source, sets cut to n) for ``--same-contexts``: the real texts of
    the records the rows were generated for (``ids``: each set's record_id per row), in row order, the first
    n rows of every set."""
    import dataclasses

    from mop.data import load_dataset_config, load_population

    lacking = [files[name] for name, v in ids.items() if v is None]
    if lacking:
        raise MopError("--same-contexts reads each row's record_id (rows as mop generate writes them); none "
                       "in " + ", ".join(lacking))
    n = sample_size or min(len(v) for v in ids.values())
    short = [f"{files[name]} ({len(v)})" for name, v in ids.items() if len(v) < n]
    if short:
        raise MopError(f"--sample-size {n} is more than the rows of " + ", ".join(short))
    (first_name, first), *others = ((name, v[:n]) for name, v in ids.items())
    for name, v in others:
        row = next((i for i, (a, b) in enumerate(zip(first, v)) if a != b), None)
        if row is not None:
            raise MopError(f"--same-contexts: {files[name]} was generated for other contexts than "
                           f"{files[first_name]} (row {row + 1}: {v[row]} against {first[row]}); generate "
                           "every set with the same --seed, --shuffle and split")
    spec = load_dataset_config(config)
    pop = load_population(dataclasses.replace(spec, max_records=None))  # every record, whatever the caps
    by_id = {r.id: r for r in pop[split]}
    unknown = sorted(set(first) - set(by_id))
    if unknown:
        raise MopError(f"--same-contexts: record(s) {', '.join(unknown[:5])} of {files[first_name]} are not "
                       f"in split '{split}' of '{config}'")
    real = [by_id[i] for i in first]
    labelled = pop.spec.label_column is not None
    ref_split, reference_set = reference_split or "train", None
    if ref_split != "none":
        ref = [pop[ref_split][i] for i in reference_draw(len(pop[ref_split]), n, seed)]
        if ref:
            reference_set = ([r.response for r in ref], [r.label for r in ref] if labelled else None)
    cut = {name: (texts[:n], labels[:n] if labels else None) for name, (texts, labels) in sets.items()}
    source = {"data": str(config), "split": split, "reference_split": ref_split, "same_contexts": True}
    return ([r.response for r in real], [r.label for r in real] if labelled else None, reference_set, source,
            cut)


def evaluate_command(
    synthetic: list[str],
    output: str,
    config: str | None = None,
    real: str | None = None,
    split: Literal["train", "val", "test"] = "test",
    same_contexts: bool = False,
    names: list[str] | None = None,
    overwrite: bool = False,
    plot: str | None = None,
    embedder: str | None = None,
    sample_size: PositiveInt | None = None,
    reference_split: Literal["train", "val", "test", "none"] | None = None,
    reference: str | None = None,
    text_field: str | None = None,
    seed: int = 0,
    mauve_seeds: PositiveInt = len(MAUVE_SEEDS),
    bootstrap: NonNegativeInt = BOOTSTRAP,
    mauve_bootstrap: NonNegativeInt = MAUVE_BOOTSTRAP,
    device: str = "auto",
    embed_batch_size: PositiveInt = 64,
    progress: bool = True,
    group_by: str | None = None,
) -> int:
    """Compare generated populations with the real held-out texts on sentence embeddings.

    For a survey (a config whose dataset has ``options``) the evaluation is mop.survey's instead: per
    question, the simulated against the real answer distributions and the real answers' log-likelihood and
    Brier score under each set's option probabilities, with the real-against-real and logistic-regression
    references (docs/cli.md, "Surveys").

    FID, MAUVE, KL of the pairwise-cosine histograms and downstream macro-F1, every set subsampled to the same
    n, each with a 95% bootstrap interval; a reference row of real training texts through the same metrics;
    each set's diversity (distinct-1/-2, Vendi) and lengths. The real texts are a split of a config's dataset
    (-c) or a file (--real).

    Args:
        synthetic: generated JSONL files (rows with text and label, as written by mop generate); CSV / Parquet
            with a text column also work.
        output: the JSON report path (its directory must exist).
        config: a train config (its data.dataset section) or a dataset YAML holding the real texts.
        real: a CSV / JSONL / Parquet of the real held-out texts: a text (or response) column and an optional
            label column.
        split: the split of the config's dataset holding the real held-out texts.
        same_contexts: with -c: the real texts are those of the records the rows were generated for (each
            row's record_id), in row order, and every set's first n rows are used (n: --sample-size, else the
            smallest set), as benchmarks/fidelity.py evaluates: the committed sets give its tables' figures.
            Every set must be generated for the same records in the same order; the reference row draws n
            training texts with --seed.
        names: one name per synthetic file (default: <method>/<model> of its rows, else the file stem).
        overwrite: replace an existing output / plot.
        plot: a PNG: PCA of the real embeddings, one panel per synthetic set.
        embedder: the sentence embedder for both sides (default: the config's data.embedder, else minilm-l6).
        sample_size: n texts per set (default: the smallest set's size); every set is subsampled to n, seeded.
        reference_split: with a config: the split of real texts for the reference row, n of them through
            every metric: train (default), val or test (not the evaluated --split), or none: no reference row.
        reference: with --real: a CSV / JSONL of real training texts (labels optional: F1) for the reference
            row.
        text_field: the text column of --real and --reference (default: text, else response).
        seed: seed of the subsampling and the classifiers.
        mauve_seeds: the number of k-means seeds (0..N-1) MAUVE is averaged over.
        bootstrap: resamples of the texts for the 95% intervals of FID, KL-cos and F1 (0: none).
        mauve_bootstrap: resamples for MAUVE's interval (one k-means run each, the seeds in turn; 0: none).
        device: where the texts are embedded: auto (the GPU when there is one), cpu, cuda, cuda:N.
        embed_batch_size: texts per embedding forward pass (each set is embedded in such batches, with a
            progress bar; large sets never sit on the device at once).
        progress: show progress bars.
        group_by: a survey: the context column whose groups the per-group distances are taken within (e.g.
            ideology); default none.
    """
    import time

    t0 = time.perf_counter()
    if (config is None) == (real is None):
        raise MopError("pass exactly one of -c/--config CONFIG and --real FILE (the real held-out texts)")
    if not synthetic:
        raise MopError("--synthetic needs at least one file")
    _check_output(output, "--output", overwrite)
    _check_output(plot, "--plot", overwrite)
    if plot and Path(plot).expanduser().resolve() == Path(output).expanduser().resolve():
        raise MopError("--plot and --output must be different files")
    if names is not None and len(names) != len(synthetic):
        raise MopError(f"--names gives {len(names)} name(s) for {len(synthetic)} --synthetic file(s)")
    if sample_size is not None and sample_size < MIN_TEXTS:
        raise MopError(f"--sample-size must be at least {MIN_TEXTS}, got {sample_size}")
    if real and reference_split not in (None, "none"):
        raise MopError("--reference-split goes with -c/--config; with --real pass --reference FILE")
    if config and reference:
        raise MopError("--reference goes with --real; with -c/--config use --reference-split")
    if same_contexts and not config:
        raise MopError("--same-contexts reads the real texts from -c/--config's dataset, not from --real")
    if config and (reference_split or "train") == split:
        raise MopError(f"--reference-split '{split}' is the evaluated split itself")
    from mop.data import load_dataset_config, resolve_spec

    if config and resolve_spec(load_dataset_config(config)).options:  # a survey: options, not texts
        from mop.survey import evaluate_command as evaluate_survey_command

        return evaluate_survey_command(synthetic, output, config, split, names, reference_split or "train",
                                       group_by, seed, bootstrap)
    if group_by is not None:
        raise MopError("--group-by goes with a survey config (a dataset with options)")

    sets, files, record_ids = _synthetic_sets(synthetic, names)
    if same_contexts:
        real_texts, real_labels, reference_set, real_source, sets = _same_context_sets(
            config, split, sets, files, record_ids, sample_size, seed, reference_split)
        configured = _configured_embedder(config)
    else:
        real_texts, real_labels, reference_set, real_source, configured = _real_sets(
            config, real, split, reference_split, reference, text_field)
    embedder_name = embedder or configured
    if embedder_name is None:
        from mop.assets import DEFAULT_EMBEDDER

        embedder_name = DEFAULT_EMBEDDER

    embedder_obj = _make_embedder(embedder_name, device, embed_batch_size)
    result = evaluate_sets(real_texts, real_labels, sets, embedder_obj,
                           reference_train=reference_set, sample_size=sample_size, seed=seed,
                           mauve_seeds=tuple(range(mauve_seeds)), plot=plot, progress=progress,
                           bootstrap=bootstrap, mauve_bootstrap=mauve_bootstrap)
    for row in result["rows"]:
        row["file"] = files[row["name"]]
    result["embedder"] = embedder_name
    result["real"].update(real_source)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(result, output)
    print(format_table(result))
    for row in result["rows"]:
        for note in row["notes"]:
            print(f"note: {row['name']}: {note}")
    for note in (result["reference"] or {}).get("notes", []):
        print(f"note: {result['reference']['name']}: {note}")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"\n{len(result['rows'])} set(s) at n = {result['n']} with {embedder_name} in "
          f"{result['seconds']:.0f} s -> {output}" + (f", {plot}" if plot else ""))
    return 0
