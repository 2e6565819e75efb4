"""Persona synthesis (docs/method.md section 3): cluster the responses, then describe each cluster's writer.

Three sources of personas g_1..g_K:

- ``llm``: a causal LM reads the records nearest each centroid and writes "You are ..." (one or two
  sentences). Answers are cleaned and validated (length, English-like, no non-word or garbled ending, no
  copied record text, no duplicate of another cluster's persona); a failing cluster is retried with seeded
  sampling and finally falls back to its keywords persona (``Persona.source == "fallback"``).
- ``keywords``: no LLM; the cluster's most distinctive terms by class-based TF-IDF (c-TF-IDF).
- a user's JSONL file (``load_personas_jsonl``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from mop.errors import MopError, refuse_unknown_keys
from mop.files import write_text_atomic
from mop.types import PositiveInt

log = logging.getLogger(__name__)

SYNTHESIZERS = ("llm", "keywords")
PERSONAS_FILE = "personas.jsonl"
NULL_PERSONA_ID = "none"
NULL_SOURCE = "none"


@dataclass
class Persona:
    """A persona g_k and the cluster it describes (empty for user-supplied personas).

    ``source`` is "llm", "keywords", "fallback" (the LLM's answers failed validation, keywords used),
    "user" or "none" (the persona-free component, :data:`NULL_PERSONA_ID`: empty text, so its prompts have no
    persona line).
    """

    id: str
    text: str
    cluster_size: int = 0
    member_ids: list[str] = field(default_factory=list)
    representative_ids: list[str] = field(default_factory=list)
    source: str = "user"


class PersonaList:
    """For a class holding ``personas`` (a list of :class:`Persona`): their ids, texts and sizes as lists."""

    personas: list[Persona]

    @property
    def persona_ids(self) -> list[str]:
        return [p.id for p in self.personas]

    @property
    def persona_texts(self) -> list[str]:
        return [p.text for p in self.personas]

    @property
    def persona_sizes(self) -> list[int]:
        return [p.cluster_size for p in self.personas]

    @property
    def described_personas(self) -> list[int]:
        """Positions of the personas with a description (all but the persona-free component)."""
        return [k for k, p in enumerate(self.personas) if p.source != NULL_SOURCE]

    @property
    def null_persona_index(self) -> int | None:
        """Position of the persona-free component, or None when the personas have none."""
        return next((k for k, p in enumerate(self.personas) if p.source == NULL_SOURCE), None)


def null_persona() -> Persona:
    """The persona-free mixture component: its prompt drops the "Persona:" line (a line whose fields are all
    empty is dropped), so the gate can choose, per context, to write without a persona."""
    return Persona(id=NULL_PERSONA_ID, text="", source=NULL_SOURCE)


@dataclass
class PersonaSpec:
    """How personas are made.

    Args:
        num_personas: K, the number of k-means clusters / personas.
        synthesizer: ``llm`` (a causal LM describes each cluster), ``keywords`` (no LLM) or ``file``.
        lm: the LLM writing personas (bundled name, path or hub id).
        file: a JSONL of user-supplied personas (``{"text": ...}`` per line), used when synthesizer is
            ``file``.
        text_kind: what the responses are, in words, for the persona prompts.
        role: who writes them (e.g. ``critic``), for the persona prompts.
        seed: seed of k-means and of the LLM's sampled retries.
        null_persona: add a persona-free component (:func:`null_persona`) after the K personas, so the
            gate mixes K + 1 components and one of them is the few-shot prompt (no persona line).
    """

    num_personas: PositiveInt = 20
    synthesizer: Literal["llm", "keywords", "file"] = "llm"
    lm: str = "smollm2-135m"
    file: str | None = None
    text_kind: str = "texts"
    role: str = "writer"
    seed: int = 0
    null_persona: bool = False



# --- clustering ---------------------------------------------------------------------------------------------
def cluster_responses(
    embeddings: np.ndarray, k: int, seed: int = 0, n_init: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means of the response embeddings -> (labels (N,) int64, centroids (k, D) float32)."""
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise MopError(f"embeddings must be a non-empty (N, D) array, got shape {x.shape}")
    n = x.shape[0]
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise MopError(f"number of personas k must be an integer >= 1, got {k!r}")
    if k > n:
        raise MopError(f"cannot make k={k} clusters from {n} responses: k must be <= the number of responses")
    distinct = len(np.unique(x, axis=0))
    if k > distinct:
        raise MopError(f"cannot make k={k} clusters: only {distinct} of the {n} responses are distinct")
    km = KMeans(n_clusters=int(k), n_init=n_init, random_state=seed).fit(x)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


def _members_by_cluster(labels: np.ndarray, centroids: np.ndarray, embeddings: np.ndarray) -> list:
    """Member indices of each cluster, nearest the centroid first (stable on ties)."""
    out = []
    for c in range(len(centroids)):
        idx = np.flatnonzero(labels == c)
        d = np.linalg.norm(embeddings[idx] - centroids[c], axis=1)
        out.append(idx[np.argsort(d, kind="stable")])
    return out


def _representatives(members: np.ndarray, texts: Sequence[str], n: int) -> list[int]:
    """The n members nearest the centroid, skipping repeated texts (members is already sorted)."""
    seen, reps = set(), []
    for i in members:
        key = " ".join(texts[i].split()).lower()
        if key not in seen:
            seen.add(key)
            reps.append(int(i))
        if len(reps) == n:
            break
    return reps


# --- keywords (c-TF-IDF) ------------------------------------------------------------------------------------
def cluster_keywords(texts: Sequence[str], labels: np.ndarray, k: int, top_n: int = 10) -> list[list[str]]:
    """Each cluster's most distinctive terms by class-based TF-IDF (BERTopic's c-TF-IDF).

    score(t, c) = tf(t, c) * log(1 + A / f(t)): tf is the term's share of the cluster's words, f(t) its count
    over all clusters and A the average number of words per cluster.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    docs = [" ".join(texts[i] for i in np.flatnonzero(labels == c)) for c in range(k)]
    vec = CountVectorizer(stop_words="english", lowercase=True, token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
    try:
        counts = vec.fit_transform(docs).toarray().astype(np.float64)  # (k, V)
    except ValueError:  # nothing but stop words
        return [[] for _ in range(k)]
    vocab = vec.get_feature_names_out()
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    avg_words = counts.sum() / k
    idf = np.log1p(avg_words / np.maximum(counts.sum(axis=0), 1.0))
    scores = tf * idf
    overall = counts.sum(axis=0) / max(counts.sum(), 1.0)  # (V,) each term's share of all words
    out = []
    for c in range(k):
        # prefer terms seen at least twice in the cluster (one-off names are noise); ties break alphabetically
        over = np.flatnonzero((counts[c] > 0) & (tf[c] > overall))  # over-represented in the cluster
        pool = over if len(over) else np.flatnonzero(counts[c] > 0)
        order = sorted(pool, key=lambda j: (counts[c, j] < 2, -scores[c, j], vocab[j]))
        out.append([str(vocab[j]) for j in order[:top_n]])
    return out


def _join_terms(terms: Sequence[str]) -> str:
    terms = list(terms)
    if not terms:
        return "many different things"
    return terms[0] if len(terms) == 1 else ", ".join(terms[:-1]) + " and " + terms[-1]


def _label_mix(cluster_labels: Sequence[str | None]) -> str:
    """", and are mostly fresh" / ", and are a mix of fresh and rotten" from a cluster's labels."""
    counts = Counter(str(lab) for lab in cluster_labels if lab is not None and str(lab) != "")
    if not counts:
        return ""
    (top, n_top), *rest = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    share = n_top / sum(counts.values())
    if share >= 0.7 or not rest:
        return f", and are mostly {top}"
    return f", and are a mix of {top} and {rest[0][0]}"


KEYWORDS_TEMPLATE = "You are someone whose {text_kind} often talk about {terms}{label_mix}."


def keyword_persona(terms: Sequence[str], text_kind: str = "texts", cluster_labels: Sequence[str | None] = (),
                    template: str = KEYWORDS_TEMPLATE) -> str:
    """Render a keywords persona, e.g. "You are someone whose movie reviews often talk about X, Y and Z."."""
    mix = _label_mix(cluster_labels)
    return template.format(text_kind=text_kind, terms=_join_terms(terms), label_mix=mix)


def keyword_personas(texts: Sequence[str], labels: np.ndarray, k: int, n_terms: int = 3,
                     text_kind: str = "texts",
                     record_labels: Sequence[str | None] | None = None, template: str = KEYWORDS_TEMPLATE,
                     avoid: Sequence[str] = ()) -> list[str]:
    """One distinct keywords persona per cluster (more terms where two clusters would read alike)."""
    keywords = cluster_keywords(texts, labels, k, top_n=max(n_terms + 7, 10))
    used = {_normalise(a) for a in avoid}
    out = []
    for c in range(k):
        mix = [record_labels[i] for i in np.flatnonzero(labels == c)] if record_labels is not None else []
        n, text = n_terms, ""
        while True:
            text = keyword_persona(keywords[c][:n], text_kind, mix, template)
            if _normalise(text) not in used or n >= len(keywords[c]):
                break
            n += 1
        if _normalise(text) in used:  # same words everywhere (tiny clusters): make it unique by its number
            text = text[:-1] + f" (group {c + 1})."
        used.add(_normalise(text))
        out.append(text)
    return out


# --- cleaning and validation --------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z0-9']+")
_STOP: frozenset[str] | None = None
_META = re.compile(r"\b(as an ai|language model|ai assistant|smollm|i'?m sorry|i cannot|i can'?t|sure,? here|"
                   r"here is|here's)\b", re.IGNORECASE)
_DANGLING = frozenset({
    "a", "an", "the", "and", "or", "but", "of", "to", "with", "who", "whose", "that", "which", "for", "in",
    "on", "by", "as", "at", "from", "is", "are", "your", "their", "his", "her", "its", "very",
})
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z])")
# Words a persona often uses (with the stop words, the records' words and any given vocabulary: the words
# known without a dictionary); a long word outside them must look derived (a common suffix) to pass.
_COMMON_WORDS = frozenset("""
actor actors acting action adaptation adaptations adventure ambitious animated animation appreciates
appreciation appreciative arthouse atmosphere atmospheric audience audiences authentic authenticity
blockbuster blockbusters breathtaking cast characters character characterization characterisation cinema
cinematic cinematography classic clever cliche cliches comedy comedies compelling craft craftsmanship creative
creativity critic critics dialogue directing director directors documentary documentaries drama dramas
emotional emotionally engaging ensemble entertaining entertainment enthusiasm enthusiastic especially
experimental extraordinary fantasy film films filmmaker filmmakers filmmaking formulaic franchise franchises
genre genres heartfelt heartwarming historical horror humor humour imaginative independent intelligent
international lighthearted mainstream melodrama melodramatic mood movie movies musical musicals mystery
narrative narratives nostalgic originality overrated pacing passionate performance performances perspective
plot plots predictable pretentious psychological realism relationships remake remakes romance romantic
satire screenplay screenwriters script scripts sentimental sequel sequels sophisticated soundtrack spectacle
storyline storylines storyteller storytelling strengths style subtle suspense suspenseful thoughtful thriller
thrillers underrated understated unconventional unpredictable visual visuals witty writer writers writing
""".split())
_SUFFIXES = ("tion", "sion", "ment", "ness", "ity", "ous", "ive", "able", "ible", "ical", "ally", "ing", "ed",
             "er", "or", "ist", "ism", "ful", "less", "ly", "ance", "ence", "ancy", "ency", "ary", "ory",
             "ic", "ize", "ise", "graphy", "ship", "hood", "ward", "al", "ate", "ant", "ent", "ian", "logy",
             "like")
_VOWELS = frozenset("aeiouy")
LONG_WORD = 12  # letters: a word this long must be known or look derived


def _looks_derived(word: str) -> bool:
    """Ends in a common English suffix (after a plural -s / -es / -ies)."""
    stems = [word]
    if word.endswith("ies"):
        stems.append(word[:-3] + "y")
    if word.endswith("es"):
        stems.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        stems.append(word[:-1])
    return any(st.endswith(_SUFFIXES) and len(st) > 4 for st in stems)


def _known(word: str, vocabulary: frozenset[str] | set[str]) -> bool:
    return word in vocabulary or word in _COMMON_WORDS or word in _stop_words()


def _non_word(word: str, vocabulary: frozenset[str] | set[str]) -> bool:
    """A letters-only token that reads as no English word: mostly consonants, or long, unknown and not
    derived (e.g. "charmesetwicewords")."""
    word = word.replace("'", "")
    if not word.isalpha() or _known(word, vocabulary):
        return False
    vowels = sum(ch in _VOWELS for ch in word)
    run = max(len(r) for r in re.split(r"[aeiouy]+", word))  # the longest run of consonants
    if (len(word) >= 4 and vowels == 0) or run >= 7 or (len(word) >= 8 and vowels / len(word) < 0.15):
        return True  # "strong" and "twists" have one vowel in six letters; "catchphrase" a run of six
    return len(word) >= LONG_WORD and not _looks_derived(word)


def _complete_word(word: str, vocabulary: frozenset[str] | set[str]) -> bool:
    """A last word that can end a sentence cut without its full stop: known, a number, or derived."""
    return word.isdigit() or _known(word, vocabulary) or (len(word) >= 5 and _looks_derived(word))


def _stop_words() -> frozenset[str]:
    global _STOP
    if _STOP is None:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        _STOP = frozenset(ENGLISH_STOP_WORDS) | {"you're", "your", "you've", "who's", "it's", "don't", "like"}
    return _STOP


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower().replace("’", "'")))


def _words(text: str) -> list[str]:
    return _normalise(text).split()


def clean_persona(raw: str, max_sentences: int = 2, vocabulary: Collection[str] = ()) -> str:
    """Tidy an LM answer: first paragraph, no quotes/markdown/labels, "You are" first, few sentences.

    An answer without a final full stop gets one only when its last word is complete: a known word (stop
    words, a small list, ``vocabulary``) or a derived-looking one; "who loves the acti" stays unfinished.
    """
    text = raw.replace("’", "'").replace("“", '"').replace("”", '"').strip()
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0]  # first paragraph only
    text = re.sub(r"[*#_`]+", "", text)
    text = " ".join(text.split())
    text = re.sub(r"^(persona|answer|description|response)\s*:\s*", "", text, flags=re.IGNORECASE)
    text = text.strip(" \"'")
    # "You are "You are a..." (the model repeats the prefilled words)
    text = re.sub(r"^(?:you are\W+)+(?=you(?: are|'re)\b)", "", text, flags=re.IGNORECASE)
    m = re.search(r"\byou(?: are|'re)\b", text, flags=re.IGNORECASE)
    if m and m.start() <= 40:  # a short lead-in such as 'Persona 1: "You are...'
        text = ("You are " + text[m.end():].lstrip(" \"'")).rstrip()
    elif re.match(r"(a|an|the)\s", text, flags=re.IGNORECASE):
        text = "You are " + text[0].lower() + text[1:]
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    if len(sentences) > 1 and not sentences[-1].rstrip("\"')]").endswith((".", "!", "?")):
        sentences = sentences[:-1]  # an unfinished last sentence (the token limit cut it)
    text = " ".join(sentences[:max_sentences]).strip().strip("\"'").rstrip(",;: -")
    words = _words(text)
    if (text and not text.endswith((".", "!", "?")) and words and words[-1] not in _DANGLING
            and _complete_word(words[-1], _as_vocabulary(vocabulary))):
        text += "."  # a complete thought without its full stop; one ending in "the" / "acti" stays unfinished
    return text


def _as_vocabulary(words: Collection[str]) -> frozenset[str] | set[str]:
    return words if isinstance(words, (set, frozenset)) else {w.lower() for w in words}


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def is_near_duplicate(a: str, b: str, threshold: float = 0.9) -> bool:
    """Equal after normalisation (case, punctuation, spacing) or nearly so (difflib ratio >= threshold)."""
    na, nb = _normalise(a), _normalise(b)
    return na == nb or difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio() >= threshold


def check_persona(text: str, shown: Sequence[str] = (), existing: Sequence[str] = (), min_words: int = 8,
                  max_words: int = 60, copy_ngram: int = 8, vocabulary: Collection[str] = ()) -> str | None:
    """Why a (cleaned) persona is unacceptable, or None when it is fine.

    Rejects: no "You are" start, an unfinished sentence, too short/long, not English-like (few function words,
    odd characters), a garbled ending (stray quotes or punctuation, a lone letter before the full stop), a
    non-word (:func:`_non_word`: mostly consonants, or >= 12 letters, unknown and not derived; known: the
    stop words, a small list, the shown records' and ``vocabulary``'s words), looping text, assistant
    boilerplate, a run of ``copy_ngram`` words copied from a shown record, and a near-duplicate of an
    ``existing`` persona (or a run of ``copy_ngram`` words shared with one).
    """
    if not text.startswith("You are "):
        return 'does not start with "You are"'
    if not text.endswith((".", "!", "?")):
        return "unfinished sentence"
    letters = sum(ch.isascii() and (ch.isalpha() or ch in " .,;:'\"!?()-") for ch in text)
    if letters / len(text) < 0.95:
        return "odd characters (not plain English prose)"
    words = _words(text)
    if len(words) < min_words:
        return f"too short ({len(words)} words < {min_words})"
    if len(words) > max_words:
        return f"too long ({len(words)} words > {max_words})"
    if sum(w in _stop_words() for w in words) / len(words) < 0.25 or max(len(w) for w in words) > 20:
        return "does not read as English"
    if text.count('"') % 2 or re.search(r'\w"\w', text):
        return "stray quote"
    if re.search(r"[,;:(\[-]\s*[.!?]$|\s[.!?]$", text) or re.fullmatch(r"[b-z]", words[-1]):
        return "garbled ending"
    known = _as_vocabulary(vocabulary) | {w for record in shown for w in _words(record)}
    odd = next((w for w in words if _non_word(w, known)), None)
    if odd is not None:
        return f"non-word {odd!r}"
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) != len(set(trigrams)):
        return "repetitive"
    if _META.search(text):
        return "assistant boilerplate"
    grams = _ngrams(words, copy_ngram)
    for record in shown:
        if grams & _ngrams(_words(record), copy_ngram):
            return f"copies {copy_ngram}+ consecutive words from a shown record"
    for other in existing:
        if is_near_duplicate(text, other):
            return "duplicate of another persona"
        if grams & _ngrams(_words(other), copy_ngram):
            return f"too similar to another persona ({copy_ngram}+ words in common)"
    return None


# --- LLM synthesiser ----------------------------------------------------------------------------------------
# A worked example shown before the real question (a previous chat turn, or a previous completion block):
# small models copy an example answer embedded in the instruction, but imitate a previous turn's style.
# "{role}" in the answer is filled in; an answer that copies the example is rejected.
DEFAULT_EXAMPLE: tuple[tuple[str, ...], tuple[str, ...], str] = (
    ("Another tired remake that recycles every idea of the original.",
     "Daring and original: nothing else this year looks or sounds like it."),
    ("original", "remake", "lazy"),
    ("You are a {role} who loves bold, original work, has no patience for lazy remakes and writes in short, "
     "blunt verdicts."),
)


@dataclass
class LLMPersonaWriter:
    """Ask a causal LM to describe the writer of a cluster's central records ("You are ...").

    The prompt shows a worked example first, then the cluster's records and most frequent distinctive words,
    and ends with "You are" already in the answer (after the chat template's assistant header, or in the
    completion), so the model only writes the description. Clusters are generated in left-padded batches.
    """

    model: object
    tokenizer: object
    text_kind: str = "texts"
    role: str = "writer"
    example: tuple[Sequence[str], Sequence[str], str] = DEFAULT_EXAMPLE
    use_chat_template: bool = True
    max_record_words: int = 30
    max_new_tokens: int = 40
    max_retries: int = 3
    batch_size: int = 10
    temperature: float = 0.7
    top_p: float = 0.95
    repetition_penalty: float = 1.2
    max_sentences: int = 2
    min_words: int = 8
    max_words: int = 60
    copy_ngram: int = 8
    show_progress: bool = True

    @property
    def chat(self) -> bool:
        return bool(self.use_chat_template and getattr(self.tokenizer, "chat_template", None))

    @property
    def example_answer(self) -> str:
        return self.example[2].replace("{role}", self.role)

    def _question(self, shown: Sequence[str], words: Sequence[str] = ()) -> str:
        records = []
        for t in shown:
            cut = t.split()
            more = " ..." if len(cut) > self.max_record_words else ""
            cut = " ".join(cut[: self.max_record_words]) + more
            records.append(f'- "{cut}"')
        kind = self.text_kind[:1].upper() + self.text_kind[1:]
        hint = f"\nFrequent words: {', '.join(words)}." if words else ""
        return f"{kind} by one {self.role}:\n" + "\n".join(records) + hint

    def prompt(self, shown: Sequence[str], words: Sequence[str] = ()) -> str:
        """The prompt for one cluster: its central records and (optionally) its distinctive words."""
        ask = f"In one sentence, describe this {self.role}: what do they love or hate, and how do they write?"
        ex_texts, ex_words, ex_answer = self.example[0], self.example[1] if words else (), self.example_answer
        if self.chat:
            messages = [
                {"role": "system", "content": f"You describe the people who write {self.text_kind}."},
                {"role": "user", "content": f"{self._question(ex_texts, ex_words)}\n\n{ask}"},
                {"role": "assistant", "content": ex_answer},
                {"role": "user", "content": f"{self._question(shown, words)}\n\n{ask}"},
            ]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + "You are"
        return (f"{self._question(ex_texts, ex_words)}\nDescription of the {self.role}: {ex_answer}\n\n"
                f"{self._question(shown, words)}\nDescription of the {self.role}: You are")

    def generate(self, prompts: list[str], sample: bool, seed: int) -> list[str]:
        """Continuations of the prompts (without the prompts), in order."""
        import torch
        from tqdm.auto import tqdm

        tok, model = self.tokenizer, self.model
        old_side = tok.padding_side
        tok.padding_side = "left"
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # little padding per batch
        out: list[str] = [""] * len(prompts)
        device = next(model.parameters()).device
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        try:
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                torch.manual_seed(seed)
                for batch in tqdm(batches, desc="personas", unit="batch", disable=not self.show_progress,
                                  leave=False):
                    enc = tok([prompts[i] for i in batch], return_tensors="pt", padding=True,
                              add_special_tokens=not self.chat).to(device)
                    kwargs = {"do_sample": False}
                    if sample:
                        kwargs = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
                    gen = model.generate(**enc, max_new_tokens=self.max_new_tokens, pad_token_id=pad_id,
                                         repetition_penalty=self.repetition_penalty, **kwargs)
                    new = gen[:, enc["input_ids"].shape[1]:]
                    for i, row in zip(batch, new):
                        out[i] = tok.decode(row, skip_special_tokens=True)
        finally:
            tok.padding_side = old_side
        return out

    def write(self, shown: list[list[str]], fallback: list[str], seed: int = 0,
              words: list[list[str]] | None = None,
              vocabulary: Collection[str] = ()) -> tuple[list[str], list[str]]:
        """One persona per cluster -> (texts, sources); a cluster whose answers never validate gets its
        fallback.

        ``shown``: each cluster's central records; ``words``: its distinctive terms (a hint in the prompt);
        ``vocabulary``: words known to be English (e.g. every word of the responses), with the shown records'
        words, for the non-word and truncated-ending checks.
        """
        k = len(shown)
        prompts = [self.prompt(shown[c], words[c] if words else ()) for c in range(k)]
        result: list[str | None] = [None] * k
        reasons: list[list[str]] = [[] for _ in range(k)]
        base = _as_vocabulary(vocabulary)
        known = [base | {w for t in [*shown[c], *(words[c] if words else ())] for w in _words(t)}
                 for c in range(k)]
        for attempt in range(self.max_retries + 1):
            todo = [c for c in range(k) if result[c] is None]
            if not todo:
                break
            answers = self.generate([prompts[c] for c in todo], sample=attempt > 0,
                                    seed=seed * 1000 + attempt)
            for c, raw in zip(todo, answers):
                text = clean_persona("You are" + raw, self.max_sentences, known[c])
                accepted = [t for t in result if t is not None] + [self.example_answer]
                why = check_persona(text, shown[c], accepted, self.min_words, self.max_words, self.copy_ngram,
                                    known[c])
                if why is None:
                    result[c] = text
                else:
                    reasons[c].append(f"{why}: {text[:80]!r}")
                    log.debug("persona %d, try %d rejected (%s): %r", c, attempt, why, raw)
        sources = []
        final: list[str] = []
        for c in range(k):
            if result[c] is not None:
                final.append(result[c])
                sources.append("llm")
            else:
                log.info("persona %d: no valid LLM answer after %d tries (%s); using keywords", c,
                         self.max_retries + 1, "; ".join(reasons[c][-2:]))
                final.append(fallback[c])
                sources.append("fallback")
        return final, sources


def _resolve_lm(lm):
    """None / bundled name / path -> (model, tokenizer); a (model, tokenizer) pair passes through."""
    if isinstance(lm, (tuple, list)) and len(lm) == 2:
        return lm[0], lm[1]
    from mop.assets import DEFAULT_LM, load_lm

    return load_lm(lm or DEFAULT_LM)


# --- public entry point -------------------------------------------------------------------------------------
def _persona_id(i: int, k: int) -> str:
    return f"p{i:0{max(3, len(str(k - 1)))}d}"


def synthesize_personas(
    texts: Sequence[str],
    ids: Sequence[str],
    embeddings: np.ndarray,
    k: int,
    synthesizer: str = "llm",
    lm=None,
    seed: int = 0,
    labels: Sequence[str | None] | None = None,
    n_representatives: int = 5,
    text_kind: str = "texts",
    role: str = "writer",
    n_terms: int = 3,
    keywords_template: str = KEYWORDS_TEMPLATE,
    use_chat_template: bool = True,
    max_retries: int = 3,
    batch_size: int = 10,
    example: tuple[Sequence[str], Sequence[str], str] = DEFAULT_EXAMPLE,
    show_progress: bool = True,
) -> list[Persona]:
    """Cluster the responses into k groups and write one persona per group (largest cluster first: p000).

    Args:
        texts, ids, embeddings: the responses, their unique record ids and their (N, D) embeddings.
        k: number of personas (clusters).
        synthesizer: "llm" (a causal LM describes each cluster) or "keywords" (c-TF-IDF terms, no LLM).
        lm: the LLM: a bundled name or path (default the bundled SmolLM2), or a (model, tokenizer) pair.
        seed: seeds k-means and the LLM's sampled retries; the same seed gives the same personas.
        labels: optional record labels; keywords personas then mention the cluster's label mix.
        n_representatives: records nearest the centroid shown to the LLM (and stored per persona).
        text_kind: what the texts are, in words ("movie reviews"), used in prompts and keywords personas.
        role: what their writers are ("critic"), used in the LLM prompt.
        n_terms: distinctive terms in a keywords persona.
        keywords_template: format string with {text_kind}, {terms} and {label_mix}.
        use_chat_template: use the tokenizer's chat template when it has one (else a completion prompt).
        max_retries: sampled retries for clusters whose answer fails validation, before the keywords fallback.
        batch_size: clusters generated together (left padding).
        example: (texts, frequent words, answer): a worked example shown to the LLM before each cluster
            ("{role}" in the answer is filled in); an answer that copies it is rejected.
    """
    if synthesizer not in SYNTHESIZERS:
        raise MopError(f"unknown persona synthesizer '{synthesizer}'; expected one of "
                       f"{', '.join(SYNTHESIZERS)}")
    texts = [str(t) for t in texts]
    ids = [str(i) for i in ids]
    emb = np.asarray(embeddings, dtype=np.float32)
    if not (len(texts) == len(ids) == len(emb)):
        raise MopError(f"texts, ids and embeddings differ in length ({len(texts)}, {len(ids)}, {len(emb)})")
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise MopError(f"record ids must be unique; '{dup}' occurs more than once")
    if labels is not None and len(labels) != len(texts):
        raise MopError(f"labels has {len(labels)} entries for {len(texts)} texts")
    if n_representatives < 1:
        raise MopError(f"n_representatives must be >= 1, got {n_representatives}")

    cluster_of, centroids = cluster_responses(emb, k, seed=seed)
    members = _members_by_cluster(cluster_of, centroids, emb)
    order = sorted(range(k), key=lambda c: (-len(members[c]), c))  # largest cluster first
    keep = [c for c in order if len(members[c]) > 0]
    if len(keep) < k:
        log.warning("k-means left %d empty cluster(s); making %d personas", k - len(keep), len(keep))
    remap = np.full(k, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    cluster_of = remap[cluster_of]
    members = [members[c] for c in keep]
    k = len(keep)

    reps = [_representatives(m, texts, n_representatives) for m in members]
    keyword_texts = keyword_personas(texts, cluster_of, k, n_terms=n_terms, text_kind=text_kind,
                                     record_labels=labels, template=keywords_template)
    if synthesizer == "keywords":
        persona_texts, sources = keyword_texts, ["keywords"] * k
    else:
        model, tokenizer = _resolve_lm(lm)
        writer = LLMPersonaWriter(model, tokenizer, text_kind=text_kind, role=role, example=example,
                                  use_chat_template=use_chat_template, max_retries=max_retries,
                                  batch_size=batch_size, show_progress=show_progress)
        hints = cluster_keywords(texts, cluster_of, k, top_n=n_terms)
        vocabulary = {w for t in texts for w in _words(t)}  # the responses' words are English
        persona_texts, sources = writer.write([[texts[i] for i in r] for r in reps], keyword_texts, seed=seed,
                                              words=hints, vocabulary=vocabulary)
        _dedupe_fallbacks(persona_texts, sources, texts, cluster_of, k, n_terms, text_kind, labels,
                          keywords_template)
        n_fb = sources.count("fallback")
        log.info("LLM personas: %d/%d validated, %d keyword fallback(s)", k - n_fb, k, n_fb)
    return [
        Persona(id=_persona_id(c, k), text=persona_texts[c], cluster_size=len(members[c]),
                member_ids=[ids[i] for i in members[c]], representative_ids=[ids[i] for i in reps[c]],
                source=sources[c])
        for c in range(k)
    ]


def _dedupe_fallbacks(persona_texts, sources, texts, cluster_of, k, n_terms, text_kind, labels,
                      template) -> None:
    """Make a fallback persona distinct from every accepted LLM persona (rarely needed)."""
    for c in range(k):
        if sources[c] != "fallback":
            continue
        others = [t for j, t in enumerate(persona_texts) if j != c]
        if any(is_near_duplicate(persona_texts[c], o) for o in others):
            persona_texts[c] = keyword_personas(texts, cluster_of, k, n_terms + 1, text_kind, labels,
                                                template, avoid=others)[c]


# --- files --------------------------------------------------------------------------------------------------
def save_personas(personas: Sequence[Persona], path: str | Path) -> Path:
    """Write personas as JSONL (id, text, cluster_size, member_ids, representative_ids, source), atomically.

    ``path`` is a file, or a directory that receives ``personas.jsonl``. Returns the file written.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PERSONAS_FILE
    lines = [json.dumps(asdict(p), ensure_ascii=False) for p in personas]
    write_text_atomic(path, "\n".join(lines) + ("\n" if lines else ""))
    return path


def _parse_personas(path: str | Path, default_source: str) -> list[Persona]:
    path = Path(path)
    if path.is_dir():
        path = path / PERSONAS_FILE
    if not path.exists():
        raise MopError(f"personas file '{path}' does not exist")
    from mop.data import iter_jsonl_objects

    personas: list[Persona] = []
    for n, row in iter_jsonl_objects(path, f"{path}:"):
        text, source = row.get("text"), str(row.get("source", default_source))
        if source == NULL_SOURCE:
            if text not in ("", None) or row.get("id", NULL_PERSONA_ID) != NULL_PERSONA_ID:
                raise MopError(f"{path}: line {n} has source \"{NULL_SOURCE}\" (the persona-free component) "
                               f"but an id other than \"{NULL_PERSONA_ID}\" or a non-empty text")
            text = ""
        elif not isinstance(text, str) or not text.strip():
            raise MopError(f"{path}: line {n} has no \"text\" (a non-empty string is expected)")
        pid = NULL_PERSONA_ID if source == NULL_SOURCE else (str(row.get("id", "")) or
                                                              _persona_id(len(personas), 1000))
        try:
            personas.append(Persona(
                id=pid, text=text.strip(), cluster_size=int(row.get("cluster_size", 0)),
                member_ids=[str(i) for i in row.get("member_ids", [])],
                representative_ids=[str(i) for i in row.get("representative_ids", [])],
                source=source,
            ))
        except (TypeError, ValueError) as err:
            raise MopError(f"{path}: line {n} has a malformed field ({err})") from err
    if not personas:
        raise MopError(f"personas file '{path}' is empty: expected one JSON object with a \"text\" per line")
    seen = Counter(p.id for p in personas)
    dup = next((i for i, c in seen.items() if c > 1), None)
    if dup is not None:
        raise MopError(f"{path}: persona id '{dup}' occurs more than once")
    return personas


def load_personas_jsonl(path: str | Path) -> list[Persona]:
    """User-supplied personas: one ``{"text": "You are ...", "id": optional}`` object per line."""
    return _parse_personas(path, default_source="user")


def read_personas(path: str | Path) -> list[Persona]:
    """Personas written by :func:`save_personas` (a file or a directory holding ``personas.jsonl``)."""
    return _parse_personas(path, default_source="user")


# ---------------------------------------------------------------------------------------------- command
def personas_command(
    config: str,
    out: str,
    num_personas: PositiveInt | None = None,
    synthesizer: Literal["llm", "keywords"] | None = None,
    lm: str | None = None,
    embedder: str | None = None,
    text_kind: str | None = None,
    role: str | None = None,
    seed: int | None = None,
) -> int:
    """Cluster the training responses of a config's dataset and write one persona per cluster.

    Every setting left unset is taken from the config's ``data.personas`` section (and ``data.embedder``),
    else from the training defaults, so ``mop personas`` writes the personas ``mop train`` would with that
    config.

    Args:
        config: a train config (its data.dataset and data.personas sections) or a dataset YAML.
        out: the output directory (personas.jsonl is written there).
        num_personas: K, the number of personas (-k).
        synthesizer: llm (a causal LM describes each cluster) or keywords (distinctive terms, no LLM).
        lm: the LLM of the llm synthesizer (bundled name, path or hub id).
        embedder: the sentence embedder used for clustering (default: the config's data.embedder, else
            minilm-l6).
        text_kind: what the responses are, in words (e.g. "movie reviews").
        role: who writes the responses, in words (e.g. "critic").
        seed: seed of k-means and of the sampled retries.
    """
    import time

    from mop.data import config_data_section, load_dataset_config, load_population, read_config
    from mop.embed import Embedder

    t0 = time.perf_counter()
    data = config_data_section(read_config(config))
    section = data.get("personas") or {}
    refuse_unknown_keys(section, PersonaSpec.__dataclass_fields__, f"{config}: data.personas")
    spec = PersonaSpec(**section)
    given = {"num_personas": num_personas, "synthesizer": synthesizer, "lm": lm, "text_kind": text_kind,
             "role": role, "seed": seed}
    spec = dataclasses.replace(spec, **{k: v for k, v in given.items() if v is not None})
    if spec.synthesizer not in ("llm", "keywords"):
        raise MopError(f"--synthesizer must be llm or keywords, got {spec.synthesizer!r} (from the config)")
    embedder = embedder or data.get("embedder") or "minilm-l6"
    pop = load_population(load_dataset_config(config))
    train = pop["train"]
    if spec.num_personas < 1 or spec.num_personas > len(train):
        raise MopError(f"--num-personas must be between 1 and the {len(train)} training records, "
                       f"got {spec.num_personas}")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise MopError(f"--out '{out_dir}' exists and is not a directory")
    texts = [r.response for r in train]
    emb = Embedder(embedder).encode(texts, desc="embedding responses")
    personas = synthesize_personas(texts, [r.id for r in train], emb, spec.num_personas,
                                   synthesizer=spec.synthesizer, lm=spec.lm, seed=spec.seed,
                                   labels=[r.label for r in train], text_kind=spec.text_kind, role=spec.role)
    path = save_personas(personas, out_dir / PERSONAS_FILE)
    print("\n| id | size | source | persona |\n| --- | --- | --- | --- |")
    for p in personas:
        print(f"| {p.id} | {p.cluster_size} | {p.source} | {p.text} |")
    print(f"\n{len(personas)} personas from {len(train)} training records in "
          f"{time.perf_counter() - t0:.0f} s -> {path}")
    return 0
