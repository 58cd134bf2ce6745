"""Per-caption text statistics: small pure functions (the definitions), the same definitions as
native Spark column expressions where Spark can evaluate them without Python (words, trigrams),
and one pandas UDF for what needs Python (part-of-speech nouns, visual words). Aggregation
(unique counts, distributions) is Spark SQL in jobs/stats.py.

Definitions:
- words: the caption lower-cased, split into runs of letters and digits (any script), an inner
  apostrophe kept ("dog's"); the typographic apostrophe counts as one.
- trigrams: every three consecutive words of one caption, joined by a space.
- visual words: words in the MS-COCO caption vocabulary (capmix/data/coco_vocab.txt, words seen
  at least 100 times in COCO train2014 captions) that are not English stop words; the grounding
  ratio of a caption is visual words / words (NULL without words), Tan & Bansal's measure.
- nouns: the caption's tokens tagged NN, NNS, NNP or NNPS by capmix.tagger, lower-cased.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import TYPE_CHECKING

from capmix.resources import resource_dir

if TYPE_CHECKING:
    from pyspark.sql import Column

_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# The same class in Java's regex dialect: letters and numbers of any script.
WORD_PATTERN_JAVA = r"[\p{L}\p{N}]+(?:'[\p{L}\p{N}]+)*"
VOCAB_MIN_COUNT = 100


def words(text: str | None) -> list[str]:
    if not text:
        return []
    return _WORD_RE.findall(text.replace("\u2019", "'").lower())


def trigrams(tokens: list[str]) -> list[str]:
    return [" ".join(tokens[i:i + 3]) for i in range(len(tokens) - 2)]


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    path = resource_dir("data") / "stopwords_en.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


@lru_cache(maxsize=1)
def visual_vocabulary(min_count: int = VOCAB_MIN_COUNT) -> frozenset[str]:
    """MS-COCO caption words seen at least `min_count` times, stop words and non-words removed."""
    vocab = set()
    for line in (resource_dir("data") / "coco_vocab.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        word, count = line.rsplit(" ", 1)
        if int(count) >= min_count and _WORD_RE.fullmatch(word) and word not in stopwords():
            vocab.add(word)
    return frozenset(vocab)


def visual_words(tokens: list[str]) -> int:
    vocab = visual_vocabulary()
    return sum(1 for w in tokens if w in vocab)


def grounding_ratio(text: str | None) -> float | None:
    tokens = words(text)
    return visual_words(tokens) / len(tokens) if tokens else None


# --------------------------------------------------------------------------------------------
# Spark


def words_column(text: "Column") -> "Column":
    """`words` as a native Spark expression (no Python worker): array<string>."""
    from pyspark.sql import functions as F

    cleaned = F.lower(F.translate(F.coalesce(text, F.lit("")), "\u2019", "'"))
    return F.regexp_extract_all(cleaned, F.lit(WORD_PATTERN_JAVA), F.lit(0))


def trigrams_column(tokens: "Column") -> "Column":
    """`trigrams` as a native Spark expression over an array<string> of words."""
    from pyspark.sql import functions as F

    n = F.size(tokens)
    grams = F.transform(F.sequence(F.lit(0), n - 3),
                        lambda i: F.concat_ws(" ", tokens[i], tokens[i + 1], tokens[i + 2]))
    return F.when(n >= 3, grams).otherwise(F.array().cast("array<string>"))


FEATURES_DDL = "nouns ARRAY<STRING>, visual INT"


def python_features_udf(tagger: bytes):
    """pandas UDF text -> struct(nouns, visual): the part that needs Python. `tagger` is
    `capmix.tagger.ship(...).payload`: the driver's tagger travels with the UDF, so executors
    need neither the lexicon nor nltk's data, and each Python worker unpacks it once."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    def features(texts: pd.Series) -> pd.DataFrame:
        from capmix.tagger import nouns, unpack

        tagger_obj = unpack(tagger)
        found, visual = [], []
        for text in texts:
            text = text if isinstance(text, str) else ""
            found.append(nouns(text, tagger_obj))
            visual.append(visual_words(words(text)))
        return pd.DataFrame({"nouns": found, "visual": visual})

    # Real classes, not the strings `from __future__ import annotations` leaves: Spark reads
    # the UDF's type from them.
    features.__annotations__ = {"texts": pd.Series, "return": pd.DataFrame}
    return pandas_udf(FEATURES_DDL)(features)
