"""Free-text columns: TF-IDF (vocabulary fitted in one pass) or stateless feature hashing.

Tokenisation is scikit-learn's own (``CountVectorizer(...).build_analyzer()``), so the
vocabulary and the weights match ``TfidfVectorizer`` (``smooth_idf``, ``norm="l2"``)
whenever the selected terms agree. Missing text is the empty string.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from raypipe.model.features.base import Batch, Operator, column, num_rows

METHODS = ("tfidf", "hashing")


def as_docs(col: Any) -> list[str]:
    """A column as a list of strings, '' where missing."""
    values = col.to_numpy(dtype=object) if isinstance(col, pd.Series) else list(col)
    return ["" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v) for v in values]


class TextVectorizer(Operator):
    """Vectorise text columns into dense float32 features, one block of columns per input column.

    Args:
        columns: input columns.
        method: ``tfidf``: the terms in at least ``min_df`` training documents, the
            ``max_features`` with the highest document frequency (ties by term), in
            alphabetical order; weight tf * idf with idf = ln((1 + n) / (1 + df)) + 1,
            rows L2-normalised. ``hashing``: ``HashingVectorizer`` with ``max_features``
            buckets (non-negative, L2-normalised); stateless.
        max_features: vocabulary size (tfidf) or buckets (hashing) per column.
        ngram_range: word n-gram lengths (min, max).
        min_df: tfidf: a term must occur in at least this many training documents.
        lowercase: lowercase before tokenising.
    """

    kind = "text"
    state_keys = ("vocabulary_", "idf_")

    def __init__(self, columns: Sequence[str], *, method: str = "tfidf", max_features: int = 2048,
                 ngram_range: Sequence[int] = (1, 1), min_df: int = 2, lowercase: bool = True) -> None:
        if method not in METHODS:
            raise ValueError(f"text method must be one of {METHODS}, not {method!r}")
        self.columns = list(columns)
        self.method, self.max_features = method, int(max_features)
        self.min_df, self.lowercase = int(min_df), bool(lowercase)
        self.ngram_range = (int(ngram_range[0]), int(ngram_range[1]))
        if not 1 <= self.ngram_range[0] <= self.ngram_range[1]:
            raise ValueError(f"ngram_range must be (min, max) with 1 <= min <= max, not {list(self.ngram_range)}")
        self._vectorizers: dict[str, Any] = {}

    def get_params(self) -> dict[str, Any]:
        return {"columns": self.columns, "method": self.method, "max_features": self.max_features,
                "ngram_range": list(self.ngram_range), "min_df": self.min_df, "lowercase": self.lowercase}

    # -- fitting ----------------------------------------------------------------------
    def partial_stats(self, batch: Batch) -> dict[str, Any]:
        """Per column: the number of documents and each term's document frequency."""
        if self.method == "hashing":
            return {}
        from sklearn.feature_extraction.text import CountVectorizer  # imported on use: 1 s per Ray worker

        analyze = CountVectorizer(lowercase=self.lowercase, ngram_range=self.ngram_range).build_analyzer()
        out = {}
        for c in self.columns:
            docs = as_docs(column(batch, c))
            df = Counter(t for d in docs for t in set(analyze(d)))
            out[c] = {"n": len(docs), "df": dict(df)}
        return out

    def _fit(self, parts: list[dict[str, Any]]) -> None:
        self.vocabulary_: dict[str, list[str]] = {}
        self.idf_: dict[str, list[float]] = {}
        if self.method == "tfidf":
            for c in self.columns:
                self._fit_column(c, [p[c] for p in parts])
        self._after_load()

    def _fit_column(self, c: str, stats: list[dict[str, Any]]) -> None:
        n = sum(s["n"] for s in stats)
        df: Counter[str] = Counter()
        for s in stats:
            df.update(s["df"])
        kept = sorted(((t, k) for t, k in df.items() if k >= self.min_df), key=lambda tk: (-tk[1], tk[0]))
        kept = sorted(kept[: self.max_features])
        if not kept:
            raise ValueError(f"text column {c!r}: no term occurs in at least min_df={self.min_df} of the "
                             f"{n} training documents; lower features.text.min_df")
        self.vocabulary_[c] = [t for t, _ in kept]
        self.idf_[c] = [float(np.log((1 + n) / (1 + k)) + 1.0) for _, k in kept]

    def _after_load(self) -> None:
        from sklearn.feature_extraction.text import CountVectorizer, HashingVectorizer

        self._vectorizers = {}
        for c in self.columns:
            if self.method == "hashing":
                self._vectorizers[c] = HashingVectorizer(
                    n_features=self.max_features, alternate_sign=False, norm="l2",
                    lowercase=self.lowercase, ngram_range=self.ngram_range)
            else:
                self._vectorizers[c] = CountVectorizer(
                    vocabulary=self.vocabulary_[c], lowercase=self.lowercase, ngram_range=self.ngram_range,
                    dtype=np.float64)

    # -- transforming -----------------------------------------------------------------
    def _column(self, c: str, docs: list[str]) -> np.ndarray:
        x = self._vectorizers[c].transform(docs).tocsr()
        if self.method == "tfidf":
            x.data *= np.asarray(self.idf_[c])[x.indices]
            from sklearn.preprocessing import normalize

            x = normalize(x, norm="l2", copy=False)
        return x.toarray().astype(np.float32)

    def transform(self, batch: Batch) -> np.ndarray:
        self.check_fitted()
        n = num_rows(batch)
        blocks = [self._column(c, as_docs(column(batch, c))) for c in self.columns]
        return np.hstack(blocks) if blocks else np.zeros((n, 0), dtype=np.float32)

    @property
    def feature_names(self) -> list[str]:
        if self.method == "hashing":
            return [f"{c}#{i}" for c in self.columns for i in range(self.max_features)]
        return [f"{c}:{t}" for c in self.columns for t in self.vocabulary_[c]]
