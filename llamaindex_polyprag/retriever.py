"""PolyPRAGRetriever: polyprag's BM25 (plus the library's routing) as a LlamaIndex retriever. Any other LlamaIndex
retriever (a vector index's, …) feeds polyprag's pipeline through ``polyprag.FrameworkRetriever``, its nodes
converted by ``nodes.to_scored_document``."""
from __future__ import annotations

import asyncio
from typing import Any, Iterable, Sequence

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle

from polyprag import AdapterLibrary, BM25Retriever, Document, InvalidInputError, ParametricRetriever, ScoredDocument

from .nodes import to_documents, to_nodes


class PolyPRAGRetriever(BaseRetriever):
    """Top-k BM25 nodes with scores; over an adapter library each node carries its routing weights.

    ``similarity_top_k`` (LlamaIndex's name; ``k`` is an alias) is the number of nodes retrieved.

    Example:
        retriever = PolyPRAGRetriever.from_library(library, similarity_top_k=3)
        nodes = retriever.retrieve("Who built the Krell Lighthouse?")
        nodes[0].score, nodes[0].node.metadata["routing_weights"]   # BM25 score, [m] weights

        # or plain BM25 over LlamaIndex documents, no library:
        retriever = PolyPRAGRetriever.from_documents([Document(text=..., metadata={"title": ...})])
    """

    def __init__(self, retriever: ParametricRetriever | BM25Retriever, similarity_top_k: int | None = None,
                 callback_manager: CallbackManager | None = None, verbose: bool = False, k: int | None = None):
        if not isinstance(retriever, (ParametricRetriever, BM25Retriever)):
            raise InvalidInputError(
                f"PolyPRAGRetriever wraps a polyprag ParametricRetriever or BM25Retriever, got "
                f"{type(retriever).__name__}; use PolyPRAGRetriever.from_documents(...) to build one.")
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.core = retriever
        self.k = top_k(similarity_top_k, k)

    @classmethod
    def from_documents(cls, documents: Iterable[Document | BaseNode], library: AdapterLibrary | None = None,
                       similarity_top_k: int | None = None, rule: str | None = None, backend: str = "rank_bm25",
                       k: int | None = None, **kwargs: Any) -> "PolyPRAGRetriever":
        """BM25 over polyprag Documents or LlamaIndex Documents/TextNodes; with routing when a library is given."""
        bm25 = BM25Retriever(to_documents(documents), k=top_k(similarity_top_k, k), backend=backend)
        core = ParametricRetriever(bm25, library, rule) if library is not None else bm25
        return cls(core, **kwargs)

    @classmethod
    def from_library(cls, library: AdapterLibrary, similarity_top_k: int | None = None, rule: str | None = None,
                     backend: str = "rank_bm25", k: int | None = None, **kwargs: Any) -> "PolyPRAGRetriever":
        """BM25 over every document encoded in the library, with its routing."""
        return cls.from_documents(library.documents, library, top_k(similarity_top_k, k), rule, backend,
                                  **kwargs)

    @property
    def similarity_top_k(self) -> int | None:
        """Nodes retrieved per query (None: the BM25 retriever's own k)."""
        return self.k

    @property
    def library(self) -> AdapterLibrary | None:
        """The adapter library behind the routing weights (None for plain BM25)."""
        return self.core.library if isinstance(self.core, ParametricRetriever) else None

    def to_nodes(self, found: Sequence[ScoredDocument]) -> list[NodeWithScore]:
        """Scored nodes for retrieved documents, with their routing weights when there is a library."""
        library = self.library
        weights = library.routing_weights([s.document.id for s in found]).tolist() if library and found else None
        return to_nodes(found, weights)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        found = self.core.retrieve(query_bundle.query_str, self.k)
        if isinstance(self.core, ParametricRetriever):  # Retrieval: documents + their routing weights
            return to_nodes(found.documents, found.routing_rows())
        return to_nodes(found)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)


def top_k(similarity_top_k: int | None, k: int | None, default: int | None = None) -> int | None:
    """The number of nodes to retrieve from LlamaIndex's ``similarity_top_k`` or its alias ``k`` (not both)."""
    if similarity_top_k is not None and k is not None and similarity_top_k != k:
        raise InvalidInputError(f"Got similarity_top_k={similarity_top_k} and k={k}; give one (k is an alias).")
    return similarity_top_k if similarity_top_k is not None else k if k is not None else default
