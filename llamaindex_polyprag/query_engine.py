"""PolyPRAGQueryEngine: retrieve (with any LlamaIndex retriever) → adapter mixture → generate, as a drop-in for
RetrieverQueryEngine."""
from __future__ import annotations

import asyncio
from typing import Any, Iterable, Optional

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import BaseNode, NodeWithScore

from polyprag import (DEFAULT_MODE, AdapterLibrary, BankMixture, Document, FrameworkRetriever, InvalidInputError, Mixture, PolyPRAG,
                      Prepared, answer_sources, face_pipeline)

from .llm import PolyPRAGLLM
from .nodes import returned_node, to_scored_document
from .retriever import PolyPRAGRetriever, top_k


class PolyPRAGQueryEngine(CustomQueryEngine):
    """Answers with the retrieved documents' knowledge applied as adapters: by default (``"combine_ensemble"``)
    each document's passage read with its own adapter, the rows voting; or as one mixture (``"parametric"``),
    as well as pasted in the prompt (``"combine"``), only pasted (``"in_context"``, standard RAG) or without
    retrieval (``"closed_book"``), and every other PolyPRAG mode; returns a Response with ``source_nodes``.

    Without ``llm=`` it answers as the core ``PolyPRAG`` pipeline does (the library's model, the same token
    budget); ``similarity_top_k`` (``k`` is an alias) sets the documents per question; a document that several
    retrieved chunks come from is one source.

    Example:
        engine = PolyPRAGQueryEngine.from_index(index, library)            # was: index.as_query_engine()
        engine = PolyPRAGQueryEngine(retriever=any_retriever, library=library)
        engine = PolyPRAGQueryEngine.from_defaults(retriever=any_retriever, library=library)
        engine = PolyPRAGQueryEngine.from_library(library, similarity_top_k=3)  # BM25 over the library's documents
        response = engine.query("Who built the Krell Lighthouse?")
        response.response, response.source_nodes, response.metadata["mixture_weights"]
        for token in PolyPRAGQueryEngine.from_library(library, streaming=True).query(q).response_gen: ...
    """

    retriever: BaseRetriever = Field(description="Any LlamaIndex retriever (e.g. index.as_retriever()), or a "
                                                 "PolyPRAGRetriever (BM25 over the library's documents).")
    llm: PolyPRAGLLM = Field(description="The model that answers; the library's own model.")
    library: Optional[AdapterLibrary] = Field(default=None, description="The adapter library holding the retrieved "
                                                                         "documents' knowledge (default: the "
                                                                         "PolyPRAGRetriever's).")
    rule: Optional[str] = Field(default=None, description="How the documents' adapters combine: mean or sum "
                                                             "(None: the library's default).")
    on_unknown: str = Field(default="error", description="A retrieved document the library does not hold: error, "
                                                         "in_context (its passage goes into the prompt) or skip.")
    mode: str = Field(default=DEFAULT_MODE, description="How knowledge reaches the model (see PolyPRAG): "
                      "parametric, recite, combine, in_context, closed_book, parametric_ensemble, recite_ensemble, "
                      "combine_ensemble, in_context_ensemble, or with lag=: lag, lag_in_context, lag_parametric.")
    k: Optional[int] = Field(default=None, description="Documents per question; None: the retriever's k.")
    streaming: bool = Field(default=False, description="Return a StreamingResponse instead of a Response.")
    lag: Optional[Mixture] = Field(default=None, description="A LAG router, for the lag* modes.")

    _rag: PolyPRAG = PrivateAttr()

    def __init__(self, retriever: BaseRetriever, llm: PolyPRAGLLM | None = None, mode: str = DEFAULT_MODE,
                 k: int | None = None, streaming: bool = False, lag: Mixture | None = None,
                 callback_manager: CallbackManager | None = None, library: AdapterLibrary | None = None,
                 rule: str | None = None, on_unknown: str = "error", similarity_top_k: int | None = None):
        k = top_k(similarity_top_k, k)
        if not isinstance(retriever, BaseRetriever):
            raise InvalidInputError(f"retriever must be a LlamaIndex BaseRetriever (e.g. index.as_retriever()), got "
                                    f"{type(retriever).__name__}.")
        library = library or (retriever.library if isinstance(retriever, PolyPRAGRetriever) else None)
        own_llm = llm is None
        if llm is None:
            llm = PolyPRAGLLM(llm=library.llm) if library is not None else PolyPRAGLLM()
        if not isinstance(llm, PolyPRAGLLM):
            raise InvalidInputError(f"llm must be a PolyPRAGLLM, got {type(llm).__name__}: the mixture has to "
                                    "reach the model's layers, which only a polyprag model can do.")
        if library is not None and llm.mixing_llm is not library.llm:
            raise InvalidInputError("The llm is not the model the library was encoded on; use "
                                    "PolyPRAGLLM(llm=library.llm) or leave llm out.")
        kwargs: dict[str, Any] = {"callback_manager": callback_manager} if callback_manager else {}
        super().__init__(retriever=retriever, llm=llm, library=library, rule=rule, on_unknown=on_unknown,
                         mode=mode, k=k, streaming=streaming, lag=lag, **kwargs)
        if callback_manager is not None:  # one trace: the engine's, the retriever's and the LLM's events
            retriever.callback_manager = callback_manager
            llm.callback_manager = callback_manager
        # Loads the model now if the LLM has not yet; checks the mode against the retriever.
        self._rag = face_pipeline(llm.mixing_llm, self._retrieval(), library, rule, on_unknown, mode=mode, k=k,
                                  lag=lag)
        if own_llm:  # the core pipeline's token budget: the same answers as PolyPRAG's
            llm.max_new_tokens = self._rag.generation.max_new_tokens

    def __repr_args__(self):
        """What a notebook shows of the engine: its settings by name, not the objects behind them (whose
        references lead back to the engine: pydantic's own repr recursed without end)."""
        yield "retriever", type(self.retriever).__name__
        yield "library", None if self.library is None else f"{self.library.kind}, {len(self.library)} documents"
        yield from ((name, getattr(self, name)) for name in ("mode", "k", "rule", "on_unknown", "streaming"))

    def _retrieval(self) -> Any:
        """The user's retriever as polyprag's: a PolyPRAGRetriever's own, any other (its top-k and callbacks kept)
        through the core's bridge."""
        if isinstance(self.retriever, PolyPRAGRetriever):
            return self.retriever.core
        return FrameworkRetriever(self.retriever.retrieve, to_scored_document)

    @classmethod
    def from_defaults(cls, retriever: BaseRetriever | None = None, library: AdapterLibrary | None = None,
                      llm: PolyPRAGLLM | None = None, index: Any = None, similarity_top_k: int | None = None,
                      **kwargs: Any) -> "PolyPRAGQueryEngine":
        """An engine from what is at hand, as LlamaIndex's ``from_defaults``: a retriever, else an index's
        retriever, else BM25 over the library's documents (top ``similarity_top_k``)."""
        if retriever is not None:
            return cls(retriever, llm=llm, library=library, similarity_top_k=similarity_top_k, **kwargs)
        if library is None:
            raise InvalidInputError("from_defaults needs library= (the adapter library), and retriever= or index= "
                                    "unless BM25 over the library's documents will do.")
        if index is not None:
            return cls.from_index(index, library, similarity_top_k=similarity_top_k, llm=llm, **kwargs)
        return cls.from_library(library, similarity_top_k=similarity_top_k, llm=llm, **kwargs)

    @classmethod
    def from_index(cls, index: Any, library: AdapterLibrary, k: int | None = None,
                   similarity_top_k: int | None = None, **kwargs: Any) -> "PolyPRAGQueryEngine":
        """An engine over an index's own retriever (``index.as_retriever()``, its top ``similarity_top_k`` when
        given; ``k`` is an alias).

        The top-k must be a positive integer no larger than the index's nodes (when it can tell them): a larger one
        is refused (InvalidInputError), not clamped to nodes that do not match the question."""
        k = top_k(similarity_top_k, k)
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise InvalidInputError(f"similarity_top_k must be a positive integer (nodes retrieved per question), "
                                        f"got {k!r}.")
            nodes = _node_count(index)
            if nodes is not None and k > nodes:
                raise InvalidInputError(f"similarity_top_k={k} is larger than the index ({nodes} nodes); ask for at "
                                        f"most {nodes}.")
        retriever = index.as_retriever() if k is None else index.as_retriever(similarity_top_k=k)
        return cls(retriever, library=library, **kwargs)

    @classmethod
    def from_library(cls, library: AdapterLibrary, k: int | None = None, rule: str | None = None,
                     llm: PolyPRAGLLM | None = None, similarity_top_k: int | None = None,
                     **kwargs: Any) -> "PolyPRAGQueryEngine":
        """An engine over every document of an adapter library (BM25 + the library's routing; top 3, or all of a smaller library, by default)."""
        retriever = PolyPRAGRetriever.from_library(library, top_k(similarity_top_k, k), rule=rule)
        return cls(retriever, llm=llm, **kwargs)

    @classmethod
    def from_documents(cls, documents: Iterable[Document | BaseNode], library: AdapterLibrary | None = None,
                       k: int | None = None, rule: str | None = None, llm: PolyPRAGLLM | None = None,
                       similarity_top_k: int | None = None, **kwargs: Any) -> "PolyPRAGQueryEngine":
        """An engine over LlamaIndex Documents/TextNodes or polyprag Documents (encoded in ``library``)."""
        retriever = PolyPRAGRetriever.from_documents(documents, library, top_k(similarity_top_k, k), rule=rule)
        return cls(retriever, llm=llm, **kwargs)

    # ---- one question ------------------------------------------------------------------------
    def _prepare(self, query_str: str) -> tuple[Prepared, list[NodeWithScore], dict[str, Any]]:
        with self.callback_manager.event(CBEventType.RETRIEVE,
                                         payload={EventPayload.QUERY_STR: query_str}) as event:
            prepared = self._rag.prepare(query_str, self.mode, self.k)
            nodes = self._nodes(prepared)
            event.on_end(payload={EventPayload.NODES: nodes})
        return prepared, nodes, _metadata(prepared, nodes)

    def _nodes(self, prepared: Prepared) -> list[NodeWithScore]:
        """The source nodes: the user's retriever's own nodes (copies, with the routing weights the mixture was
        made of), or polyprag's."""
        return [returned_node(s) for s in answer_sources(prepared)]

    def _generation(self) -> dict[str, Any]:
        """This engine's LLM's decoding settings, for the answers the pipeline decodes itself (ensembles)."""
        return dict(max_new_tokens=self.llm.max_new_tokens, temperature=self.llm.temperature, stop=tuple(self.llm.stop))

    def custom_query(self, query_str: str) -> Response | StreamingResponse:
        prepared, nodes, meta = self._prepare(query_str)
        if prepared.ensemble:  # one row per document, decoded together: the pipeline's own generation
            text = self._rag.generate([prepared], **self._generation())[0].text
            if self.streaming:
                return StreamingResponse(response_gen=iter([text] if text else []), source_nodes=nodes, metadata=meta)
            return Response(text, source_nodes=nodes, metadata=meta)
        if self.streaming:
            stream = self.llm.stream_complete(prepared.prompt, formatted=True, mixture=prepared.mixture)
            return StreamingResponse(response_gen=(r.delta for r in stream), source_nodes=nodes, metadata=meta)
        answer = self.llm.complete(prepared.prompt, formatted=True, mixture=prepared.mixture)
        return Response(answer.text, source_nodes=nodes, metadata=meta)

    async def acustom_query(self, query_str: str) -> Response | AsyncStreamingResponse:
        prepared, nodes, meta = await asyncio.to_thread(self._prepare, query_str)
        if prepared.ensemble:
            text = (await asyncio.to_thread(lambda: self._rag.generate([prepared], **self._generation())))[0].text
            if self.streaming:
                return AsyncStreamingResponse(response_gen=_pieces([text] if text else []), source_nodes=nodes,
                                              metadata=meta)
            return Response(text, source_nodes=nodes, metadata=meta)
        if self.streaming:
            stream = await self.llm.astream_complete(prepared.prompt, formatted=True, mixture=prepared.mixture)
            return AsyncStreamingResponse(response_gen=_deltas(stream), source_nodes=nodes, metadata=meta)
        answer = await self.llm.acomplete(prepared.prompt, formatted=True, mixture=prepared.mixture)
        return Response(answer.text, source_nodes=nodes, metadata=meta)


def _node_count(index: Any) -> int | None:
    """How many nodes an index holds (its docstore's), or None when it cannot say (a remote vector store)."""
    docs = getattr(getattr(index, "docstore", None), "docs", None)
    if not docs:
        return None
    nodes = getattr(getattr(index, "index_struct", None), "nodes_dict", None)
    return len(nodes) if nodes else len(docs)


def _metadata(prepared: Prepared, nodes: list[NodeWithScore]) -> dict[str, Any]:
    """What a Response reports: the mode, the mixture applied and each source's routing weights."""
    weights = None
    if isinstance(prepared.mixture, BankMixture):
        weights = prepared.mixture.weights[0].tolist()  # [terms, m]: 1 term for "mean", k for "sum"
    return {
        "mode": prepared.mode,
        "mixture": prepared.mixture,
        "mixture_weights": weights,
        "routing_weights": {n.node.node_id: n.node.metadata.get("routing_weights") for n in nodes},
        "prompt": prepared.prompt,
    }


async def _pieces(pieces):
    for piece in pieces:
        yield piece


async def _deltas(stream):
    async for r in stream:
        yield r.delta
