"""Closed-ended populations (mop.survey): options, option scoring and sampling, rows, the evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, make_export, make_tiny_lm, run_cli

from mop.data import DatasetSpec, Population, Record, load_population
from mop.errors import MopError
from mop.survey import (
    AnswerSet,
    OptionSampler,
    answer_set,
    bootstrap_weights,
    evaluate_survey,
    jensen_shannon,
    logistic_reference,
    option_log_probs,
    option_scorer,
    resolve_options,
    sample_option,
    set_draws,
    total_variation,
    wasserstein_ordinal,
)


def _direct_option_log_probs(model, tok, prompt: str, options: list[str], tau: float) -> np.ndarray:
    """Each option's tempered log-likelihood by one plain forward pass over prompt + " option" + EOS,
    then normalised over the options: what option_log_probs must equal."""
    out = []
    for o in options:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(" " + o, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + t])
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        logp = torch.log_softmax(logits / tau, -1)
        out.append(sum(float(logp[len(p) - 1 + i, y]) for i, y in enumerate(t)))
    out = np.array(out)
    return out - np.logaddexp.reduce(out)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_option_probabilities_are_the_lms_normalised_option_likelihoods(arch):
    model, tok = make_tiny_lm(arch, seed=7)
    scorer = option_scorer(model, tok)
    prompts = [
        "Respondent: 40 years old.\nQuestion: vote?\nAnswer:",
        "Respondent: 71 years old.\nAnswer:",
        "Q: party?\nAnswer:",
    ]
    option_lists = [
        ["Clinton", "Dole"],
        ["Clinton", "Dole"],
        ["Strong Democrat", "Independent", "Independent, leaning Republican"],
    ]
    temps = [1.0, 0.6, 1.3]
    got = option_log_probs(scorer, prompts, option_lists, temps)
    for g, p, o, t in zip(got, prompts, option_lists, temps):
        want = _direct_option_log_probs(model, tok, p, o, t)
        np.testing.assert_allclose(g, want, atol=2e-5)
        assert np.exp(g).sum() == pytest.approx(1.0, abs=1e-9)


def test_sampled_options_follow_the_probabilities():
    probs = np.array([0.2, 0.5, 0.3])
    picks = np.bincount([sample_option(probs, s) for s in range(20_000)], minlength=3) / 20_000
    np.testing.assert_allclose(picks, probs, atol=0.012)
    assert sample_option(probs, 123) == sample_option(probs, 123)
    assert {sample_option(np.array([0.0, 1.0, 0.0]), s) for s in range(200)} == {1}


def test_distances_match_hand_computed_values():
    assert total_variation([0.5, 0.5], [1.0, 0.0]) == pytest.approx(0.5)
    assert total_variation([0.2, 0.3, 0.5], [0.5, 0.3, 0.2]) == pytest.approx(0.3)
    assert jensen_shannon([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)  # bits
    assert jensen_shannon([0.3, 0.7], [0.3, 0.7]) == pytest.approx(0.0)
    # JS([1, 0], [.5, .5]): m = [.75, .25]; .5 * log2(1 / .75) + .5 * (.5 log2(.5/.75) + .5 log2(.5/.25))
    want = 0.5 * np.log2(1 / 0.75) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25))
    assert jensen_shannon([1.0, 0.0], [0.5, 0.5]) == pytest.approx(want)
    assert wasserstein_ordinal([1, 0, 0], [0, 0, 1]) == pytest.approx(1.0)
    assert wasserstein_ordinal([1, 0, 0], [0, 1, 0]) == pytest.approx(0.5)
    # the same TV, different W: mass moved one step or across the scale
    assert wasserstein_ordinal([0.5, 0.5, 0, 0, 0], [0, 1, 0, 0, 0]) == pytest.approx(0.125)
    assert wasserstein_ordinal([0.5, 0, 0, 0, 0.5], [0, 0, 0, 0, 1]) == pytest.approx(0.5)


def test_set_metrics_match_hand_computed_values():
    # 4 respondents, 2 options; groups a, a, b, b; real answers 0, 1, 0, 0
    real = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], float)
    groups = np.array(["a", "a", "b", "b"])
    counts = np.array([[2, 0], [2, 0], [1, 1], [0, 2]], float)  # 2 answers each
    probs = np.array([[0.8, 0.2], [0.5, 0.5], [0.5, 0.5], [0.25, 0.75]])
    d = set_draws(AnswerSet(counts, probs), real, groups, np.ones((1, 4)), ordinal=False)
    # overall: simulated [5/8, 3/8], real [3/4, 1/4] -> TV 1/8
    assert d["tv"][0] == pytest.approx(0.125)
    # group a: sim [1, 0] vs real [.5, .5] -> .5; group b: sim [.25, .75] vs real [1, 0] -> .75; sizes 2, 2
    assert d["tv_group"][0] == pytest.approx(0.625)
    # groups of 3 and 1: a: sim [5/6, 1/6], real [2/3, 1/3] -> 1/6; b: [0, 1] vs [1, 0] -> 1; weights 3, 1
    d3 = set_draws(AnswerSet(counts, probs), real, np.array(["a", "a", "a", "b"]), np.ones((1, 4)), False)
    assert d3["tv_group"][0] == pytest.approx((3 / 6 + 1) / 4)
    assert d["loglik"][0] == pytest.approx(np.mean(np.log([0.8, 0.5, 0.5, 0.25])))
    brier = [0.2**2 * 2, 0.5**2 * 2, 0.5**2 * 2, 0.75**2 * 2]
    assert d["brier"][0] == pytest.approx(np.mean(brier))
    # a bootstrap draw that holds respondent 0 four times is that respondent's figures alone
    w = np.array([[4, 0, 0, 0]], float)
    d = set_draws(AnswerSet(counts, probs), real, groups, w, ordinal=False)
    assert d["tv"][0] == pytest.approx(0.0) and d["loglik"][0] == pytest.approx(np.log(0.8))


def test_bootstrap_weights_resample_the_respondents():
    w = bootstrap_weights(50, 200, seed=3)
    assert w.shape == (201, 50) and (w[0] == 1).all() and (w.sum(1) == 50).all()
    assert not (w[1:] == 1).all()
    np.testing.assert_array_equal(w, bootstrap_weights(50, 200, seed=3))


def _records(answers: list[tuple[str, str]], prefix: str = "r") -> list[Record]:
    return [
        Record(
            id=f"{prefix}{i}-{q}",
            response=a,
            context={"age": str(30 + i % 40), "ideology": ["left", "right"][i % 2]},
            label=q,
            group=f"{prefix}{i}",
        )
        for i, (q, a) in enumerate(answers)
    ]


def test_resolve_options_checks_every_answer():
    recs = _records([("vote", "Clinton"), ("vote", "Dole"), ("pid", "Democrat")])
    spec = DatasetSpec(
        source="x.csv", options={"vote": ["Clinton", "Dole"], "pid": ["Democrat", "Republican"]}
    )
    assert resolve_options(spec, recs) == spec.options
    spec.options = "infer"
    with pytest.raises(MopError, match="the options of 'pid' must be a list of at least 2"):
        resolve_options(spec, recs)  # one answer seen: no choice to model
    more = recs + _records([("pid", "Republican")], prefix="s")
    assert resolve_options(spec, more) == {"vote": ["Clinton", "Dole"], "pid": ["Democrat", "Republican"]}
    spec.options = {"vote": ["Clinton", "Dole"]}
    with pytest.raises(MopError, match="options has no list for label\\(s\\) 'pid'"):
        resolve_options(spec, recs)
    spec.options = {"vote": ["Clinton", "Perot"], "pid": ["Democrat", "Republican"]}
    with pytest.raises(
        MopError,
        match="record r1-vote: the answer 'Dole' is not one of the options of 'vote' \\(Clinton / Perot\\)",
    ):
        resolve_options(spec, recs)
    spec.options = {"vote": ["Clinton", "Clinton"], "pid": ["Democrat", "Republican"]}
    with pytest.raises(MopError, match="repeat an option"):
        resolve_options(spec, recs)
    spec.options, spec.ordinal = {"vote": ["Clinton", "Dole"], "pid": ["Democrat", "Republican"]}, ["party"]
    with pytest.raises(MopError, match="ordinal names 'party'"):
        resolve_options(spec, recs)


def test_an_answer_outside_the_options_is_one_clear_line(tmp_path):
    path = tmp_path / "survey.csv"
    path.write_text("answer,age\nyes,30\nno,40\nmaybe,50\n")
    cfg = tmp_path / "data.yaml"
    base = f"source: {path}\nresponse_column: answer\ncontext_columns: [age]\nsplit: [0.4, 0.3, 0.3]\n"
    cfg.write_text(base + "options: ['yes', 'no']\n")
    assert_one_line_error(
        run_cli("data", "show", "-c", str(cfg)),
        "r000002: the answer 'maybe' is not one of the options (yes / no)",
    )
    cfg.write_text(base + "options: [yes, no, maybe]\n")
    assert_one_line_error(
        run_cli("data", "show", "-c", str(cfg)), "found [True, False, 'maybe']", "quote them"
    )


def _survey_export(tmp_path):
    from mop.export import load_export

    export = load_export(make_export(tmp_path / "gate", dim=16, k=4, init_std=0.6).path)
    export.config = {
        **export.config,
        "options": {"fresh": ["good", "bad"], "rotten": ["bad", "awful", "fine"]},
    }
    return export


def test_closed_ended_rows_record_the_option_and_its_probabilities(tmp_path):
    from mop.generate import Sampling, generate_population

    model, tok = make_tiny_lm(seed=1)
    export = _survey_export(tmp_path)
    records = [
        Record(id=f"c{i}", response="", context={"movie": f"Film {i}"}, label=["fresh", "rotten"][i % 2])
        for i in range(3)
    ]
    emb = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)

    def run(name, method="mop", **kw):
        generate_population(
            export,
            model,
            tok,
            records,
            tmp_path / name,
            Sampling(num_samples=6, method=method, **{"batch_size": 4, **kw}),
            context_emb=emb if method == "mop" else None,
            model_name="tiny",
            progress=False,
        )
        return [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]

    rows = run("a.jsonl")
    assert len(rows) == 6
    for row in rows:
        opts = export.config["options"][row["label"]]
        assert row["option"] in opts and row["text"] == row["option"]
        assert list(row["option_probs"]) == opts
        assert sum(row["option_probs"].values()) == pytest.approx(1.0, abs=1e-5)
    # the probabilities are the LM's for the row's own prompt at its temperature
    from mop.generate import ComponentSampler, build_prompt, derive_seed, sample_key

    row = rows[3]
    rec = next(r for r in records if r.id == row["record_id"])
    comp = ComponentSampler(export, "mop").sample(
        emb[[records.index(rec)]], [rec.id], [sample_key(row["id"])], 0, labels=[rec.label]
    )[0]
    assert export.exemplars[comp.exemplar].id == row["exemplar_id"]
    want = _direct_option_log_probs(
        model, tok, build_prompt(export, rec, comp), export.config["options"][rec.label], comp.temperature
    )
    np.testing.assert_allclose(list(row["option_probs"].values()), np.exp(want), atol=2e-5)
    again = OptionSampler(model, tok, export.config["options"]).sample(
        [build_prompt(export, rec, comp)],
        [rec.label],
        [comp.temperature],
        [derive_seed(0, sample_key(row["id"]), 1)],
    )
    assert again[0]["option"] == row["option"]
    assert rows == run("b.jsonl", batch_size=5)  # same seed, same rows, whatever the batch
    zs = run("z.jsonl", method="zerogen")
    # zero-shot: one prompt per record, so its draws share their probabilities
    by_rec = {}
    for row in zs:
        by_rec.setdefault(row["record_id"], []).append(row["option_probs"])
    assert all(all(p == ps[0] for p in ps) for ps in by_rec.values())


def test_answer_sets_and_bad_rows():
    recs = _records([("vote", "Clinton"), ("vote", "Dole")])
    rows = [
        {"id": "a", "record_id": "r0-vote", "option": "Dole", "option_probs": {"Clinton": 0.4, "Dole": 0.6}},
        {
            "id": "b",
            "record_id": "r0-vote",
            "option": "Clinton",
            "option_probs": {"Clinton": 0.2, "Dole": 0.8},
        },
        {"id": "c", "record_id": "r1-vote", "option": "Dole", "option_probs": {"Clinton": 0.1, "Dole": 0.9}},
    ]
    s = answer_set(rows, recs, ["Clinton", "Dole"])
    np.testing.assert_allclose(s.counts, [[1, 1], [0, 1]])
    np.testing.assert_allclose(s.probs, [[0.3, 0.7], [0.1, 0.9]])
    with pytest.raises(MopError, match="1 of 2 test record\\(s\\) have no row \\(e.g. r1-vote\\)"):
        answer_set(rows[:2], recs, ["Clinton", "Dole"])
    with pytest.raises(MopError, match="answers 'Perot', not one of the options"):
        answer_set([{**rows[0], "option": "Perot"}, rows[2]], recs, ["Clinton", "Dole"])
    with pytest.raises(MopError, match="no option / option_probs: not a survey population"):
        answer_set([{"id": "t", "record_id": "r0-vote", "text": "Clinton"}], recs, ["Clinton", "Dole"])


def _population(n: int = 120, seed: int = 0) -> Population:
    """A survey whose answer follows the ideology: left -> Clinton (90%), right -> Dole (90%)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, size in (("train", n), ("val", 10), ("test", n)):
        recs = []
        for i in range(size):
            ideo = ["left", "right"][int(rng.integers(2))]
            ans = (
                ("Clinton" if ideo == "left" else "Dole")
                if rng.random() < 0.9
                else ("Dole" if ideo == "left" else "Clinton")
            )
            recs.append(
                Record(
                    id=f"{split}{i}-vote",
                    response=ans,
                    context={"age": str(int(rng.integers(20, 80))), "ideology": ideo},
                    label="vote",
                    group=f"{split}{i}",
                )
            )
        splits[split] = recs
    spec = DatasetSpec(
        source="x.csv",
        response_column="answer",
        context_columns=["age", "ideology"],
        label_column="q",
        options={"vote": ["Clinton", "Dole"]},
    )
    return Population(spec=spec, splits=splits)


def _rows_from(probs_of, records, answers: int = 2, seed: int = 0):
    rows = []
    for r in records:
        p = probs_of(r)
        for a in range(answers):
            i = sample_option(np.array(p), seed * 100_000 + hash((r.id, a)) % 100_000)
            rows.append(
                {
                    "id": f"{r.id}-{a}",
                    "record_id": r.id,
                    "option": ["Clinton", "Dole"][i],
                    "option_probs": {"Clinton": p[0], "Dole": p[1]},
                }
            )
    return rows


def test_survey_evaluation_ranks_a_conditional_set_above_a_marginal_one():
    pop = _population()
    test = pop["test"]
    conditional = _rows_from(lambda r: [0.9, 0.1] if r.context["ideology"] == "left" else [0.1, 0.9], test)
    marginal = _rows_from(lambda r: [0.5, 0.5], test)
    res = evaluate_survey(
        pop,
        {"mop": conditional, "fewshot": marginal},
        group_by="ideology",
        baselines=["fewshot"],
        compare=["mop"],
        bootstrap=200,
        seed=0,
    )
    q = res["questions"]["vote"]
    assert q["n"] == len(test) and q["sets"]["mop"]["answers_per_respondent"] == 2
    mop, few = q["sets"]["mop"], q["sets"]["fewshot"]
    assert mop["tv_group"] < few["tv_group"] and mop["loglik"] > few["loglik"]
    assert mop["loglik"] == pytest.approx(
        np.mean(
            [
                np.log(0.9) if (r.response == "Clinton") == (r.context["ideology"] == "left") else np.log(0.1)
                for r in test
            ]
        ),
        abs=1e-4,
    )
    best = q["paired"]["mop"]["best_baseline"]["loglik"]
    assert best["baseline"] == "fewshot" and best["ci"][0] > 0  # the paired interval excludes zero
    lo, hi = mop["tv_group_ci"]
    assert lo <= mop["tv_group"] <= hi
    rr = q["references"]["real-against-real"]
    assert rr["respondents"] == len(pop["train"]) and rr["tv"] < 0.2
    # the profile's ideology decides the answer: the logistic regression learns it
    assert q["references"]["logistic-regression"]["loglik"] > few["loglik"]
    with pytest.raises(MopError, match="group_by 'income' is not a context column"):
        evaluate_survey(pop, {"mop": conditional}, group_by="income")


def test_logistic_reference_learns_the_profile():
    pop = _population(200)
    s = logistic_reference(pop["train"], pop["test"], ["Clinton", "Dole"], ["age", "ideology"], samples=3)
    assert s.counts.sum() == 3 * len(pop["test"])
    left = np.array([r.context["ideology"] == "left" for r in pop["test"]])
    assert s.probs[left, 0].mean() > 0.8 and s.probs[~left, 1].mean() > 0.8


def test_free_text_specs_keep_their_artifact_keys():
    from mop.datamodule import PopulationDataModule

    # the keys of the code before the survey keys (git 1418a5c): free-text artifacts stay valid
    a = PopulationDataModule(dataset=DatasetSpec(source="rotten-tomatoes")).artifact_key()
    b = PopulationDataModule(dataset=DatasetSpec(source="guardian-headlines", max_records={"train": 5}))
    assert (a, b.artifact_key()) == ("6d569c10dc553a7c", "25a439d5baacc261")
    c = PopulationDataModule(dataset=DatasetSpec(source="rotten-tomatoes", options="infer")).artifact_key()
    assert c != a


@pytest.mark.slow
def test_bundled_anes96_survey():
    pop = load_population({"source": "anes96", "split": [0.5, 0.1, 0.4], "seed": 0})
    sizes = {s: len({r.group for r in pop[s]}) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 944 and sizes["test"] == 378
    assert pop.spec.options["vote"] == ["Clinton", "Dole"] and len(pop.spec.options["party_id"]) == 7
    assert all(
        len([r for r in pop["test"] if r.group == g]) == 2 for g in {r.group for r in pop["test"][:20]}
    )
    rec = next(r for r in pop["train"] if r.label == "vote")
    assert pop.render_context(rec) == (
        "Respondent: age 58, PhD, income $45,000-$49,999, TV news 7 days a week, a place of about 9,000 "
        "people, moderate.\nExpected vote in the 1996 presidential election (Clinton / Dole)?"
    ) and rec.id == "anes0533-vote" and rec.response == "Clinton"  # statsmodels' row 533, readable
    vote = [r for r in pop["test"] if r.label == "vote"]
    lr = logistic_reference(
        [r for r in pop["train"] if r.label == "vote"],
        vote,
        ["Clinton", "Dole"],
        ["age", "education", "income", "tv_news", "place", "ideology"],
    )
    y = np.array([r.response == "Dole" for r in vote])
    marginal = np.mean([r.response == "Dole" for r in pop["train"] if r.label == "vote"])
    ll_lr = np.mean(np.log(np.where(y, lr.probs[:, 1], lr.probs[:, 0])))
    ll_marginal = np.mean(np.log(np.where(y, marginal, 1 - marginal)))
    assert ll_lr > ll_marginal + 0.1  # the self-placement predicts the vote


def test_mop_evaluate_runs_the_survey_evaluation_for_a_survey_config(tmp_path):
    rows = [{"id": f"p{i}", "answer": ["Clinton", "Dole"][i % 2], "ideology": ["left", "right"][i % 2],
             "age": str(20 + i)} for i in range(40)]
    data = tmp_path / "survey.csv"
    lines = [f"{r['id']},{r['answer']},{r['ideology']},{r['age']}\n" for r in rows]
    data.write_text("id,answer,ideology,age\n" + "".join(lines))
    cfg = tmp_path / "survey.yaml"
    cfg.write_text(f"source: {data}\nresponse_column: answer\nid_column: id\n"
                   "context_columns: [ideology, age]\noptions: [Clinton, Dole]\nsplit: [0.5, 0.1, 0.4]\n")
    pop = load_population({"source": str(data), "response_column": "answer", "id_column": "id",
                           "context_columns": ["ideology", "age"], "options": ["Clinton", "Dole"],
                           "split": [0.5, 0.1, 0.4]})
    out = tmp_path / "answers.jsonl"
    with out.open("w") as fh:
        for r in pop["test"]:  # a perfect simulator: the real answer with probability 1
            p = {"Clinton": float(r.response == "Clinton"), "Dole": float(r.response == "Dole")}
            fh.write(json.dumps({"id": f"{r.id}-0", "record_id": r.id, "method": "mop", "model": "x",
                                 "option": r.response, "text": r.response, "option_probs": p}) + "\n")
    proc = run_cli("evaluate", "-c", str(cfg), "--synthetic", str(out), "--group-by", "ideology", "--output",
                   str(tmp_path / "r.json"), "--bootstrap", "50")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    q = res["questions"][""]
    assert q["n"] == len(pop["test"]) and q["sets"]["mop/x"]["tv"] == 0 and q["sets"]["mop/x"]["loglik"] == 0
    assert "real-against-real" in q["references"] and "logistic-regression" in q["references"]
    assert "| mop/x | 0.000" in proc.stdout
    text_rows = tmp_path / "texts.jsonl"  # free-text rows: no option
    text_rows.write_text("".join(json.dumps({"id": f"{r.id}-0", "record_id": r.id, "text": "Clinton"}) + "\n"
                                 for r in pop["test"]))
    proc = run_cli("evaluate", "-c", str(cfg), "--synthetic", str(text_rows), "--output",
                   str(tmp_path / "r2.json"))
    assert_one_line_error(proc, "not a survey population")
