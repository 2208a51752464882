"""BM25 retrieval over documents: rank-bm25 by default, bm25s as a fast backend."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from .documents import Document, check_unique
from .errors import InvalidInputError

_WORD = re.compile(r"\w+", re.UNICODE)
# A short English stop list: BM25's idf already discounts common words, this only trims noise.
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were "
    "what when where which who whom whose why how did does do".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without stop words: the analyser both backends share."""
    return [t for t in _WORD.findall(text.lower()) if t not in STOPWORDS]


@dataclass(frozen=True)
class ScoredDocument:
    """A retrieved document with its BM25 score."""

    document: Document
    score: float


def check_query(query: str) -> str:
    """The query, refused with a clear message when it is not a usable string."""
    if not isinstance(query, str):
        raise InvalidInputError(f"A query must be a string, got {type(query).__name__}.")
    if not query.strip():
        raise InvalidInputError("The query is empty or only white space; ask a question.")
    return query


class BM25Retriever:
    """Top-k BM25 search over a fixed list of documents (title + text are indexed)."""

    def __init__(self, documents: Sequence[Document], k: int = 3, backend: str = "rank_bm25",
                 k1: float = 1.5, b: float = 0.75):
        self.documents = check_unique(documents)
        if not self.documents:
            raise InvalidInputError("BM25Retriever needs at least one document; the corpus is empty.")
        self.k = _check_k(k)
        self.backend = backend
        corpus = [tokenize(d.full_text) or ["<empty>"] for d in self.documents]
        if backend == "rank_bm25":
            from rank_bm25 import BM25Okapi

            self._index = BM25Okapi(corpus, k1=k1, b=b)
        elif backend == "bm25s":
            try:
                import bm25s
            except ImportError as e:  # pragma: no cover - depends on the [fast] extra
                raise InvalidInputError("backend='bm25s' needs `pip install polyprag[fast]`.") from e
            self._index = bm25s.BM25(k1=k1, b=b, method="robertson")
            self._index.index([c for c in corpus], show_progress=False)
        else:
            raise InvalidInputError(f"Unknown BM25 backend {backend!r}; use 'rank_bm25' or 'bm25s'.")

    def scores(self, query: str) -> list[float]:
        """BM25 score of every document for the query, in document order."""
        toks = tokenize(check_query(query))
        if not toks:
            return [0.0] * len(self.documents)
        if self.backend == "rank_bm25":
            return [float(s) for s in self._index.get_scores(toks)]
        return [float(s) for s in self._index.get_scores(toks)]

    def retrieve(self, query: str, k: int | None = None) -> list[ScoredDocument]:
        """The k best documents for the query, best first (ties broken by corpus order)."""
        k = self.k if k is None else _check_k(k)
        scores = self.scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: min(k, len(scores))]
        return [ScoredDocument(self.documents[i], scores[i]) for i in order]

    def __len__(self) -> int:
        return len(self.documents)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}.")
    return k
