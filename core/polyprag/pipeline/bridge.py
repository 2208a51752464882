"""The bridge the framework faces share (LangChain's, LlamaIndex's), so that each face only converts types.

- ``FrameworkRetriever``: the user's framework retriever as a polyprag retriever. The face passes the function that
  calls it and the one that converts each item it returns; each retrieved document then carries its item
  (``SourcedDocument.original``) through the pipeline, so a prepared answer holds its own question's originals
  and no side channel between the retriever and the face is needed, however many questions run at once.
- ``face_pipeline``: the PolyPRAG pipeline a face runs: a retriever with a library's mixtures.
- ``answer_sources``: the sources of a prepared answer: each retrieved document with its routing weights as the
  retrieval read them (``Prepared.routing_rows``: the rows the applied mixture was made of, not recomputed against
  the library's current state) and the framework item it came from.

No framework is imported here: the faces pass their converters in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..documents import Document
from ..library.adapters import AdapterLibrary
from ..generation.llm import LoRAMixingLLM
from ..retrieval.parametric import ParametricRetriever, scored_documents
from .pipeline import PolyPRAG, Prepared
from ..retrieval.base import ScoredDocument


@dataclass(frozen=True)
class SourcedDocument(ScoredDocument):
    """A retrieved document with the framework's own item it was converted from (a LangChain Document, a
    LlamaIndex NodeWithScore, …), so that a face can hand the user's own item back."""

    original: Any = field(default=None, compare=False, repr=False)


class FrameworkRetriever:
    """A framework's retriever as a polyprag retriever (``query -> scored documents``, best first).

    ``search(query)`` calls the user's retriever (with its own k, settings and callbacks) and returns its items;
    ``convert(item, position)`` makes one item a polyprag ScoredDocument, or a Document (its score is then its
    reciprocal rank). The documents are matched to the library by id or content (see ``ParametricRetriever``),
    and each one carries the item it came from (``SourcedDocument.original``).

    Example:
        retriever = FrameworkRetriever(lambda q: vector_store.search(q), lambda hit, i: Document(hit.id, hit.text))
        rag = face_pipeline(library.llm, retriever, library, mode="parametric")
    """

    def __init__(self, search: Callable[[str], Iterable[Any]],
                 convert: Callable[[Any, int], ScoredDocument | Document]):
        self.search = search
        self.convert = convert

    def __call__(self, query: str) -> list[SourcedDocument]:
        items = list(self.search(query))
        found = scored_documents([self.convert(item, i) for i, item in enumerate(items)])
        return [SourcedDocument(s.document, s.score, item) for s, item in zip(found, items)]


def face_pipeline(llm: LoRAMixingLLM, retriever: Any, library: AdapterLibrary | None = None,
                  rule: str | None = None, on_unknown: str = "error", **options: Any) -> PolyPRAG:
    """The PolyPRAG pipeline a face runs: ``retriever`` (a polyprag retriever: a face's own retriever's core, or a
    ``FrameworkRetriever`` over the user's) with ``library``'s mixtures (see ``ParametricRetriever.wrap``), and
    PolyPRAG's ``options`` (``mode``, ``k``, ``lag``, …)."""
    return PolyPRAG(llm, ParametricRetriever.wrap(retriever, library, rule, on_unknown), **options)


@dataclass(frozen=True)
class Source:
    """One source of a prepared answer: the retrieved document, its routing weights over the bank as the
    retrieval read them ([m] floats; None for a document the library does not hold, or in a mode that reads no
    library) and the framework item it came from (None from polyprag's own retrievers)."""

    document: ScoredDocument
    routing_weights: list[float] | None
    original: Any = None


def answer_sources(prepared: Prepared) -> list[Source]:
    """The sources of a prepared answer in rank order, with the routing rows the applied mixture was made of."""
    return [Source(s, w, s.original if isinstance(s, SourcedDocument) else None)
            for s, w in zip(prepared.documents, prepared.routing_rows())]
