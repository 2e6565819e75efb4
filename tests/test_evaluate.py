"""Population fidelity metrics (docs/method.md section 7) and ``mop evaluate``."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import scipy.linalg  # noqa: F401  (loaded before the one_thread fixture, so that its BLAS pool is limited)
from helpers import REPO, assert_one_line_error, run_cli
from sklearn.linear_model import LogisticRegression

from mop.errors import MopError
from mop.evaluate import (
    _counts,
    _frechet_eigh,
    _PairBins,
    _weighted_f1,
    _weighted_moments,
    bootstrap_metrics,
    class_ellipse,
    cosine_histogram,
    distinct_n,
    downstream_f1,
    evaluate_sets,
    fid,
    fid_infinity,
    frechet_distance,
    kl_cosine,
    length_stats,
    mauve_score,
    paired_difference,
    paired_differences,
    vendi_score,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")  # small arrays: BLAS / faiss threads only contend


class HashEmbedder:
    """A tiny deterministic embedder: the normalised sum of a fixed random vector per word (no model)."""

    name = "hash-16"

    def __init__(self, dim: int = 16):
        self.dim = dim
        self.calls = 0

    def encode(self, texts, desc="embedding", show_progress=True):
        self.calls += 1
        out = np.zeros((len(texts), self.dim))
        for i, t in enumerate(texts):
            for w in t.lower().split() or [""]:
                out[i] += np.random.default_rng(zlib.crc32(w.encode())).normal(size=self.dim)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


POS = "great superb moving brilliant charming delightful funny gripping".split()
NEG = "dull boring tedious clumsy awful bland messy lifeless".split()
FILL = "the film movie plot cast story director script acting scenes".split()


def reviews(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n short labelled fake reviews whose sentiment words depend on the label."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = "fresh" if i % 2 == 0 else "rotten"
        words = list(rng.choice(FILL, 4)) + list(rng.choice(POS if label == "fresh" else NEG, 3))
        texts.append(" ".join(rng.permutation(words)) + f" {i}")
        labels.append(label)
    return texts, labels


def write_generated(path, texts, labels, method="mop", model="smollm2-135m"):
    """Rows in generate.py's format."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, (t, lab) in enumerate(zip(texts, labels)):
            fh.write(json.dumps({"id": f"r{i}-0", "record_id": f"r{i}", "context": {"movie": "x"},
                                 "label": lab, "persona_id": None, "persona": None, "exemplar_id": None,
                                 "attributes": None, "temperature": 0.7, "model": model, "adapter": None,
                                 "method": method, "seed": 0, "text": t}) + "\n")
    return path


# ------------------------------------------------------------------------------------------------------- FID
@pytest.mark.parametrize("n,d", [(300, 8), (40, 64)])  # the second is rank-deficient (n < d)
def test_fid_of_a_set_with_itself_is_zero(n, d):
    x = np.random.default_rng(0).normal(size=(n, d)) + 0.3
    assert abs(fid(x, x)) < 1e-6
    assert fid(x, x + np.r_[0.5, np.zeros(d - 1)]) > 1e-3  # but not zero for a shifted copy


def test_fid_matches_the_closed_form_of_two_gaussians():
    # normalize=False: the raw Frechet distance of the samples, which for large n approaches the one of the
    # true Gaussians: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.0, 0.25])
    a = rng.normal(size=(d, d))
    s1, s2 = np.diag([1.0, 2.0, 0.5, 1.5]), a @ a.T / d + 0.2 * np.eye(d)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(s1 @ s2))))
    x = rng.multivariate_normal(mu1, s1, size=n)
    y = rng.multivariate_normal(mu2, s2, size=n)
    got = fid(x, y, normalize=False)
    assert expected > 1.0
    assert got == pytest.approx(expected, rel=0.02, abs=0.01)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-9)
    # identical Gaussians: only sampling noise, O(d^2 / n)
    assert fid(x, rng.multivariate_normal(mu1, s1, size=n), normalize=False) < 1e-3


def test_fid_infinity_removes_most_of_the_finite_sample_bias():
    # points on the unit sphere (fid normalises rows): the FID of 200,000 texts a side is the near-exact
    # value; at n = 1,000 a side plain FID is biased up by ~c / n, and the 1 / n extrapolation removes most
    # of that
    d, n = 32, 1000
    shift = np.r_[0.6, np.zeros(d - 1)]

    def draw(seed, size, mean=0.0):
        return np.random.default_rng(seed).normal(size=(size, d)) + mean
    exact = fid(draw(1, 200_000), draw(2, 200_000, shift))
    x, y, z = draw(3, n), draw(4, n, shift), draw(5, n)
    plain, inf = fid(x, y), fid_infinity(x, y)
    assert plain - exact > 0.01  # the bias is real
    assert abs(inf["fid_inf"] - exact) < 0.25 * (plain - exact)
    assert inf["sizes"] == [200, 300, 400, 600, 800, 1000] and inf["fids"][-1] == pytest.approx(plain)
    assert inf["slope"] > 0  # FID falls with more texts
    same = fid_infinity(x, z)["fid_inf"]  # one distribution: near 0, far below the plain FID
    assert abs(same) < 0.1 * fid(x, z)
    assert fid_infinity(x, y, seed=1)["fid_inf"] != inf["fid_inf"]  # the subsamples follow the seed
    assert fid_infinity(x, y) == inf  # and are fixed by it
    assert fid_infinity(draw(6, 6), draw(7, 6)) is None  # fewer than 3 sizes of >= 5 texts


def test_fid_l2_normalises_rows():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 6)) + 1, rng.normal(size=(200, 6))
    scale = rng.uniform(0.1, 10, size=(200, 1))
    assert fid(x * scale, y) == pytest.approx(fid(x, y), abs=1e-9)
    assert fid(x * scale, y, normalize=False) != pytest.approx(fid(x, y, normalize=False), rel=1e-3)
    with pytest.raises(MopError, match="dimension"):
        fid(x, y[:, :5])


# ------------------------------------------------------------------------------------------------ KL-cosine
def test_cosine_histogram_is_a_distribution_over_100_bins():
    x = np.tile([[1.0, 0.0, 0.0]], (30, 1))  # every pair has cosine 1: all mass in the last bin
    h = cosine_histogram(x)
    assert h.shape == (100,) and h.sum() == pytest.approx(1.0)
    assert h[-1] > 1 - 1e-6 and h[0] == pytest.approx(1e-10 / (435 + 99e-10))
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])  # one pair, cosine -1: the first bin
    assert cosine_histogram(opposite)[0] > 1 - 1e-6


def test_kl_cosine_is_zero_for_identical_sets_and_grows_as_diversity_shrinks():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 8)) + 0.5
    assert kl_cosine(real, real) == pytest.approx(0.0, abs=1e-12)
    mean = real.mean(0)
    kls = [kl_cosine(real, mean + a * (real - mean)) for a in (1.0, 0.6, 0.3, 0.1)]
    assert kls[0] == pytest.approx(0.0, abs=1e-12)
    assert all(b > a for a, b in zip(kls, kls[1:])), kls
    assert kls[-1] > 1.0
    # the direction is KL(P_real || P_gen), not the reverse (the two differ for these sets)
    narrow = mean + 0.3 * (real - mean)
    p, q = cosine_histogram(real), cosine_histogram(narrow)
    assert kl_cosine(real, narrow) == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-9)
    assert abs(np.sum(q * np.log(q / p)) - kl_cosine(real, narrow)) > 0.1


def test_kl_cosine_subsamples_large_sets_with_a_fixed_seed():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(300, 5)), rng.normal(size=(300, 5)) + 0.2
    assert kl_cosine(x, y, max_n=100, seed=7) == kl_cosine(x, y, max_n=100, seed=7)
    assert kl_cosine(x, y, max_n=100, seed=7) != kl_cosine(x, y, max_n=100, seed=8)


# ------------------------------------------------------------------------------------------------------ MAUVE
def test_mauve_is_one_for_identical_features_and_near_zero_for_disjoint_clusters():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 16))
    same = mauve_score(x, x, seeds=(0, 1, 2))
    assert same["mean"] > 0.95 and len(same["scores"]) == 3 and same["seeds"] == [0, 1, 2]
    shift = np.r_[6.0, np.zeros(15)]
    apart = mauve_score(rng.normal(size=(200, 16)) - shift, rng.normal(size=(200, 16)) + shift, seeds=(0, 1))
    assert apart["mean"] < 0.1 and apart["std"] >= 0



def test_mauve_survives_a_failed_divide_and_conquer_svd(monkeypatch):
    # OpenBLAS's gesdd (scipy's default SVD) fails on some matrices ("SVD did not converge"; a bootstrap
    # resample of 200 MiniLM embeddings a side crashed the Guardian evaluation). MAUVE's PCA then retries with
    # gesvd.
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(60, 16)), rng.normal(size=(60, 16)) + 0.5  # 120 < 10 x 16: PCA takes the full SVD
    expected = mauve_score(x, y, seeds=(0,))["scores"]
    real_svd, calls = scipy.linalg.svd, []

    def gesdd_fails(a, *args, **kwargs):
        calls.append(kwargs.get("lapack_driver", "gesdd"))
        if calls[-1] == "gesdd":
            raise np.linalg.LinAlgError("SVD did not converge")
        return real_svd(a, *args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "svd", gesdd_fails)
    assert mauve_score(x, y, seeds=(0,))["scores"] == pytest.approx(expected, abs=1e-9)
    assert calls == ["gesdd", "gesvd"]
    assert scipy.linalg.svd is gesdd_fails  # the fallback is undone afterwards
    draws = np.ones((2, 60), dtype=np.int64)
    out = bootstrap_metrics(x, y, {"fid": 0.0, "kl_cosine": 0.0, "mauve": expected[0]}, draws, draws, None,
                            n_boot=0, n_mauve=2, mauve_seeds=(0,))
    assert out["mauve"]["mean"] == pytest.approx(expected[0], abs=1e-6) and calls.count("gesvd") == 3


# ------------------------------------------------------------------------------------------------ downstream
def test_downstream_f1_is_one_on_separable_data_and_low_on_shuffled_labels():
    rng = np.random.default_rng(6)

    def make(n):
        y = rng.integers(0, 3, n)
        return rng.normal(size=(n, 5)) * 0.3 + np.eye(5)[y] * 4, [f"c{v}" for v in y]

    xtr, ytr = make(300)
    xte, yte = make(200)
    assert downstream_f1(xtr, ytr, xte, yte) == pytest.approx(1.0)
    assert downstream_f1(xtr, list(rng.permutation(ytr)), xte, yte) < 0.7
    with pytest.raises(MopError, match="single label"):
        downstream_f1(xtr, ["a"] * 300, xte, yte)


# ---------------------------------------------------------------------------------------------- evaluate_sets
def test_evaluate_sets_compares_every_set_at_one_sample_size():
    real_t, real_l = reviews(80, seed=0)
    same_t, same_l = real_t[:60], real_l[:60]
    other_t, other_l = reviews(120, seed=1)
    flat = [f"the film {i}" for i in range(100)]  # no sentiment words, one label: no F1
    sets = {"copy": (same_t, same_l), "other": (other_t, other_l), "flat": (flat, ["fresh"] * 100)}
    ref = reviews(200, seed=2)
    emb = HashEmbedder()
    out = evaluate_sets(real_t, real_l, sets, emb, reference_train=ref, seed=0, mauve_seeds=(0, 1),
                        progress=False, bootstrap=30, mauve_bootstrap=2)
    rows = {r["name"]: r for r in out["rows"]}
    assert out["n"] == 60 and all(r["n"] == 60 for r in rows.values())
    assert [rows[k]["n_total"] for k in ("copy", "other", "flat")] == [60, 120, 100]
    assert rows["copy"]["fid"] < rows["other"]["fid"] < rows["flat"]["fid"]
    assert rows["flat"]["kl_cosine"] > rows["other"]["kl_cosine"]
    assert rows["copy"]["f1"] > 0.9 and rows["other"]["f1"] > 0.9
    assert rows["flat"]["f1"] is None and "single label" in rows["flat"]["notes"][0]
    assert out["reference"]["n"] == 60 and out["reference"]["f1"] > 0.8
    for r in [*rows.values(), out["reference"]]:  # every interval holds its point estimate
        for metric, ci in r["ci95"].items():
            assert (ci is None) == (r[metric] is None), (r["name"], metric)
            assert ci is None or ci[0] <= r[metric] <= ci[1], (r["name"], metric, ci)
        assert r["bootstrap"]["fid"]["resamples"] == 30 and r["bootstrap"]["mauve"]["resamples"] == 2
    assert rows["flat"]["diversity"]["vendi"] < rows["copy"]["diversity"]["vendi"]
    assert rows["flat"]["length"]["wasserstein_words"] > 4 > rows["other"]["length"]["wasserstein_words"]
    assert "30 resamples" in out["bootstrap"]["method"] and out["real"]["length"]["median_words"] == 8
    again = evaluate_sets(real_t, real_l, sets, emb, reference_train=ref, seed=0, mauve_seeds=(0, 1),
                          progress=False, bootstrap=30, mauve_bootstrap=2)
    assert again["rows"] == out["rows"] and again["reference"] == out["reference"]  # seeded subsamples
    other_seed = evaluate_sets(real_t, real_l, sets, emb, seed=1, mauve_seeds=(0,), progress=False,
                               bootstrap=0, mauve_bootstrap=0)
    assert other_seed["rows"][1]["fid"] != out["rows"][1]["fid"]
    assert other_seed["rows"][1]["ci95"]["fid"] is None
    assert "no intervals" in other_seed["bootstrap"]["method"]
    small = evaluate_sets(real_t, real_l, {"copy": (same_t, same_l)}, emb, sample_size=20, mauve_seeds=(0,),
                          progress=False, bootstrap=0, mauve_bootstrap=0)
    assert small["n"] == 20 and small["rows"][0]["n"] == 20
    with pytest.raises(MopError, match="exceeds the smallest set"):
        evaluate_sets(real_t, real_l, sets, emb, sample_size=61, progress=False)
    with pytest.raises(MopError, match="at least 10 texts"):
        evaluate_sets(real_t, real_l, {"tiny": (same_t[:9], same_l[:9])}, emb, progress=False)


# ------------------------------------------------------------------------------- intervals and the reference
class LookupEmbedder:
    """Texts are keys of a table of given vectors: synthetic embeddings through evaluate_sets."""

    name = "lookup"

    def __init__(self, *tables):
        self.table = {k: v for t in tables for k, v in t.items()}

    def encode(self, texts):
        return np.stack([self.table[t] for t in texts])


def gaussian_set(prefix, n, seed, shift=0.0, d=8):
    """n texts named prefix0.. whose embeddings are N(0.5, I) in d dimensions, the first shifted by shift."""
    x = np.random.default_rng(seed).normal(size=(n, d)) + 0.5
    x[:, 0] += shift
    return {f"{prefix}{i}": v for i, v in enumerate(x)}


def test_bootstrap_replicates_are_those_of_the_resampled_sets():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(50, 6)) + 0.4, rng.normal(size=(40, 6))
    ones_x, ones_y = np.ones(50), np.ones(40)
    assert _frechet_eigh(*_weighted_moments(x, ones_x), *_weighted_moments(y, ones_y)) == \
        pytest.approx(fid(x, y, normalize=False), rel=1e-8)
    w = rng.integers(0, 3, 50)  # multiplicities: the resample repeats row i w_i times
    rep = np.repeat(x, w, axis=0)
    assert _frechet_eigh(*_weighted_moments(x, w), *_weighted_moments(y, ones_y)) == \
        pytest.approx(fid(rep, y, normalize=False), rel=1e-8)
    bins = _PairBins(x)
    assert np.allclose(bins.histogram(ones_x), cosine_histogram(x), rtol=1e-12, atol=0)
    # a resample's histogram: every pair of drawn texts except a text with its own copy
    origin = np.repeat(np.arange(50), w)
    xn = rep / np.linalg.norm(rep, axis=1, keepdims=True)
    i, j = np.triu_indices(len(rep), k=1)
    keep = origin[i] != origin[j]
    cos = np.clip(np.sum(xn[i[keep]] * xn[j[keep]], axis=1), -1, 1)
    hist = np.histogram(cos, bins=100, range=(-1, 1))[0] + 1e-10
    assert np.allclose(bins.histogram(w), hist / hist.sum(), rtol=1e-9, atol=0)
    # F1 of a classifier fitted on weighted rows, scored with weights: that of the repeated rows
    ylab = np.array(["a" if v > 0.4 else "b" for v in x[:, 0]])
    test, test_lab = y[:30], np.array(["a" if v > 0 else ("b" if v > -1 else "c") for v in y[:30, 0]])
    wt = rng.integers(0, 3, 30)
    got = _weighted_f1(x, ylab, w, test, test_lab, wt, LogisticRegression(max_iter=5000, random_state=0))
    assert got == pytest.approx(downstream_f1(rep, np.repeat(ylab, w), np.repeat(test, wt, axis=0),
                                              np.repeat(test_lab, wt)), abs=1e-6)


def test_paired_difference_separates_sets_whose_own_intervals_overlap():
    rng = np.random.default_rng(3)
    n, d = 300, 8
    topic = rng.normal(size=(n, d))  # what context i is about: its real text and both generated ones share it
    real = topic + 0.7 * rng.normal(size=(n, d))
    a = topic + 0.7 * rng.normal(size=(n, d))
    b = a + 0.08  # a, each text moved the same way: a little further from the real texts
    out = paired_difference(real, a, b, draws=200)
    got = out["fid"]
    assert got["a"] == pytest.approx(fid(real, a), rel=1e-9)
    assert got["b"] == pytest.approx(fid(real, b), rel=1e-9)
    assert got["diff"] == pytest.approx(fid(real, a) - fid(real, b), rel=1e-9) and got["diff"] < 0
    lo, hi = got["ci95"]
    assert lo <= got["diff"] <= hi < 0 and got["a_lower_share"] > 0.975
    assert out["kl_cosine"]["diff"] == pytest.approx(kl_cosine(real, a) - kl_cosine(real, b), rel=1e-9)
    # each set resampled on its own (bootstrap_metrics, as evaluate_sets does): the two intervals overlap
    real_draws = _counts(np.random.default_rng(1), n, 200)
    own = [bootstrap_metrics(real, x, {"fid": fid(real, x), "kl_cosine": kl_cosine(real, x)}, real_draws,
                             _counts(np.random.default_rng(s), n, 200), n_mauve=0)["fid"]["ci95"]
           for x, s in ((a, 2), (b, 4))]
    assert own[0][1] > own[1][0]
    # the other way round: the negated difference and interval; a set against itself: exactly 0
    back = paired_difference(real, b, a, draws=200)["fid"]
    assert back["diff"] == pytest.approx(-got["diff"]) and back["ci95"] == pytest.approx([-hi, -lo])
    assert back["a_lower_share"] == pytest.approx(1 - got["a_lower_share"])
    same = paired_difference(real, a, a, draws=50)
    assert same["fid"]["diff"] == 0 and same["fid"]["ci95"] == [0, 0] and same["fid"]["a_lower_share"] == 0
    with pytest.raises(MopError, match="one row per context"):
        paired_difference(real, a, b[:-1])


def test_paired_differences_equal_one_comparison_at_a_time():
    rng = np.random.default_rng(5)
    n, d = 120, 6
    topic = rng.normal(size=(n, d))
    real, a = (topic + 0.7 * rng.normal(size=(n, d)) for _ in range(2))
    others = [a + 0.1, a, topic + rng.normal(size=(n, d))]  # further, the same set, another spread
    many = paired_differences(real, a, others, draws=40, seed=2)
    one = [paired_difference(real, a, b, draws=40, seed=2) for b in others]
    assert many == one  # the same replicates: identical figures, set by set
    assert [m["fid"]["diff"] < 0 for m in many] == [True, False, one[2]["fid"]["diff"] < 0]
    assert many[1]["fid"]["diff"] == 0 and many[1]["kl_cosine"]["ci95"] == [0, 0]
    assert many[0]["fid"]["ci95"] != many[2]["fid"]["ci95"]
    with pytest.raises(MopError, match="at least one set"):
        paired_differences(real, a, [])
    with pytest.raises(MopError, match="one row per context"):
        paired_differences(real, a, [others[0], others[2][:-1]])


def test_fid_interval_holds_the_point_shrinks_with_n_and_separates_a_shift():
    widths, intervals = {}, {}
    for n in (100, 400):
        real, same, shifted = (gaussian_set("r", n, 1), gaussian_set("g", n, 2),
                               gaussian_set("s", n, 3, shift=0.7))
        out = evaluate_sets(list(real), None, {"same": (list(same), None), "shift": (list(shifted), None)},
                            LookupEmbedder(real, same, shifted), mauve_seeds=(0,), bootstrap=100,
                            mauve_bootstrap=0, progress=False)
        rows = {r["name"]: r for r in out["rows"]}
        for r in rows.values():
            lo, hi = r["ci95"]["fid"]
            assert lo <= r["fid"] <= hi and r["bootstrap"]["fid"]["resamples"] == 100
            assert r["ci95"]["mauve"] is None and r["ci95"]["f1"] is None  # no MAUVE resamples, no labels
        widths[n] = np.diff(rows["same"]["ci95"]["fid"])[0]
        intervals[n] = rows
    assert widths[400] < 0.5 * widths[100]
    # what two samples of the same Gaussian score at n = 400 (the estimator's mean, > 0 at finite n) lies in
    # the interval; the shifted set's interval lies wholly above it
    rng = np.random.default_rng(11)
    expected = np.mean([fid(rng.normal(size=(400, 8)) + 0.5, rng.normal(size=(400, 8)) + 0.5)
                        for _ in range(30)])
    lo, hi = intervals[400]["same"]["ci95"]["fid"]
    assert lo <= expected <= hi and hi < 0.05
    assert intervals[400]["shift"]["ci95"]["fid"][0] > hi


def labelled_blobs(prefix, n, seed, shift=0.0):
    """n texts of two labels whose embeddings are two separated Gaussian blobs (plus an overall shift)."""
    rng = np.random.default_rng(seed)
    labels = ["pos" if i % 2 == 0 else "neg" for i in range(n)]
    centre = {"pos": np.r_[1.5, 0.0, 0.5, 0.5, 0.5, 0.5], "neg": np.r_[0.0, 1.5, 0.5, 0.5, 0.5, 0.5]}
    x = np.stack([centre[lab] + rng.normal(scale=0.5, size=6) for lab in labels])
    x[:, 2] += shift
    return {f"{prefix}{i}": v for i, v in enumerate(x)}, labels


def test_reference_row_is_near_perfect_for_real_texts_and_a_shifted_set_is_worse():
    (test, test_l), (train, train_l) = labelled_blobs("test", 300, 1), labelled_blobs("train", 600, 2)
    shifted, shifted_l = labelled_blobs("gen", 300, 3, shift=1.5)
    out = evaluate_sets(list(test), test_l, {"shifted": (list(shifted), shifted_l)},
                        LookupEmbedder(test, train, shifted), reference_train=(list(train), train_l),
                        mauve_seeds=(0, 1), bootstrap=40, mauve_bootstrap=3, progress=False)
    ref, gen = out["reference"], out["rows"][0]
    assert ref["name"] == "real train (reference)" and ref["n"] == 300 and ref["n_total"] == 600
    assert ref["mauve"] > 0.9 and ref["fid"] < 0.02 and ref["kl_cosine"] < 0.1 and ref["f1"] > 0.9
    assert all(ref["ci95"][m] is not None for m in ("fid", "mauve", "kl_cosine", "f1"))
    assert gen["fid"] > 10 * ref["fid"] and gen["ci95"]["fid"][0] > ref["ci95"]["fid"][1]
    assert gen["mauve"] < ref["mauve"] - 0.3 and gen["kl_cosine"] > ref["kl_cosine"]
    # no labels on the reference texts: the row keeps every other metric, with a note
    unlabelled = evaluate_sets(list(test), test_l, {"shifted": (list(shifted), shifted_l)},
                               LookupEmbedder(test, train, shifted), reference_train=(list(train), None),
                               mauve_seeds=(0,), bootstrap=0, mauve_bootstrap=0, progress=False)
    assert unlabelled["reference"]["f1"] is None and unlabelled["reference"]["fid"] == ref["fid"]
    assert any("no reference F1" in note for note in unlabelled["notes"])


def test_distinct_n_counts_unique_ngrams_within_texts():
    texts = ["The cat sat.", "the CAT ran!", "Dogs"]
    # unigrams: the cat sat the cat ran dogs -> 5 unique of 7; bigrams (not across texts): the cat, cat sat,
    # the cat, cat ran -> 3 unique of 4
    assert distinct_n(texts, 1) == pytest.approx(5 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["it's a film", "It’s a film"], 1) == pytest.approx(3 / 6)  # one token "it's"
    assert distinct_n(["one"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_vendi_score_counts_effective_distinct_embeddings():
    v = np.array([[3.0, 4.0, 0.0]])
    assert vendi_score(np.tile(v, (25, 1))) == pytest.approx(1.0)
    assert vendi_score(np.eye(12, 20) * 7.0) == pytest.approx(12.0)  # orthogonal rows, any norm
    two = np.r_[np.tile([[1.0, 0.0]], (5, 1)), np.tile([[0.0, 2.0]], (5, 1))]
    assert vendi_score(two) == pytest.approx(2.0)
    x = np.random.default_rng(12).normal(size=(200, 16))
    assert 1.0 < vendi_score(x) < 16.0  # bounded by the dimension


def test_length_stats_of_hand_made_texts():
    out = length_stats(["a b c", "a b", "one two, three four five!"], real_texts=["x y", "x y", "x y"])
    assert out["mean_words"] == pytest.approx(10 / 3) and out["median_words"] == 3.0
    assert out["wasserstein_words"] == pytest.approx((1 + 0 + 3) / 3)  # sorted 2,3,5 against 2,2,2
    assert "wasserstein_words" not in length_stats(["a b"])


def test_class_ellipse_spans_two_standard_deviations():
    rng = np.random.default_rng(8)
    pts = rng.normal(size=(20000, 2)) * [3.0, 0.5]
    _, w, h, angle = class_ellipse(pts)
    assert w == pytest.approx(4 * 3.0, rel=0.03) and h == pytest.approx(4 * 0.5, rel=0.03)
    assert abs(np.sin(np.radians(angle))) < 0.05  # major axis along x


# -------------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def fake_embedder(monkeypatch):
    import mop.evaluate

    monkeypatch.setattr(mop.evaluate, "_make_embedder", lambda name, *a: HashEmbedder())


def _real_csv(write_csv, n=60, seed=0, name="real.csv"):
    texts, labels = reviews(n, seed)
    return write_csv([{"text": t, "label": lab} for t, lab in zip(texts, labels)], name), texts, labels


def test_cli_self_evaluation_gives_fid_zero_and_mauve_one(tmp_path, write_csv, fake_embedder, capsys):
    from mop.cli import main

    real, texts, labels = _real_csv(write_csv)
    ref, _, _ = _real_csv(write_csv, n=100, seed=3, name="train.csv")
    same = write_generated(tmp_path / "self.jsonl", texts, labels)
    other_t, other_l = reviews(70, seed=9)
    other = write_generated(tmp_path / "other.jsonl", other_t, other_l, method="zerogen")
    out, png = tmp_path / "report.json", tmp_path / "report.png"
    code = main(["evaluate", "--real", str(real), "--synthetic", str(same), str(other),
                 "--reference", str(ref), "--output", str(out), "--plot", str(png), "--mauve-seeds", "2",
                 "--bootstrap", "20", "--mauve-bootstrap", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == {"mop/smollm2-135m", "zerogen/smollm2-135m"}
    me = rows["mop/smollm2-135m"]
    assert me["n"] == 60 and abs(me["fid"]) < 1e-6 and me["mauve"] > 0.95 and me["kl_cosine"] < 1e-9
    assert rows["zerogen/smollm2-135m"]["fid"] > 1e-3 and me["f1"] > 0.9
    assert report["reference"]["n"] == 60 and report["reference"]["f1"] > 0.9
    assert report["reference"]["fid"] > 0 and report["reference"]["ci95"]["mauve"] is not None
    assert report["embedder"] == "minilm-l6" and me["file"] == str(same)
    assert me["ci95"]["fid"][0] == 0.0 and me["bootstrap"]["f1"]["resamples"] == 20
    assert report["bootstrap"]["resamples"] == 20 and report["bootstrap"]["mauve_resamples"] == 2
    assert ("| set | n | FID ↓ [95% CI] | FID∞ ↓ | MAUVE ↑ [95% CI] | KL-cos ↓ [95% CI] | F1 ↑ [95% CI] | "
            "distinct-1 / -2 | Vendi | words mean / median | length W1 ↓ |") in printed
    assert "| mop/smollm2-135m | 60 | 0.0000 [0.0000, " in printed
    assert abs(me["fid_inf"]) < 1e-6 and me["fid_inf_fit"]["sizes"][-1] == 60  # a set against itself
    assert "| real train (reference) | 60 | " in printed
    assert "| real (evaluated split) | 60 | – | – |" in printed
    assert "bootstrap over texts" in printed and "20 resamples for FID / KL-cos / F1" in printed
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file
    # an existing report is not overwritten unless asked
    code = main(["evaluate", "--real", str(real), "--synthetic", str(same), "--output", str(out)])
    assert code == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    # a generated file without labels: F1 left out with a note, the rest computed
    nolab = write_generated(tmp_path / "nolab.jsonl", texts, [None] * len(texts))
    code = main(["evaluate", "--real", str(real), "--synthetic", str(nolab), "--output", str(out),
                 "--overwrite", "--mauve-seeds", "1", "--names", "unlabelled", "--no-progress", "--bootstrap",
                 "5", "--mauve-bootstrap", "0"])
    printed = capsys.readouterr().out
    row = json.loads(out.read_text())["rows"][0]
    assert code == 0 and row["name"] == "unlabelled" and row["f1"] is None and abs(row["fid"]) < 1e-6
    assert "F1 left out" in printed and "| unlabelled | 60 | 0.0000 [" in printed


def test_cli_same_contexts_compares_with_the_real_texts_of_the_rows_records(
        tmp_path, write_csv, fake_embedder, capsys, monkeypatch):
    """--same-contexts: the real side is the texts of the records the rows were generated for, in row order
    (whatever the config's caps), and the reference row n training texts of reference_draw, as
    benchmarks/fidelity.py evaluates."""
    import mop.evaluate
    from mop.cli import main
    from mop.data import load_dataset_config, load_population

    texts, labels = reviews(400, seed=4)
    data = write_csv([{"rid": f"q{i}", "text": t, "label": lab}
                      for i, (t, lab) in enumerate(zip(texts, labels))])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  dataset:\n    source: {data}\n    response_column: text\n"
                   "    label_column: label\n    id_column: rid\n    max_records: {train: 50, test: 12}\n")
    import dataclasses

    pop = load_population(dataclasses.replace(load_dataset_config(cfg), max_records=None))
    test = [pop["test"][i] for i in np.random.default_rng(1).permutation(len(pop["test"]))[:30]]
    assert len(pop["test"]) >= 30

    def rows(path, recs, texts=None, method="mop"):
        with open(path, "w") as fh:
            for k, r in enumerate(recs):
                fh.write(json.dumps({"id": f"{r.id}-0", "record_id": r.id, "label": r.label, "method": method,
                                     "model": "m", "text": texts[k] if texts else r.response}) + "\n")
        return str(path)
    same = rows(tmp_path / "same.jsonl", test)  # the very texts of the contexts: FID 0 only against them
    other = rows(tmp_path / "other.jsonl", test, texts=reviews(30, seed=9)[0], method="zerogen")
    out = tmp_path / "r.json"
    common = ["evaluate", "-c", str(cfg), "--synthetic", same, other, "--output", str(out), "--overwrite",
              "--bootstrap", "0", "--mauve-bootstrap", "0", "--mauve-seeds", "1", "--no-progress"]
    assert main([*common, "--same-contexts"]) == 0
    report = json.loads(out.read_text())
    me = {r["name"]: r for r in report["rows"]}["mop/m"]
    assert me["n"] == 30 and abs(me["fid"]) < 1e-6 and report["real"]["same_contexts"] is True
    assert main(common) == 0  # without it: the whole (capped) test split, not these texts
    assert abs({r["name"]: r for r in json.loads(out.read_text())["rows"]}["mop/m"]["fid"]) > 1e-3

    seen = {}
    monkeypatch.setattr(mop.evaluate, "evaluate_sets", lambda real, labs, sets, emb, reference_train, **kw:
                        seen.update(real=real, labels=labs, sets=sets, ref=reference_train) or {
                            "rows": [], "reference": None, "notes": [], "real": {}, "n": 0})
    monkeypatch.setattr(mop.evaluate, "format_table", lambda result: "")
    assert main([*common, "--same-contexts", "--sample-size", "20", "--seed", "3"]) == 0
    assert seen["real"] == [r.response for r in test[:20]] and seen["labels"] == [r.label for r in test[:20]]
    assert [len(t) for t, _ in seen["sets"].values()] == [20, 20]
    drawn = [pop["train"][i] for i in mop.evaluate.reference_draw(len(pop["train"]), 20, 3)]
    assert seen["ref"] == ([r.response for r in drawn], [r.label for r in drawn]) and len(pop["train"]) > 50
    capsys.readouterr()

    shuffled = rows(tmp_path / "shuffled.jsonl", test[::-1])
    nocontext = tmp_path / "noid.jsonl"
    nocontext.write_text("".join(json.dumps({"text": r.response, "label": r.label}) + "\n" for r in test))
    stranger = rows(tmp_path / "stranger.jsonl", pop["train"][:30])
    for args, fragment in (([same, shuffled], "was generated for other contexts"),
                           ([same, str(nocontext)], "reads each row's record_id"),
                           ([stranger], "are not in split 'test'")):
        assert main(["evaluate", "-c", str(cfg), "--synthetic", *args, "--output", str(out), "--overwrite",
                     "--same-contexts"]) == 2
        assert fragment in capsys.readouterr().err, args
    assert main(["evaluate", "-c", str(cfg), "--synthetic", same, "--output", str(out), "--overwrite",
                 "--same-contexts", "--sample-size", "31"]) == 2
    assert "is more than the rows of" in capsys.readouterr().err
    for flag in ([], ["--same-contexts"]):  # the reference split may not be the evaluated one, in either mode
        assert main(["evaluate", "-c", str(cfg), "--synthetic", same, "--output", str(out), "--overwrite",
                     "--split", "test", "--reference-split", "test", *flag]) == 2
        assert "is the evaluated split itself" in capsys.readouterr().err
    real, _, _ = _real_csv(write_csv, name="real.csv")
    assert main(["evaluate", "--real", str(real), "--synthetic", same, "--output", str(out), "--overwrite",
                 "--same-contexts"]) == 2
    assert "not from --real" in capsys.readouterr().err


def test_cli_bad_input_is_one_line(tmp_path, write_csv, fake_embedder, capsys):
    from mop.cli import main

    real, texts, labels = _real_csv(write_csv)
    good = write_generated(tmp_path / "g.jsonl", texts, labels)
    out = str(tmp_path / "r.json")
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"label": "fresh", "body": "x"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    few = write_generated(tmp_path / "few.jsonl", texts[:5], labels[:5])
    cases = [
        (["--real", str(tmp_path / "missing.csv"), "--synthetic", str(good)], "does not exist"),
        (["--real", str(real), "--synthetic", str(nofield)], "no text field"),
        (["--real", str(real), "--synthetic", str(empty)], "is empty"),
        (["--real", str(real), "--synthetic", str(few)], "at least 10 texts"),
        (["--real", str(real), "--synthetic", str(good), "--sample-size", "5"], "at least 10"),
        (["--real", str(real), "--synthetic", str(good), "--names", "a", "b"], "--names gives 2"),
        (["--real", str(real), "--synthetic", str(good), "--reference-split", "train"], "--reference-split"),
    ]
    for args, fragment in cases:
        assert main(["evaluate", *args, "--output", out]) == 2, args
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("mop: error:") and fragment in err[0], (args, err)
    assert main(["evaluate", "--real", str(real), "--synthetic", str(good), "--output", out, "--bootstrap",
                 "-1"]) == 2
    assert "--bootstrap: must be >= 0" in capsys.readouterr().err
    assert main(["evaluate", "--real", str(real), "--synthetic", str(good), "--output",
                 str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # and as a user sees it: a subprocess, one line, no traceback
    assert_one_line_error(run_cli("evaluate", "--real", str(real), "--synthetic", str(nofield),
                                  "--output", out),
                          "no text field")


@pytest.mark.slow
def test_real_embedder_self_evaluation_on_rotten_tomatoes(tmp_path):
    # The bundled MiniLM on 150 real test reviews against themselves, through the installed command.
    from mop.data import load_dataset_config, load_population

    records = load_population(load_dataset_config(REPO / "configs/rotten_tomatoes.yaml"))["test"][:150]
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"text": r.response, "label": r.label}) + "\n" for r in records))
    gen = write_generated(tmp_path / "self.jsonl", [r.response for r in records], [r.label for r in records])
    out = tmp_path / "r.json"
    proc = run_cli("evaluate", "--real", str(real), "--synthetic", str(gen), "--output", str(out),
                   "--plot", str(tmp_path / "p.png"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["n"] == 150 and abs(row["fid"]) < 1e-6 and row["mauve"] > 0.95 and row["kl_cosine"] < 1e-9
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC
    assert "WARNING clustering" not in proc.stderr


def test_prompt_copy_rates_find_echoes_of_the_prompt_and_copies_of_the_exemplar(tmp_path):
    from helpers import make_export

    from mop.evaluate import prompt_copy_rates
    from mop.export import load_export

    export = load_export(make_export(tmp_path / "gate", dim=16, k=3, n_pool=4).path)

    def row(text, persona="p001", exemplar="e2", attributes=None):
        return {"id": "x", "record_id": "r", "context": {"movie": "Heat"}, "label": "fresh", "text": text,
                "persona_id": persona, "exemplar_id": exemplar, "attributes": attributes}

    rows = [row("You are critic number 1, and this film is fine."),  # persona start + a 5-word echo
            row("Heat is good. Exemplar review number 2 says so."),  # copies the exemplar (3-word runs)
            row("Now write a fresh review of the movie Heat, it said."),  # echoes the instructions
            row("A taut, gripping crime saga with two great leads."),  # an answer
            row("You are going to love this one.", persona=None, exemplar=None)]  # no persona: no start
    rates = prompt_copy_rates(rows, export, echo_n=5, copy_n=3)
    assert rates["prompt_echo"] == pytest.approx(2 / 5)  # rows 1 and 3; the exemplar's words do not count
    assert rates["persona_start"] == pytest.approx(1 / 4)
    assert rates["exemplar_copy"] == pytest.approx(1 / 4)
    assert prompt_copy_rates(rows[3:4], export)["prompt_echo"] == 0.0
    # the persona-free component has no persona line: its rows do not count towards persona_start
    null_export = load_export(make_export(tmp_path / "null", dim=16, k=3, n_pool=4, null_persona=True).path)
    null_rows = [row("You are critic number 1, and this film is fine.", persona="none"),
                 row("You are critic number 1, and this film is fine.", persona="p001")]
    assert prompt_copy_rates(null_rows[:1], null_export)["persona_start"] is None
    assert prompt_copy_rates(null_rows, null_export)["persona_start"] == 1.0
