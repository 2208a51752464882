"""BM25 retrieval over documents: rank-bm25 by default, bm25s as a fast backend with the same scores.

Both backends score with rank-bm25's ``BM25Okapi`` (Robertson/ATIRE BM25):

    score(q, d) = Σ_{t ∈ q} idf(t) · tf·(k1+1) / (tf + k1·(1 - b + b·|d|/avgdl))
    idf(t) = ln((N - n_t + 0.5) / (n_t + 0.5)),  floored at ε·mean_t idf(t) (ε = 0.25) where negative.

bm25s precomputes idf·tf-component as a sparse [docs × vocab] matrix; its own idf variants
differ from this (``robertson`` clips negative idf to 0, ``lucene`` adds 1 inside the log), so
the bm25s backend indexes with ``lucene`` and rescales each vocabulary column by
(k1+1)·idf_okapi / idf_lucene, in float64: the two backends then return the same scores
(to ~1e-12), not only the same rankings.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ..documents import Document, check_unique
from ..errors import InvalidInputError
from .base import ScoreRetriever, corpus_k

_WORD = re.compile(r"\w+", re.UNICODE)
# A short English stop list: BM25's idf already discounts common words, this only trims noise.
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were "
    "what when where which who whom whose why how did does do".split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without stop words: the analyser both backends share."""
    return [t for t in _WORD.findall(text.lower()) if t not in STOPWORDS]


class BM25Retriever(ScoreRetriever):
    """Top-k BM25 search over a fixed list of documents (title + text are indexed).

    Example:
        retriever = BM25Retriever(docs, k=3, backend="bm25s")   # same ranking as the default, faster
        [hit.document.id for hit in retriever.retrieve("Who built the lighthouse?")]
    """

    BACKENDS = ("rank_bm25", "bm25s")

    def __init__(self, documents: Sequence[Document], k: int | None = None, backend: str = "rank_bm25",
                 k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        self.documents = check_unique(documents)
        if not self.documents:
            raise InvalidInputError("BM25Retriever needs at least one document; the corpus is empty.")
        self.k = corpus_k(k, len(self.documents))  # None: 3 or all of a smaller corpus; a larger k is refused
        if backend not in self.BACKENDS:
            raise InvalidInputError(f"Unknown BM25 backend {backend!r}; use 'rank_bm25' or 'bm25s'.")
        self.backend = backend
        corpus = [tokenize(d.full_text) or ["<empty>"] for d in self.documents]
        if backend == "rank_bm25":
            from rank_bm25 import BM25Okapi

            self._index = BM25Okapi(corpus, k1=k1, b=b, epsilon=epsilon)
        else:
            self._index = okapi_bm25s_index(corpus, k1=k1, b=b, epsilon=epsilon)

    def score_array_checked(self, query: str) -> np.ndarray:
        """BM25 score of every document for a checked query [N], float64, in document order."""
        toks = tokenize(query)
        if not toks:
            return np.zeros(len(self.documents))
        if self.backend == "rank_bm25":
            return np.asarray(self._index.get_scores(toks), dtype=np.float64)
        ids = self._index.get_tokens_ids(toks)  # words outside the vocabulary score 0, as in rank-bm25
        if not ids:
            return np.zeros(len(self.documents))
        return np.asarray(self._index.get_scores_from_ids(ids), dtype=np.float64)

    def scores(self, query: str) -> list[float]:
        """BM25 score of every document for the query, in document order."""
        return self.score_array(query).tolist()


def okapi_idf(doc_freq: np.ndarray, n_docs: int, epsilon: float = 0.25) -> np.ndarray:
    """rank-bm25's BM25Okapi idf per term: ln((N-n+0.5)/(n+0.5)), negatives floored at ε·mean idf."""
    idf = np.log(n_docs - doc_freq + 0.5) - np.log(doc_freq + 0.5)
    return np.where(idf < 0, epsilon * idf.mean(), idf)


def okapi_bm25s_index(corpus: list[list[str]], k1: float, b: float, epsilon: float):
    """A bm25s index whose scores equal rank-bm25's BM25Okapi (see the module docstring)."""
    try:
        import bm25s
    except ImportError as e:  # pragma: no cover - depends on the [fast] extra
        raise InvalidInputError("backend='bm25s' needs `pip install polyprag[fast]`.") from e
    index = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
    index.index(corpus, show_progress=False)
    indptr = index.scores["indptr"]
    doc_freq = np.diff(indptr).astype(np.float64)  # column t holds the documents that contain term t
    real = doc_freq > 0  # bm25s may add an empty token "" (in no document) for empty queries
    n = len(corpus)
    okapi = np.zeros(len(doc_freq))
    okapi[real] = okapi_idf(doc_freq[real], n, epsilon)
    lucene = np.log1p((n - doc_freq + 0.5) / (doc_freq + 0.5))  # bm25s' idf for method="lucene", > 0
    ratio = np.where(real, (k1 + 1) * okapi / lucene, 0.0)  # lucene·tfc → okapi·(k1+1)·tfc
    index.scores["data"] = index.scores["data"] * np.repeat(ratio, np.diff(indptr))
    return index
