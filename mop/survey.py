"""Closed-ended populations (a survey): answer options, option-level sampling and distribution fidelity.

A survey is a population whose responses are options (``options:`` in the dataset spec, mop.data): the
context is a respondent's profile and the question, the response their answer, and an exemplar another
respondent's profile and answer to the same question (the question is the record's label; exemplars are
label-consistent). Training is unchanged: it scores the observed option as the response. Generation does not
decode text: for each sampled prompt (persona k ~ pi(x), exemplar j ~ Omega_k(x), as for free text) the LM's
probability of every option is computed, normalised over the options, and one option is sampled from it, so
no answer needs parsing and none is invalid. Each row records the option and the option probabilities.

The evaluation compares the simulated answers with the real ones per question, overall and per group of a
context column (total variation, Jensen-Shannon, Wasserstein on ordinal scales), scores the real answers under
each method's per-respondent option distribution (log-likelihood and Brier score, proper scores), with 95%
bootstrap intervals over respondents; beside them a real-against-real reference (train answers against test
answers) and a non-LLM reference that predicts answers from the profile alone (multinomial logistic
regression).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mop.errors import MopError

MAX_INFERRED_OPTIONS = 20
# context columns that restate others for prompts (the bundled anes96's): not features of the profile
PROMPT_ONLY_COLUMNS = {"question", "question_text", "profile"}
ANY_LABEL = ""  # the key of one option list shared by every record (unlabelled data or a flat list)


# --------------------------------------------------------------------------------------------------- options
def resolve_options(spec, records: Sequence, where: str = "dataset") -> dict[str, list[str]]:
    """The spec's ``options`` as {label: [option, ...]} (``""``: every record), checked against the records.

    Refuses an empty or duplicated option list, a label without options, ``infer`` with more than
    MAX_INFERRED_OPTIONS distinct answers, and a response that is not one of its record's options."""
    raw = spec.options
    labels = sorted({r.label or ANY_LABEL for r in records})
    if raw == "infer":
        out: dict[str, list[str]] = {}
        for r in records:
            seen = out.setdefault(r.label or ANY_LABEL, [])
            if r.response not in seen:
                seen.append(r.response)
        for key, opts in out.items():
            if len(opts) > MAX_INFERRED_OPTIONS:
                raise MopError(f"{where}: options: infer found {len(opts)} distinct answers"
                               f"{' to ' + repr(key) if key else ''} (at most {MAX_INFERRED_OPTIONS}): a "
                               "free-text column? List the options, or leave options unset")
    elif isinstance(raw, (list, tuple)):
        out = {key: list(raw) for key in labels}
    elif isinstance(raw, dict):
        out = {str(k): list(v) if isinstance(v, (list, tuple)) else v for k, v in raw.items()}
        missing = [key for key in labels if key not in out]
        if missing:
            shown = ", ".join(repr(k) for k in missing[:5])
            raise MopError(f"{where}: options has no list for label(s) {shown} (it lists "
                           f"{', '.join(map(repr, out))}); give every label (question) its options")
    else:
        raise MopError(f"{where}: options must be a list, a mapping label -> list or 'infer', found "
                       f"{type(raw).__name__}")
    for key, opts in out.items():
        name = f" of {key!r}" if key else ""
        if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) and o.strip()
                                                                   for o in opts):
            hint = (" (YAML reads unquoted yes / no / on / off as true / false: quote them)"
                    if isinstance(opts, list) and any(isinstance(o, bool) for o in opts) else "")
            raise MopError(f"{where}: the options{name} must be a list of at least 2 non-empty strings, "
                           f"found {opts!r}{hint}")
        if len(set(opts)) != len(opts):
            raise MopError(f"{where}: the options{name} repeat an option: {opts}")
    for r in records:
        opts = out[r.label or ANY_LABEL]
        if r.response not in opts:
            raise MopError(f"{where}: record {r.id}: the answer {r.response!r} is not one of the options"
                           f"{' of ' + repr(r.label) if r.label else ''} ({' / '.join(opts)})")
    ordinal = spec.ordinal
    if ordinal not in (None, "all"):
        unknown = [q for q in ordinal if q not in out]
        if unknown:
            raise MopError(f"{where}: ordinal names {', '.join(map(repr, unknown))}, which has no options "
                           f"(questions: {', '.join(map(repr, out))})")
    return out


def is_closed_ended(spec_or_config: Any) -> bool:
    """True for a dataset spec or export config with options."""
    options = (spec_or_config.get("options") if isinstance(spec_or_config, dict)
               else getattr(spec_or_config, "options", None))
    return bool(options)


def options_of(options: dict[str, list[str]], label: str | None) -> list[str]:
    """The option list of a record with ``label``."""
    key = label or ANY_LABEL
    if key in options:
        return options[key]
    if ANY_LABEL in options and len(options) == 1:
        return options[ANY_LABEL]
    raise MopError(f"no options for the label {label!r} (the survey's questions: "
                   f"{', '.join(map(repr, options))})")


def ordinal_keys(options: dict[str, list[str]], ordinal) -> set[str]:
    if ordinal == "all":
        return set(options)
    return set(ordinal or [])


# ------------------------------------------------------------------------------------------ option scoring
def option_scorer(model, tokenizer, use_chat_template: bool = False, max_prompt_tokens: int = 1024,
                  max_batch_tokens: int = 4096):
    """A frozen-LM scorer that scores options as training scored the observed answer: a space before the
    option (none under a chat template) and the end token after it, so no option is a prefix of another."""
    from mop.scoring import FrozenLMScorer

    return FrozenLMScorer(model, tokenizer, use_chat_template=use_chat_template,
                          target_prefix="" if use_chat_template else " ", max_prompt_tokens=max_prompt_tokens,
                          max_target_tokens=64, max_batch_tokens=max_batch_tokens, prefix_cache_mb=0.0)


def option_log_probs(scorer, prompts: Sequence[str], option_lists: Sequence[Sequence[str]],
                     temperatures: Sequence[float] | float = 1.0) -> list[np.ndarray]:
    """log P(option | prompt) for each prompt, normalised over its options: the LM's tempered
    log-likelihood of every option's tokens (``scorer.score_ids``), then a softmax over the options.

    One LM pass per prompt and option pair, the prompt's tokens shared by its options (the scorer's prefix
    sharing). Returns one (O_i,) float64 array per prompt."""
    import torch

    if len(option_lists) != len(prompts):
        raise MopError(f"got {len(prompts)} prompts but {len(option_lists)} option lists")
    temps = [float(temperatures)] * len(prompts) if isinstance(temperatures, (int, float)) else \
        [float(t) for t in temperatures]
    prompt_ids = scorer.encode_prompts(list(prompts))
    encoded: dict[tuple[str, ...], list[list[int]]] = {}
    flat_p, flat_t, flat_tau, spans = [], [], [], []
    for ids, opts, tau in zip(prompt_ids, option_lists, temps):
        key = tuple(opts)
        if key not in encoded:
            encoded[key] = scorer.encode_targets(list(opts))
        start = len(flat_p)
        flat_p += [ids] * len(opts)
        flat_t += encoded[key]
        flat_tau += [tau] * len(opts)
        spans.append((start, len(flat_p)))
    with torch.no_grad():
        ll = scorer.score_ids(flat_p, flat_t, torch.tensor(flat_tau, dtype=torch.float32)).double().cpu()
    return [torch.log_softmax(ll[a:b], dim=0).numpy() for a, b in spans]


def sample_option(probs: np.ndarray, seed: int) -> int:
    """An option index drawn from ``probs`` by one seeded uniform (inverse CDF): the same seed and
    probabilities give the same option, whichever other samples share the batch."""
    u = np.random.default_rng(seed).random()
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(probs) - 1))


class OptionSampler:
    """The closed-ended step of generation: for each sampled prompt, the options' probabilities and one
    option drawn from them (used by mop.generate.generate_population for an export with ``options``)."""

    def __init__(self, model, tokenizer, options: dict[str, list[str]], use_chat_template: bool = False):
        self.options = options
        self.scorer = option_scorer(model, tokenizer, use_chat_template)

    def sample(self, prompts: Sequence[str], labels: Sequence[str | None], temperatures: Sequence[float],
               seeds: Sequence[int]) -> list[dict[str, Any]]:
        """One answer per prompt: ``text`` and ``option`` (the drawn option), ``option_probs``
        {option: probability} (the LM's, normalised over the options, at the row's temperature)."""
        opts = [options_of(self.options, label) for label in labels]
        logps = option_log_probs(self.scorer, prompts, opts, temperatures)
        out = []
        for o, lp, seed in zip(opts, logps, seeds):
            p = np.exp(lp)
            i = sample_option(p, seed)
            out.append({"text": o[i], "option": o[i],
                        "option_probs": {name: round(float(x), 6) for name, x in zip(o, p)}})
        return out


# ------------------------------------------------------------------------------------------------- metrics
def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation distance of distributions over the last axis: half the L1 distance, in [0, 1]."""
    return 0.5 * np.abs(np.asarray(p, float) - np.asarray(q, float)).sum(-1)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits (base 2, so in [0, 1]) over the last axis."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    m = (p + q) / 2

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0.0).sum(-1)

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def wasserstein_ordinal(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance of distributions on an ordered scale of O options, the options placed at
    0, 1/(O-1), ..., 1 (so in [0, 1]): the summed gaps of the two cumulative distributions / (O - 1)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    gaps = np.abs(np.cumsum(p, -1) - np.cumsum(q, -1))[..., :-1]
    return gaps.sum(-1) / max(p.shape[-1] - 1, 1)


def _normalised(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts, dtype=float), where=total > 0)


@dataclass
class AnswerSet:
    """One method's answers to one question, aligned with the test respondents: ``counts`` (n, O) of its
    simulated answers per respondent, ``probs`` (n, O) its per-respondent option distribution (None: it has
    none, e.g. the real-against-real reference)."""

    counts: np.ndarray
    probs: np.ndarray | None = None


def bootstrap_weights(n: int, draws: int, seed: int) -> np.ndarray:
    """(draws + 1, n) multiplicities of a bootstrap over n respondents; row 0 is the sample itself."""
    rng = np.random.default_rng(seed)
    w = np.ones((draws + 1, n))
    for b in range(1, draws + 1):
        w[b] = np.bincount(rng.integers(0, n, n), minlength=n)
    return w


def distance_draws(sim: np.ndarray, real: np.ndarray, ordinal: bool) -> dict[str, np.ndarray]:
    """Distances of (draws + 1, O) simulated and real distributions: tv, js, (w)."""
    out = {"tv": total_variation(sim, real), "js": jensen_shannon(sim, real)}
    if ordinal:
        out["w"] = wasserstein_ordinal(sim, real)
    return out


def set_draws(answers: AnswerSet, real_onehot: np.ndarray, groups: np.ndarray, weights: np.ndarray,
              ordinal: bool, sim_groups: np.ndarray | None = None,
              sim_weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every metric of one set at every bootstrap draw (index 0: the point estimate), (draws + 1,) each.

    tv / js / w: the simulated against the real answer distribution of all test respondents;
    tv_group / js_group: the same within each group of the context column, averaged with the real group
    sizes as weights (the conditional distributions); loglik / brier: the real answer under the set's
    per-respondent option distribution (mean over respondents; higher / lower is better).
    ``sim_groups`` and ``sim_weights``: the groups and bootstrap of the simulated side when its respondents
    are not the test respondents (the real-against-real reference)."""
    sim_groups = groups if sim_groups is None else sim_groups
    sim_weights = weights if sim_weights is None else sim_weights
    real = weights @ real_onehot  # (B, O)
    sim = sim_weights @ answers.counts
    out = distance_draws(_normalised(sim), _normalised(real), ordinal)
    tv_g = np.zeros(len(weights))
    js_g = np.zeros(len(weights))
    mass = np.zeros(len(weights))
    for g in np.unique(groups):
        rg = weights[:, groups == g] @ real_onehot[groups == g]  # (B, O)
        sg = sim_weights[:, sim_groups == g] @ answers.counts[sim_groups == g]
        n_g = rg.sum(-1)
        ok = (n_g > 0) & (sg.sum(-1) > 0)
        tv_g += np.where(ok, n_g * total_variation(_normalised(sg), _normalised(rg)), 0.0)
        js_g += np.where(ok, n_g * jensen_shannon(_normalised(sg), _normalised(rg)), 0.0)
        mass += np.where(ok, n_g, 0.0)
    out["tv_group"] = tv_g / np.maximum(mass, 1e-12)
    out["js_group"] = js_g / np.maximum(mass, 1e-12)
    if answers.probs is not None:
        p = np.clip(answers.probs, 1e-12, 1.0)
        p = p / p.sum(-1, keepdims=True)
        total = weights.sum(-1)
        out["loglik"] = weights @ np.log((p * real_onehot).sum(-1)) / total
        out["brier"] = weights @ ((p - real_onehot) ** 2).sum(-1) / total
    return out


LOWER_IS_BETTER = {"tv": True, "js": True, "w": True, "tv_group": True, "js_group": True, "loglik": False,
                   "brier": True}


def summarise(draws: dict[str, np.ndarray], level: float = 0.95) -> dict[str, Any]:
    """Point estimates and percentile intervals of :func:`set_draws`' output."""
    out: dict[str, Any] = {}
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    for key, v in draws.items():
        out[key] = round(float(v[0]), 5)
        if len(v) > 1:
            out[f"{key}_ci"] = [round(float(np.percentile(v[1:], lo)), 5),
                                round(float(np.percentile(v[1:], hi)), 5)]
    return out


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], level: float = 0.95
                      ) -> dict[str, Any]:
    """a - b per metric, with the percentile interval of the differences over the same bootstrap draws
    (both sets evaluated with the same weights: a paired comparison)."""
    return summarise({k: a[k] - b[k] for k in a if k in b}, level)


# ---------------------------------------------------------------------------------- answers of the test set
def respondent_key(record) -> str:
    """The respondent of a record (its group, e.g. ``anes0001``; else its id)."""
    return record.group if record.group is not None else record.id


def answer_set(rows: Sequence[dict[str, Any]], records: Sequence, options: Sequence[str],
               name: str = "set") -> AnswerSet:
    """Counts and mean option probabilities per record of ``records`` (one question's test records) from
    generated survey rows (each with record_id, option, option_probs); every record needs a row."""
    pos = {r.id: i for i, r in enumerate(records)}
    at = {o: i for i, o in enumerate(options)}
    counts = np.zeros((len(records), len(options)))
    probs = np.zeros((len(records), len(options)))
    for row in rows:
        i = pos.get(row.get("record_id"))
        if i is None:
            continue
        if "option" not in row or "option_probs" not in row:
            raise MopError(f"{name}: row {row.get('id')!r} has no option / option_probs: not a survey "
                           "population (generate it with a gate export of a dataset with options)")
        if row["option"] not in at:
            raise MopError(f"{name}: row {row.get('id')!r} answers {row['option']!r}, not one of the options "
                           f"({' / '.join(options)})")
        counts[i, at[row["option"]]] += 1
        probs[i] += [float(row["option_probs"].get(o, 0.0)) for o in options]
    missing = np.flatnonzero(counts.sum(-1) == 0)
    if len(missing):
        raise MopError(f"{name}: {len(missing)} of {len(records)} test record(s) have no row (e.g. "
                       f"{records[int(missing[0])].id}): generate for every record of the split")
    return AnswerSet(counts, probs / counts.sum(-1, keepdims=True))


def onehot(records: Sequence, options: Sequence[str]) -> np.ndarray:
    at = {o: i for i, o in enumerate(options)}
    out = np.zeros((len(records), len(options)))
    for n, r in enumerate(records):
        out[n, at[r.response]] = 1
    return out


# ---------------------------------------------------------------------------------------- non-LLM reference
def _number(text: str) -> float | None:
    import re

    m = re.search(r"\d[\d,]*(?:\.\d+)?", str(text))
    return float(m.group(0).replace(",", "")) if m else None


def profile_features(train: Sequence, test: Sequence, columns: Sequence[str]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Standardised features of the profile columns, fitted on ``train``: a column whose every value holds a
    number is numeric (the first number, e.g. 45000 of "$45,000-$49,999"; log1p when it spans over two
    orders of magnitude), any other is one-hot over its train values."""
    blocks_tr, blocks_te = [], []
    for c in columns:
        tr = [r.context.get(c, "") for r in train]
        te = [r.context.get(c, "") for r in test]
        nums_tr, nums_te = [_number(v) for v in tr], [_number(v) for v in te]
        if all(v is not None for v in nums_tr + nums_te):
            a, b = np.array(nums_tr), np.array(nums_te)
            if a.min() >= 0 and a.max() > 100 * max(np.median(a), 1e-9) or a.max() > 1e3:
                a, b = np.log1p(a), np.log1p(b)
            blocks_tr.append(a[:, None])
            blocks_te.append(b[:, None])
        else:
            levels = sorted(set(tr))
            blocks_tr.append(np.array([[v == lv for lv in levels] for v in tr], float))
            blocks_te.append(np.array([[v == lv for lv in levels] for v in te], float))
    x_tr, x_te = np.hstack(blocks_tr), np.hstack(blocks_te)
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd[sd == 0] = 1
    return (x_tr - mu) / sd, (x_te - mu) / sd


def logistic_reference(train: Sequence, test: Sequence, options: Sequence[str], columns: Sequence[str],
                       samples: int = 1, seed: int = 0) -> AnswerSet:
    """A non-LLM reference: multinomial logistic regression of the answer on the profile (scikit-learn,
    L2, C = 1, fitted on the train respondents), its probabilities for the test respondents, and
    ``samples`` answers drawn from them per respondent (seeded)."""
    from sklearn.linear_model import LogisticRegression

    x_tr, x_te = profile_features(train, test, columns)
    y_tr = np.array([list(options).index(r.response) for r in train])
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x_tr, y_tr)
    probs = np.zeros((len(test), len(options)))
    probs[:, clf.classes_] = clf.predict_proba(x_te)
    rng = np.random.default_rng(seed)
    counts = np.zeros_like(probs)
    for i, p in enumerate(probs):
        for _ in range(samples):
            counts[i, sample_option(p, int(rng.integers(1 << 62)))] += 1
    return AnswerSet(counts, probs)


# -------------------------------------------------------------------------------------------- evaluation
def evaluate_survey(population, sets: dict[str, Sequence[dict[str, Any]]], *, split: str = "test",
                    reference_split: str | None = "train", group_by: str | None = None,
                    profile_columns: Sequence[str] | None = None, baselines: Sequence[str] = (),
                    compare: Sequence[str] = (), bootstrap: int = 1000, seed: int = 0,
                    reference_samples: int = 1, level: float = 0.95,
                    respondents: Sequence[str] | None = None) -> dict[str, Any]:
    """The survey evaluation of generated sets against the real answers of ``split``, per question.

    Every set is scored with the same bootstrap draws over the test respondents (paired); ``compare``: the
    sets whose paired differences against each of ``baselines`` (and the best of them per metric) are
    reported. References: real-against-real (the ``reference_split`` respondents' answers as the simulated
    set; log-likelihood of their marginal distribution) and a multinomial logistic regression on the
    ``profile_columns`` (default: every context column but the question's). ``group_by``: the context column
    of the per-group distances (default: none, the per-group figures then equal the overall ones).
    ``respondents``: evaluate these test respondents only (:func:`respondent_key`; default: all)."""
    spec = population.spec
    if not spec.options:
        raise MopError("the survey evaluation needs a dataset with options (a closed-ended population)")
    options: dict[str, list[str]] = spec.options
    ordinal = ordinal_keys(options, spec.ordinal)
    if group_by is not None and group_by not in spec.context_columns:
        raise MopError(f"group_by '{group_by}' is not a context column ({', '.join(spec.context_columns)})")
    if profile_columns is None:
        profile_columns = [c for c in spec.context_columns if c not in PROMPT_ONLY_COLUMNS]
    keep = None if respondents is None else set(respondents)
    unknown = [name for name in [*baselines, *compare] if name not in sets]
    if unknown:
        raise MopError(f"baselines / compare name set(s) {', '.join(unknown)} that were not evaluated "
                       f"({', '.join(sets)})")
    result: dict[str, Any] = {"split": split, "group_by": group_by, "bootstrap": bootstrap, "seed": seed,
                              "level": level, "questions": {}}
    for qi, (question, opts) in enumerate(options.items()):
        test = [r for r in population[split] if (r.label or ANY_LABEL) == question
                and (keep is None or respondent_key(r) in keep)]
        if not test:
            continue
        y = onehot(test, opts)
        groups = np.array([r.context.get(group_by, "") if group_by else "" for r in test])
        weights = bootstrap_weights(len(test), bootstrap, seed + qi)
        is_ord = question in ordinal
        q_out: dict[str, Any] = {"options": opts, "ordinal": is_ord, "n": len(test),
                                 "real": [round(float(x), 5) for x in y.mean(0)], "sets": {},
                                 "references": {}}
        draws: dict[str, dict[str, np.ndarray]] = {}
        for name, rows in sets.items():
            ans = answer_set(rows, test, opts, name)
            draws[name] = set_draws(ans, y, groups, weights, is_ord)
            q_out["sets"][name] = {**summarise(draws[name], level),
                                   "answers_per_respondent": float(ans.counts.sum() / len(test)),
                                   "simulated": [round(float(x), 5) for x in _normalised(ans.counts.sum(0))]}
        if reference_split:
            train = [r for r in population[reference_split] if (r.label or ANY_LABEL) == question]
            y_tr = onehot(train, opts)
            g_tr = np.array([r.context.get(group_by, "") if group_by else "" for r in train])
            w_tr = bootstrap_weights(len(train), bootstrap, seed + 1000 + qi)
            ref = set_draws(AnswerSet(y_tr), y, groups, weights, is_ord, sim_groups=g_tr, sim_weights=w_tr)
            marginal = np.tile(y_tr.mean(0), (len(test), 1))
            ref.update({k: v for k, v in set_draws(AnswerSet(y, marginal), y, groups, weights, is_ord).items()
                        if k in ("loglik", "brier")})
            q_out["references"]["real-against-real"] = {
                **summarise(ref, level), "respondents": len(train),
                "note": f"distances: the {reference_split} respondents' real answers; log-likelihood and "
                        "Brier: their marginal distribution for every test respondent"}
            lr = logistic_reference(train, test, opts, profile_columns, reference_samples, seed)
            draws["logistic-regression"] = set_draws(lr, y, groups, weights, is_ord)
            q_out["references"]["logistic-regression"] = {
                **summarise(draws["logistic-regression"], level),
                "note": f"multinomial logistic regression on {', '.join(profile_columns)}, fitted on the "
                        f"{reference_split} respondents; {reference_samples} answer(s) sampled per "
                        "respondent"}
        if compare and baselines:
            q_out["paired"] = {}
            for name in compare:
                diffs = {b: paired_difference(draws[name], draws[b], level) for b in baselines}
                best = {}
                for metric, lower in LOWER_IS_BETTER.items():
                    if metric not in draws[name]:
                        continue
                    pick = (min if lower else max)(baselines, key=lambda b, m=metric: draws[b][m][0])
                    d = summarise({metric: draws[name][metric] - draws[pick][metric]}, level)
                    best[metric] = {"baseline": pick, "diff": d[metric], "ci": d.get(f"{metric}_ci")}
                others = {"logistic-regression": paired_difference(draws[name], draws["logistic-regression"],
                                                                   level)} if "logistic-regression" in draws \
                    else {}
                q_out["paired"][name] = {"best_baseline": best, "each": diffs, **others}
        result["questions"][question] = q_out
    return result


# --------------------------------------------------------------------------------------------- the command
def format_survey_table(result: dict[str, Any]) -> str:
    """One markdown table per question: each set and reference with its 95% intervals."""

    def cell(d, key):
        if key not in d:
            return "–"
        ci = d.get(f"{key}_ci")
        return f"{d[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    out = []
    for question, q in result["questions"].items():
        keys = ["tv", "js"] + (["w"] if q["ordinal"] else []) + ["tv_group", "loglik", "brier"]
        head = {"tv": "TV", "js": "JS", "w": "W", "tv_group": f"TV within {result['group_by'] or '-'}",
                "loglik": "log-lik", "brier": "Brier"}
        lines = [f"{question or 'answers'} ({q['n']} respondents of {result['split']})", "",
                 "| set | " + " | ".join(head[k] for k in keys) + " |", "| --- |" + " --- |" * len(keys)]
        for name, d in [*q["sets"].items(), *q["references"].items()]:
            lines.append(f"| {name} | " + " | ".join(cell(d, k) for k in keys) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def evaluate_command(synthetic: Sequence[str], output: str, config: str, split: str = "test",
                     names: Sequence[str] | None = None, reference_split: str | None = "train",
                     group_by: str | None = None, seed: int = 0, bootstrap: int = 1000) -> int:
    """``mop evaluate -c SURVEY_CONFIG``: the survey evaluation of generated answer files (mop.evaluate)."""
    import time

    from mop.data import iter_jsonl_objects, load_dataset_config, load_population
    from mop.evaluate import write_json_atomic

    t0 = time.perf_counter()
    population = load_population(load_dataset_config(config))
    if reference_split == split:
        raise MopError(f"--reference-split '{split}' is the evaluated split itself")
    sets: dict[str, list[dict[str, Any]]] = {}
    for n, path in enumerate(synthetic):
        rows = [obj for _, obj in iter_jsonl_objects(path, f"synthetic file '{path}'")]
        if not rows:
            raise MopError(f"synthetic file '{path}' has no rows")
        name = names[n] if names else f"{rows[0].get('method', 'set')}/{rows[0].get('model', n)}"
        if name in sets:
            raise MopError(f"two synthetic sets are named '{name}': pass --names")
        sets[name] = rows
    result = evaluate_survey(population, sets, split=split,
                             reference_split=None if reference_split in (None, "none") else reference_split,
                             group_by=group_by, bootstrap=bootstrap, seed=seed)
    result["files"] = dict(zip(sets, map(str, synthetic)))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(result, output)
    print(format_survey_table(result))
    print(f"\n{len(sets)} set(s), survey evaluation in {result['seconds']:.0f} s -> {output}")
    return 0
