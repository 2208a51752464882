"""ParametricRetriever: query → top-k documents → the mixture of their adapters."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .documents import check_text
from .errors import InvalidInputError
from .library import COMBINES, AdapterLibrary
from .mixing import BankMixture
from .retrieval import BM25Retriever, ScoredDocument, check_query


@dataclass
class Retrieval:
    """What one query retrieved: the scored documents, their routing weights and the mixture."""

    documents: list[ScoredDocument]
    mixture: BankMixture | None
    weights: torch.Tensor | None = field(default=None, repr=False)  # [k, m] routing weights per document

    @property
    def doc_ids(self) -> list[str]:
        return [s.document.id for s in self.documents]


class ParametricRetriever:
    """BM25 retrieval whose result also carries the parametric mixture of the retrieved documents.

    ``combine="mean"`` averages the documents' routing weights into one mixed adapter (Poly-PRAG);
    ``combine="sum"`` adds the documents' deltas (PRAG's way; the default for per-document libraries)."""

    def __init__(self, retriever: BM25Retriever, library: AdapterLibrary, combine: str | None = None):
        if combine is not None and combine not in COMBINES:
            raise InvalidInputError(f"combine must be one of {COMBINES}, got {combine!r}.")
        missing = [d.id for d in retriever.documents if d.id not in library]
        if missing:
            raise InvalidInputError(
                f"{len(missing)} retriever document(s) are not encoded in the library, e.g. {missing[0]!r}; "
                "encode them with library.add_documents(...) or retrieve over library.documents.")
        self.retriever = retriever
        self.library = library
        self.combine = combine

    @property
    def k(self) -> int:
        return self.retriever.k

    @property
    def documents(self):
        return self.retriever.documents

    def retrieve(self, query: str, k: int | None = None) -> Retrieval:
        """Top-k documents for the query and the mixture that applies their knowledge."""
        check_text(check_query(query), "The query")
        if k is not None:
            check_k(k, len(self.documents))
        found = self.retriever.retrieve(query, k)
        ids = [s.document.id for s in found]
        weights = self.library.routing_weights(ids) if ids else None
        return Retrieval(found, self.library.mixture(ids, self.combine), weights)


def check_k(k: int, corpus_size: int | None) -> int:
    """``k``, refused unless it is a positive integer no larger than the corpus."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}.")
    if corpus_size is not None and k > corpus_size:
        raise InvalidInputError(f"k={k} is larger than the corpus ({corpus_size} documents); "
                                f"ask for at most k={corpus_size}.")
    return k
