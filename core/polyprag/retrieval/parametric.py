"""ParametricRetriever: any retriever's top-k documents → their library entries → the mixture of their adapters.

A retriever is anything that maps a query to scored documents: polyprag's BM25, dense or hybrid
retrievers, an object with ``.retrieve(query, k=None)``, or a plain callable ``query -> documents``
(the faces wrap LangChain and LlamaIndex retrievers this way). A retrieved document is matched to
its library entry by id, else by content (``passage_id(title, text)``, the id ``load_corpus`` and the
faces give documents that come without one); a document the library does not hold follows
``on_unknown``, and one the library deleted is always left out. Each retrieval reads one snapshot of the
library, so a library updated meanwhile gives it the whole state before or after the update.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..documents import Document, check_text, content_keys, passage_id
from ..errors import InvalidInputError, UnknownDocumentError
from ..library.adapters import AdapterLibrary
from ..library.state import RULES, LibraryState
from ..engine import BankMixture
from .base import ScoredDocument, ScoreRetriever, check_query, check_top_k

ON_UNKNOWN = ("error", "in_context", "skip")
log = logging.getLogger(__name__)


@dataclass
class Retrieval:
    """What one query retrieved: the documents (best first), the library entry each matched, and their mixture.

    ``library_ids[i]`` is the library id of ``documents[i]``, or None for a document the library does not
    hold (kept only under ``on_unknown="in_context"``: it goes into the prompt in every mode)."""

    documents: list[ScoredDocument]
    mixture: BankMixture | None
    weights: torch.Tensor | None = field(default=None, repr=False)  # [encoded, m] routing weights, in rank order
    library_ids: list[str | None] = field(default_factory=list)
    skipped: list[ScoredDocument] = field(default_factory=list)     # deleted, or unknown under on_unknown="skip"
    state: LibraryState | None = field(default=None, repr=False)  # the library state the documents matched

    def __post_init__(self) -> None:
        if not self.library_ids:  # a retrieval over library documents only: each id is its own entry
            self.library_ids = [s.document.id for s in self.documents]

    @property
    def doc_ids(self) -> list[str]:
        return [s.document.id for s in self.documents]

    @property
    def encoded_ids(self) -> list[str]:
        """Library ids of the retrieved documents the library holds: the ones the mixture is made of."""
        return [i for i in self.library_ids if i is not None]

    @property
    def in_context(self) -> list[ScoredDocument]:
        """Retrieved documents the library does not hold, which go into the prompt in every mode."""
        return [s for s, i in zip(self.documents, self.library_ids) if i is None]

    def routing_rows(self) -> list[list[float] | None]:
        """Each document's routing weights over the bank ([m] floats), None for one the library does not hold."""
        rows = iter(self.weights.tolist() if self.weights is not None else [])
        return [None if i is None else next(rows) for i in self.library_ids]


class ParametricRetriever:
    """Retrieval whose result also carries the parametric mixture of the retrieved documents.

    ``retriever``: a polyprag retriever, any object with ``.retrieve(query, k=None)``, or a callable
    ``query -> list of Document | ScoredDocument | (Document, score)``, best first.
    ``rule="mean"`` averages the documents' routing weights into one mixed adapter (Poly-PRAG);
    ``rule="sum"`` adds the documents' deltas (PRAG's way; the default for per-document libraries).
    ``on_unknown``: what a retrieved document the library does not hold does: ``"error"`` (refused, naming it),
    ``"in_context"`` (its passage goes into the prompt) or ``"skip"`` (left out). A document the library
    deleted (by id or by its text) is always left out: never mixed, never put in the prompt.

    Example:
        retriever = ParametricRetriever(DenseRetriever(docs, k=3), library, on_unknown="in_context")
        retriever.retrieve("Who built the Krell Lighthouse?").mixture
    """

    def __init__(self, retriever: Any, library: AdapterLibrary, rule: str | None = None,
                 on_unknown: str = "error"):
        if rule is not None and rule not in RULES:
            raise InvalidInputError(f"rule must be one of {RULES}, got {rule!r}.")
        if on_unknown not in ON_UNKNOWN:
            raise InvalidInputError(f"on_unknown must be one of {ON_UNKNOWN}, got {on_unknown!r}.")
        if not isinstance(library, AdapterLibrary):
            raise InvalidInputError(f"library must be an AdapterLibrary, got {type(library).__name__}; "
                                    "encode documents with PolyPRAGEncoder(llm).fit(docs) or AdapterLibrary.load(...).")
        check_retriever(retriever)
        self.retriever = retriever
        self.library = library
        self.rule = rule
        self.on_unknown = on_unknown
        self._matcher: LibraryMatcher | None = None
        fixed = self.documents
        if fixed is not None and on_unknown == "error":  # a fixed corpus: refuse what cannot be answered now
            matcher = self.matcher
            missing = [d.id for d in fixed if matcher.match(d) is None and not matcher.deleted(d)]
            if missing:
                raise InvalidInputError(
                    f"{len(missing)} retriever document(s) are not encoded in the library, e.g. {missing[0]!r}; "
                    "encode them with library.add_documents(...), retrieve over library.documents, or pass "
                    "on_unknown='in_context' or 'skip'.")

    @classmethod
    def wrap(cls, retriever: Any, library: AdapterLibrary | None, rule: str | None = None,
             on_unknown: str = "error") -> Any:
        """``retriever`` with this library's mixtures: itself when it already has them (or no library is given),
        else a ParametricRetriever over it (over its inner retriever when it mixes from another library)."""
        if library is None:
            return retriever
        if isinstance(retriever, ParametricRetriever):
            if retriever.library is library:
                return retriever
            retriever = retriever.retriever
        return cls(retriever, library, rule, on_unknown)

    @property
    def k(self) -> int | None:
        """The wrapped retriever's k (None when it has none: it decides how many documents it returns)."""
        return getattr(self.retriever, "k", None)

    @property
    def documents(self) -> list[Document] | None:
        """The wrapped retriever's fixed corpus, or None when it has none (e.g. a vector store)."""
        docs = getattr(self.retriever, "documents", None)
        return list(docs) if isinstance(docs, Sequence) else None

    @property
    def matcher(self) -> "LibraryMatcher":
        """The id and content index of the library's current state, rebuilt when the library is updated."""
        state = self.library.snapshot()
        matcher = self._matcher
        if matcher is None or not matcher.is_for(state):
            matcher = self._matcher = LibraryMatcher(state)
        return matcher

    def retrieve(self, query: str, k: int | None = None) -> Retrieval:
        """Top-k documents for the query and the mixture that applies their knowledge."""
        check_text(check_query(query), "The query")
        if k is not None:
            check_top_k(k, corpus_size(self.retriever))
        return self.retrieve_checked(query, k)

    def retrieve_checked(self, query: str, k: int | None = None) -> Retrieval:
        """``retrieve`` for a query and k its caller has already checked (PolyPRAG checks them once a question)."""
        return self.resolve(retrieve_checked_from(self.retriever, query, k))

    def resolve(self, found: Sequence[ScoredDocument]) -> Retrieval:
        """Match retrieved documents to the library, apply ``on_unknown``, and mix the known ones; a library
        document that several retrieved chunks match counts once, at its best rank."""
        matcher = self.matcher  # one state of the library for the whole retrieval
        documents, ids, skipped = [], [], []
        for s in found:
            match = matcher.match(s.document)
            if match is None and (self.on_unknown == "skip" or matcher.deleted(s.document)):
                skipped.append(s)
                continue
            if match is not None and match in ids:  # another chunk of a document already retrieved: once
                continue
            documents.append(s)
            ids.append(match)
        unknown = [s.document for s, i in zip(documents, ids) if i is None]
        if unknown and self.on_unknown == "error":
            raise UnknownDocumentError(
                f"The retriever returned {len(unknown)} document(s) the library does not hold: "
                f"{', '.join(describe(d) for d in unknown[:5])}{' …' if len(unknown) > 5 else ''}. "
                "Encode them with library.add_documents([...]), or pass on_unknown='in_context' (their passages "
                "go into the prompt) or on_unknown='skip'.")
        if skipped:
            log.info("Skipped %d retrieved document(s) the library does not hold or deleted: %s", len(skipped),
                     ", ".join(describe(s.document) for s in skipped))
        known = [i for i in ids if i is not None]
        weights = matcher.state.routing_weights(known) if known else None  # read once: the mixture is made of them
        mixture = matcher.state.mix(weights, self.rule) if known else None
        return Retrieval(documents, mixture, weights, library_ids=ids, skipped=skipped, state=matcher.state)


class LibraryMatcher:
    """Finds a document's entry in one library state: by id (``id``, metadata ``id`` or ``ref_doc_id``), else
    by content (``content_keys``; a key two entries share is not used); and tells documents it deleted."""

    def __init__(self, state: LibraryState):
        self.state = state
        self._ids = set(state.doc_ids)
        by_content: dict[str, str | None] = {}
        for d in state.documents:
            for key in content_keys(d):
                by_content[key] = d.id if by_content.get(key, d.id) == d.id else None  # None: ambiguous
        self._by_content = {k: v for k, v in by_content.items() if v is not None}
        self._deleted_ids = set(state.config.deleted_ids)
        self._deleted_content = set(state.config.deleted_content)

    def is_for(self, state: LibraryState) -> bool:
        return state is self.state

    @staticmethod
    def _ids_of(document: Document) -> list[str]:
        meta = document.metadata
        return [c for c in (document.id, meta.get("id"), meta.get("ref_doc_id")) if isinstance(c, str)]

    @staticmethod
    def _keys_of(document: Document) -> tuple[str, str]:
        return passage_id(document.title, document.text), passage_id("", document.text)

    def match(self, document: Document) -> str | None:
        """The library id of this document, or None when the library does not hold it."""
        for candidate in self._ids_of(document):
            if candidate in self._ids:
                return candidate
        for key in self._keys_of(document):
            if key in self._by_content:
                return self._by_content[key]
        return None

    def deleted(self, document: Document) -> bool:
        """Whether this document (one ``match`` does not find) was deleted from the library, by id or by text."""
        return (any(i in self._deleted_ids for i in self._ids_of(document))
                or any(k in self._deleted_content for k in self._keys_of(document)))


def check_retriever(retriever: Any) -> Any:
    """``retriever``, refused with advice unless it maps a query to documents the way polyprag calls it."""
    kinds = {c.__module__.split(".")[0] for c in type(retriever).__mro__}
    if "langchain_core" in kinds:
        raise InvalidInputError("This is a LangChain retriever; use it through the LangChain face: "
                                "langchain_polyprag.PolyPRAGRunnable(retriever=..., library=...).")
    if "llama_index" in kinds:
        raise InvalidInputError("This is a LlamaIndex retriever; use it through the LlamaIndex face: "
                                "llamaindex_polyprag.PolyPRAGQueryEngine(retriever=..., library=...).")
    if not (callable(getattr(retriever, "retrieve", None)) or callable(retriever)):
        raise InvalidInputError(f"A retriever must have .retrieve(query, k=None) or be a callable query -> documents; "
                                f"got {type(retriever).__name__}.")
    return retriever


def corpus_size(retriever: Any) -> int | None:
    """How many documents a retriever's fixed corpus holds, without copying it (None: it has no fixed corpus)."""
    if isinstance(retriever, ParametricRetriever):
        retriever = retriever.retriever
    docs = getattr(retriever, "documents", None)
    return len(docs) if isinstance(docs, Sequence) else None


def retrieve_from(retriever: Any, query: str, k: int | None = None) -> list[ScoredDocument]:
    """The retriever's documents for the query as ScoredDocuments, best first, at most ``k`` of them."""
    method = getattr(retriever, "retrieve", None)
    found = method(query, k) if callable(method) else retriever(query)
    out = scored_documents(found)
    return out if k is None else out[:k]


def retrieve_checked_from(retriever: Any, query: str, k: int | None = None) -> list[ScoredDocument]:
    """``retrieve_from`` for a query and k its caller has already checked: a polyprag retriever is asked past its
    own checks, so a question's query is checked once."""
    if isinstance(retriever, ScoreRetriever):
        return retriever.retrieve_checked(query, k)
    return retrieve_from(retriever, query, k)


def scored_documents(found: Any) -> list[ScoredDocument]:
    """Retrieved items (ScoredDocument, Document or (Document, score)) as ScoredDocuments; an item without a
    score gets its reciprocal rank."""
    if found is None or isinstance(found, (str, bytes, Document, ScoredDocument)):
        raise InvalidInputError(f"A retriever must return a list of documents, got {type(found).__name__}.")
    out = []
    for rank, item in enumerate(found):
        if isinstance(item, ScoredDocument):
            out.append(item)
        elif isinstance(item, Document):
            out.append(ScoredDocument(item, 1.0 / (rank + 1)))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Document):
            out.append(ScoredDocument(item[0], float(item[1])))
        else:
            raise InvalidInputError(
                f"Retrieved item {rank} is a {type(item).__name__}; a retriever must return polyprag Documents, "
                "ScoredDocuments or (Document, score) pairs (LangChain and LlamaIndex retrievers: use their face).")
    return out


def describe(document: Document) -> str:
    """A document named for a message: its id and the start of its title or text."""
    words = (document.title or document.text).split()
    start = " ".join(words[:6]) + (" …" if len(words) > 6 else "")
    return f"{document.id!r} ({start})"
