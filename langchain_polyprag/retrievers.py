"""PolyPRAGRetriever: polyprag's BM25 retrieval as a LangChain retriever, with routing weights in the metadata;
and the conversions between LangChain and polyprag documents, both ways, that let any LangChain retriever (a
vector store's, …) feed polyprag's pipeline through ``polyprag.FrameworkRetriever``."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from polyprag import (AdapterLibrary, BM25Retriever, Document, InvalidInputError, ParametricRetriever, ScoredDocument,
                      Source, passage_id)

_OWN_KEYS = ("score", "routing_weights")  # metadata polyprag adds to the documents it returns


class PolyPRAGRetriever(BaseRetriever):
    """Top-k BM25 over polyprag (or LangChain) documents; each result's metadata holds its id, BM25 score and,
    with an adapter library, its routing weights over the library's LoRA bank.

    Example:
        retriever = PolyPRAGRetriever(documents=docs, library=library, k=3)
        hits = retriever.invoke("What is the capital of Zorvania?", k=2)
        hits[0].metadata["id"], hits[0].metadata["score"], hits[0].metadata["routing_weights"]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    documents: list[Any] = Field(default_factory=list)
    """The corpus: polyprag Documents or LangChain Documents (empty: the library's documents)."""
    library: Optional[AdapterLibrary] = None
    """An adapter library encoding the documents; adds routing weights and lets the runnable build mixtures."""
    k: Optional[int] = None
    """How many documents a query returns (overridable per call: ``invoke(query, k=…)``); None: 3, or all of a
    smaller corpus. A k larger than the corpus is refused (InvalidInputError), never filled with documents that
    do not match."""
    rule: Optional[str] = None
    """How retrieved documents' adapters combine: "mean" of routing weights or "sum" of deltas (library default)."""
    backend: str = "rank_bm25"
    """BM25 implementation: "rank_bm25" or "bm25s" (the [fast] extra)."""

    _core: BM25Retriever | ParametricRetriever = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_index()  # after pydantic: our errors reach the caller as polyprag exceptions

    def _build_index(self) -> None:
        docs = [to_polyprag_document(d, i) for i, d in enumerate(self.documents)]
        if not docs and self.library is not None:
            docs = list(self.library.documents)
        if not docs:
            raise InvalidInputError("PolyPRAGRetriever needs documents=[...] or a library=AdapterLibrary.")
        self.documents = docs
        bm25 = BM25Retriever(docs, k=self.k, backend=self.backend)
        self._core = bm25 if self.library is None else ParametricRetriever(bm25, self.library, self.rule)

    @property
    def core(self) -> BM25Retriever | ParametricRetriever:
        """The polyprag retriever underneath (a ParametricRetriever when a library is given)."""
        return self._core

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: Optional[int] = None) -> list[LCDocument]:
        found = self._core.retrieve(query, k if k is not None else self.k)
        if isinstance(found, list):  # BM25 only
            return [to_langchain_document(s) for s in found]
        return [to_langchain_document(s, w) for s, w in zip(found.documents, found.routing_rows())]

    def routing_weights(self, doc_ids: Sequence[str]) -> Optional[list[list[float]]]:
        """Routing weights (k lists of m floats) of these documents over the library's bank (None without a library)."""
        if self.library is None or not doc_ids:
            return None
        return self.library.routing_weights(list(doc_ids)).tolist()


def to_langchain_document(scored: ScoredDocument, routing_weights: Optional[list[float]] = None) -> LCDocument:
    """A LangChain Document for a retrieved polyprag document: id, title, score (and routing weights) in metadata."""
    doc = scored.document
    metadata = {**doc.metadata, "id": doc.id, "title": doc.title, "score": float(scored.score)}
    if routing_weights is not None:
        metadata["routing_weights"] = [float(w) for w in routing_weights]
    return LCDocument(id=doc.id, page_content=doc.text, metadata=metadata)


def to_polyprag_document(doc: Any, position: int = 0) -> Document:
    """A polyprag Document from a polyprag or LangChain Document (id from ``doc.id`` or metadata, else content)."""
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, LCDocument):
        meta = dict(doc.metadata or {})
        title = str(meta.pop("title", "") or "")
        doc_id = doc.id or meta.pop("id", None)
        extra = {k: v for k, v in meta.items() if k not in _OWN_KEYS}
        doc_id = passage_id(title, doc.page_content) if doc_id is None else str(doc_id)
        return Document(id=doc_id, text=doc.page_content, title=title, metadata=extra)
    raise InvalidInputError(f"documents[{position}] is a {type(doc).__name__}; give polyprag.Document or "
                            "langchain_core.documents.Document objects.")


def document_ids(documents: Sequence[Any]) -> list[str]:
    """Ids of documents given as ids, polyprag Documents or LangChain Documents (e.g. a retriever's output)."""
    return [d if isinstance(d, str) else to_polyprag_document(d, i).id for i, d in enumerate(documents)]


def to_polyprag_documents(documents: Iterable[Any]) -> list[Document]:
    """polyprag Documents to encode, from LangChain Documents as loaders and text splitters give them.

    Ids are kept (``Document.id`` or ``metadata["id"]``), else the stable content hash ``passage_id(title,
    text)``; a chunk that repeats another exactly (same id and text) is encoded once."""
    out: dict[str, Document] = {}
    for i, d in enumerate(documents):
        doc = to_polyprag_document(d, i)
        seen = out.get(doc.id)
        if seen is not None and (seen.text, seen.title) != (doc.text, doc.title):
            raise InvalidInputError(f"documents[{i}] has the id {doc.id!r} of an earlier document with other text; "
                                    "give each document its own id (or none: its content hash is used).")
        out.setdefault(doc.id, doc)
    return list(out.values())


def to_scored_document(doc: LCDocument, position: int = 0) -> ScoredDocument | Document:
    """A LangChain retriever's document as polyprag's: scored by its metadata "score" when it has one."""
    converted = to_polyprag_document(doc, position)
    score = (doc.metadata or {}).get("score")
    return ScoredDocument(converted, float(score)) if isinstance(score, (int, float)) else converted


def returned_document(source: Source) -> LCDocument:
    """The LangChain document to hand back for a source of an answer: the user's own (a copy, with the routing
    weights added to its metadata) when their retriever returned it, else polyprag's."""
    original = source.original
    if original is None:
        return to_langchain_document(source.document, source.routing_weights)
    metadata = dict(original.metadata or {})
    if source.routing_weights is not None:
        metadata["routing_weights"] = [float(w) for w in source.routing_weights]
    return original.model_copy(update={"metadata": metadata})
