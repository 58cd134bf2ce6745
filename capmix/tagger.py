"""Part-of-speech tagging for the unique-noun counts (paper, Figure 12).

Two real taggers, chosen by `stats.tagger`:
- `nltk`: nltk's averaged perceptron (`pos_tag`), when its `averaged_perceptron_tagger_eng`
  data is installed (no registry here ships it; Databricks or a connected machine can run
  `nltk.download`).
- `lingua-hmm`: a first-order hidden Markov model decoded with Viterbi, whose parameters are the
  Penn Treebank statistics that Lingua::EN::Tagger ships (Debian: liblingua-en-tagger-perl):
  tag-bigram transition probabilities (tags.yml), word/tag counts (words.yml) and tag counts by
  word shape for unknown words (unknown.yml). Measured on capmix/data/pos_sample.tsv (a hand-
  tagged caption sample) by tests/test_stats.py and bench/stats_bench.py.
`auto` takes nltk when its data is present, else the HMM. The tagger's `name` goes into
`text_stats.tagger`, so every noun count says what produced it.

Executors never read the lexicon or nltk's data: the driver loads the tagger once (`ship`) and
sends its parameters inside the UDF (about 0.4 MB compressed; Spark broadcasts a UDF that large
once per executor), and each Python worker unpacks them once (`unpack`). So a Databricks worker,
which has neither /usr/share/perl5 nor nltk's data, tags like the driver. The lexicon is not
packaged with the wheel: Debian ships Lingua::EN::Tagger under the GPL-3, so capmix reads the
driver's copy (`stats.lingua_lexicon` may point at one on a volume) rather than redistribute it.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from capmix.errors import ConfigError

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
LINGUA_NAME = "lingua-hmm (Lingua::EN::Tagger lexicon, Viterbi)"
LINGUA_DIR = "/usr/share/perl5/Lingua/EN/Tagger"

# Tokens for tagging, Penn Treebank style: words (with inner hyphens/apostrophes), clitics split
# off ("dog's" -> "dog" "'s", "don't" -> "do" "n't"), every other symbol alone.
_TOKEN_RE = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*|[^\w\s]", re.UNICODE)
_CLITIC_RE = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$", re.IGNORECASE)
_NUMBER_RE = re.compile(r"^\d+(?:[.,:/-]\d+)*$")

# Lingua's lower-case tag names -> Penn Treebank tags.
_LINGUA_TO_PENN = {"det": "DT", "pp": ".", "ppc": ",", "ppd": "$", "ppl": "``", "ppr": "''",
                   "pps": ":", "lrb": "-LRB-", "rrb": "-RRB-", "prps": "PRP$", "wps": "WP$"}


class Tagger(Protocol):
    name: str

    def tag(self, tokens: list[str]) -> list[str]:
        """Penn Treebank tags, one per token."""


def tokenize(text: str) -> list[str]:
    """Penn-style tokens of a caption."""
    tokens: list[str] = []
    for tok in _TOKEN_RE.findall(text.replace("\u2019", "'")):
        match = _CLITIC_RE.match(tok) if "'" in tok else None
        if match:
            tokens.extend(match.groups())
        else:
            tokens.append(tok)
    return tokens


def nouns(text: str, tagger: Tagger) -> list[str]:
    """The caption's nouns (NN, NNS, NNP, NNPS), lower-cased, in order; forms are not merged
    ("dog" and "dogs" are two nouns), numbers and symbols never count."""
    tokens = tokenize(text)
    return [t.lower() for t, tag in zip(tokens, tagger.tag(tokens))
            if tag in NOUN_TAGS and any(c.isalpha() for c in t)]


class LinguaHMM:
    """Bigram HMM + Viterbi over Lingua::EN::Tagger's Penn Treebank statistics."""

    def __init__(self, lexicon_dir: str = LINGUA_DIR, model: dict | None = None):
        """From the lexicon files in `lexicon_dir`, or from `model`, the parameters another
        process parsed (`ship`), without reading any file."""
        if model is None:
            paths = [os.path.join(lexicon_dir, f"{n}.yml") for n in ("tags", "words", "unknown")]
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise ConfigError("stats.lingua_lexicon", f"{', '.join(missing)} not found: "
                                  "install Debian's liblingua-en-tagger-perl, or nltk's "
                                  "averaged_perceptron_tagger_eng data with stats.tagger: nltk")
            model = _cached_model(paths)
        self.model = model
        self.tags, self.penn, self.trans = model["tags"], model["penn"], model["trans"]
        self.lexicon, self.shapes, self.start = model["lexicon"], model["shapes"], model["start"]
        self.name = LINGUA_NAME
        self._cache: dict[str, list[tuple[int, float]]] = {}

    def _emissions(self, token: str) -> list[tuple[int, float]]:
        found = self._cache.get(token)
        if found is None:
            found = self._lookup(token)
            if len(self._cache) < 200_000:
                self._cache[token] = found
        return found

    def _lookup(self, token: str) -> list[tuple[int, float]]:
        if _NUMBER_RE.match(token) and "*NUM*" in self.lexicon:
            return self.lexicon["*NUM*"]
        forms = [f for f in dict.fromkeys((token, token.lower())) if f in self.lexicon]
        if not forms:
            return self.shapes[self._shape(token)]
        # "Dog" opening a caption is mostly "dog": both forms' probabilities count.
        merged: dict[int, float] = {}
        for form in forms:
            for tag, logp in self.lexicon[form]:
                merged[tag] = (logp if tag not in merged
                               else max(merged[tag], logp) + math.log1p(
                                   math.exp(-abs(merged[tag] - logp))))
        return list(merged.items())

    def _shape(self, token: str) -> str:
        if not any(c.isalnum() for c in token):
            return "-sym-"
        if token[0].isupper():
            return "-cap-"
        for suffix, shape in (("ing", "-ing-"), ("ly", "-ly-"), ("tion", "-tion-"),
                              ("ed", "-ed-"), ("s", "-s-")):
            if token.endswith(suffix):
                return shape
        return "-hyp-" if "-" in token else "-unknown-"

    def tag(self, tokens: list[str]) -> list[str]:
        if not tokens:
            return []
        trans = self.trans
        scores = {self.start: 0.0}
        back: list[dict[int, int]] = []
        for token in tokens:
            emissions = self._emissions(token)
            step: dict[int, float] = {}
            pointers: dict[int, int] = {}
            for tag, emit in emissions:
                best_prev, best = -1, -math.inf
                for prev, score in scores.items():
                    s = score + trans[prev][tag]
                    if s > best:
                        best_prev, best = prev, s
                step[tag] = best + emit
                pointers[tag] = best_prev
            scores = step
            back.append(pointers)
        tag = max(scores, key=scores.get)
        path = [tag]
        for pointers in reversed(back[1:]):
            tag = pointers[tag]
            path.append(tag)
        return [self.penn[t] for t in reversed(path)]


def _cached_model(paths: list[str]) -> dict:
    """The HMM's parameters, parsed from the YAML once (seconds) and then read from a pickle
    beside the user's other caches (a fraction of a second): every Spark worker builds it."""
    import hashlib
    import pickle
    import tempfile

    stamp = "|".join(f"{p}:{os.stat(p).st_mtime_ns}:{os.stat(p).st_size}" for p in paths)
    key = hashlib.sha1(f"v1|{stamp}".encode()).hexdigest()[:16]
    cache_dir = os.environ.get("CAPMIX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "capmix")
    file = os.path.join(cache_dir, f"lingua-hmm-{key}.pickle")
    try:
        with open(file, "rb") as fh:
            return pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError):
        pass
    model = _build_model(*paths)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=cache_dir, delete=False) as fh:
            pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(fh.name, file)  # atomic: concurrent workers never read half a file
    except OSError:
        pass  # a read-only home only costs the parse next time
    return model


def _build_model(tags_yml: str, words_yml: str, unknown_yml: str) -> dict:
    import yaml

    # The base loader keeps every key a string: YAML 1.1 would read the words "on", "off",
    # "yes", "no" and "null" as booleans and None.
    loader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
    tables = []
    for path in (tags_yml, words_yml, unknown_yml):
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=loader)
        tables.append({k: {t: float(v) for t, v in row.items()} for k, row in raw.items()})
    transitions, words, unknown = tables
    tags = sorted(set(transitions) | {t for row in transitions.values() for t in row}
                  | {t for row in words.values() for t in row})
    index = {t: i for i, t in enumerate(tags)}
    floor = math.log(1e-8)  # an unseen bigram is unlikely, never impossible
    trans = [[floor] * len(tags) for _ in tags]
    for prev, row in transitions.items():
        for nxt, p in row.items():
            if p > 0:
                trans[index[prev]][index[nxt]] = math.log(p)
    totals = [0.0] * len(tags)
    for row in words.values():
        for t, n in row.items():
            totals[index[t]] += n
    grand = sum(totals)
    # Emission log P(word | tag) = count(word, tag) / count(tag).
    lexicon = {w: [(index[t], math.log(n / totals[index[t]])) for t, n in row.items() if n > 0]
               for w, row in words.items()}
    # Unknown words: P(word | tag) is proportional to P(tag | shape) / P(tag).
    shapes = {}
    for shape, row in unknown.items():
        total = sum(row.values())
        shapes[shape] = [(index[t], math.log((n / total) / (totals[index[t]] / grand)))
                         for t, n in row.items() if n > 0 and totals[index[t]] > 0]
    return {"tags": tags, "penn": [_LINGUA_TO_PENN.get(t, t.upper()) for t in tags],
            "trans": trans, "lexicon": lexicon, "shapes": shapes,
            "start": index["pp"]}  # Lingua starts every sentence after end punctuation


class NltkPerceptron:
    """nltk's averaged perceptron tagger (needs its data; never downloaded here)."""

    name = "nltk averaged_perceptron_tagger_eng"

    def __init__(self, tagger: object = None) -> None:
        """nltk's tagger from its installed data, or `tagger`, one another process loaded."""
        if tagger is None:
            if not nltk_data_available():
                raise ConfigError("stats.tagger", "nltk's averaged_perceptron_tagger_eng data is "
                                  "not installed (python -m nltk.downloader "
                                  "averaged_perceptron_tagger_eng on a connected machine), use "
                                  "stats.tagger: lingua-hmm")
            from nltk.tag import PerceptronTagger

            tagger = PerceptronTagger()
        self._tagger = tagger

    def tag(self, tokens: list[str]) -> list[str]:
        return [t for _, t in self._tagger.tag(tokens)] if tokens else []


def nltk_data_available() -> bool:
    try:
        import nltk

        nltk.data.find("taggers/averaged_perceptron_tagger_eng/")
        return True
    except (LookupError, ImportError):
        return False


def tagger_name(kind: str = "auto", lexicon_dir: str = LINGUA_DIR) -> str:
    """The name `load_tagger` would give, without loading it; a missing lexicon or missing nltk
    data is the same `ConfigError` (on the driver, before any Spark task fails on it)."""
    if kind == "nltk" or (kind == "auto" and nltk_data_available()):
        if not nltk_data_available():
            NltkPerceptron()  # raises the clear error
        return NltkPerceptron.name
    if kind not in ("auto", "lingua-hmm"):
        raise ConfigError("stats.tagger", f"unknown tagger {kind!r}")
    missing = [n for n in ("tags.yml", "words.yml", "unknown.yml")
               if not os.path.isfile(os.path.join(lexicon_dir, n))]
    if missing:
        raise ConfigError("stats.lingua_lexicon", f"{lexicon_dir}: {', '.join(missing)} not "
                          "found: install Debian's liblingua-en-tagger-perl, or nltk's "
                          "averaged_perceptron_tagger_eng data with stats.tagger: nltk")
    return LINGUA_NAME


@lru_cache(maxsize=4)
def load_tagger(kind: str = "auto", lexicon_dir: str = LINGUA_DIR) -> Tagger:
    """The tagger for `stats.tagger`, built once per process (each Spark worker keeps its own)."""
    if kind == "nltk" or (kind == "auto" and nltk_data_available()):
        return NltkPerceptron()
    if kind in ("auto", "lingua-hmm"):
        return LinguaHMM(lexicon_dir)
    raise ConfigError("stats.tagger", f"unknown tagger {kind!r}")


@dataclass(frozen=True)
class ShippedTagger:
    """A tagger the driver loaded, as bytes any Python worker turns back into it (`unpack`)."""

    name: str
    payload: bytes


def ship(kind: str = "auto", lexicon_dir: str = LINGUA_DIR) -> ShippedTagger:
    """Load the tagger for `stats.tagger` here (the driver) and pack its parameters. A missing
    lexicon or missing nltk data is a `ConfigError` here, before any Spark task starts."""
    tagger = load_tagger(kind, lexicon_dir)
    state = (("lingua", tagger.model) if isinstance(tagger, LinguaHMM)
             else ("nltk", tagger._tagger))  # type: ignore[attr-defined]
    payload = zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 6)
    return ShippedTagger(tagger.name, payload)


_UNPACKED: dict[bytes, Tagger] = {}


def unpack(payload: bytes) -> Tagger:
    """The tagger `ship` packed, built once per process (each task of a reused Python worker
    gets the same object, and its emission cache, back)."""
    key = hashlib.sha1(payload).digest()
    found = _UNPACKED.get(key)
    if found is None:
        kind, state = pickle.loads(zlib.decompress(payload))
        found = LinguaHMM(model=state) if kind == "lingua" else NltkPerceptron(state)
        _UNPACKED.clear()  # one stats run ships one tagger; never keep two lexicons alive
        _UNPACKED[key] = found
    return found


def read_sample(path: str | None = None) -> list[list[tuple[str, str]]]:
    """The hand-tagged sample: one caption per line of word/TAG tokens."""
    from capmix.resources import resource_dir

    file = path or str(resource_dir("data") / "pos_sample.tsv")
    captions = []
    with open(file, encoding="utf-8") as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                captions.append([tuple(tok.rsplit("/", 1)) for tok in line.split()])
    return captions


def agreement(tagger: Tagger, sample: list[list[tuple[str, str]]] | None = None) -> dict:
    """Token accuracy and noun precision/recall/F1 of `tagger` against the hand tags."""
    sample = read_sample() if sample is None else sample
    tokens = correct = tp = fp = fn = 0
    for caption in sample:
        words = [w for w, _ in caption]
        for (_, gold), tag in zip(caption, tagger.tag(words)):
            tokens += 1
            correct += gold == tag
            is_gold, is_tag = gold in NOUN_TAGS, tag in NOUN_TAGS
            tp += is_gold and is_tag
            fp += is_tag and not is_gold
            fn += is_gold and not is_tag
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tagger": tagger.name, "captions": len(sample), "tokens": tokens,
            "accuracy": correct / tokens if tokens else 0.0, "noun_precision": precision,
            "noun_recall": recall, "noun_f1": f1}
