"""What every retriever shares: the scored hit, the query and k checks, top-k selection over a score array."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..documents import Document
from ..errors import InvalidInputError


@dataclass(frozen=True)
class ScoredDocument:
    """A retrieved document with its retriever's score (BM25, cosine, fused rank, …): higher is better."""

    document: Document
    score: float


def check_query(query: str) -> str:
    """The query, refused with a clear message when it is not a usable string."""
    if not isinstance(query, str):
        raise InvalidInputError(f"A query must be a string, got {type(query).__name__}.")
    if not query.strip():
        raise InvalidInputError("The query is empty or only white space; ask a question.")
    return query


class ScoreRetriever:
    """What a retriever with scores (one per document) adds: top-k retrieval and its size. A subclass implements
    ``score_array_checked``; the public entries check the query, the ``_checked`` ones trust their caller
    (ParametricRetriever's checked path: the query is checked once a question)."""

    documents: list[Document]
    k: int

    def score_array_checked(self, query: str) -> np.ndarray:
        """The score of every document [N], in document order, for a query its caller has already checked."""
        raise NotImplementedError

    def score_array(self, query: str) -> np.ndarray:
        """The score of every document for the query [N], in document order (a query that is no usable string
        is refused)."""
        return self.score_array_checked(check_query(query))

    def retrieve(self, query: str, k: int | None = None) -> list[ScoredDocument]:
        """The k best-scored documents for the query, best first (ties broken by corpus order); a k larger than
        the corpus is refused (InvalidInputError), never clamped to documents that do not match."""
        return self.retrieve_checked(check_query(query), None if k is None else check_top_k(k, len(self)))

    def retrieve_checked(self, query: str, k: int | None = None) -> list[ScoredDocument]:
        """``retrieve`` for a query and k its caller has already checked."""
        scores = self.score_array_checked(query)
        return [ScoredDocument(self.documents[i], float(scores[i])) for i in top_k(scores, self.k if k is None else k)]

    def __len__(self) -> int:
        return len(self.documents)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest scores, best first, ties by lower index: O(N) selection, then a small sort."""
    k = min(k, len(scores))
    if k == len(scores):
        cand = np.arange(len(scores))
    else:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th largest value
        cand = np.flatnonzero(scores >= kth)  # every tie of the k-th value stays a candidate
    order = np.lexsort((cand, -scores[cand]))  # by score desc, then corpus order
    return cand[order[:k]].tolist()


DEFAULT_K = 3  # a retriever's k when none is given: 3, or the whole of a smaller corpus


def corpus_k(k: int | None, corpus_size: int) -> int:
    """A retriever's own k: ``DEFAULT_K`` (or all of a smaller corpus) when None, else ``k`` checked against the
    corpus: a k larger than it is refused, never clamped to documents that do not match."""
    return min(DEFAULT_K, corpus_size) if k is None else check_top_k(k, corpus_size)


def check_top_k(k: int, corpus_size: int | None = None) -> int:
    """``k`` (results per query), refused unless it is a positive integer no larger than a sized corpus."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}.")
    if corpus_size is not None and k > corpus_size:
        raise InvalidInputError(f"k={k} is larger than the corpus ({corpus_size} documents); "
                                f"ask for at most k={corpus_size}.")
    return k
