"""PolyPRAGRunnable: retrieve → mixture → generate as one LCEL Runnable, question in and answer out."""
from __future__ import annotations

import asyncio
import threading
from contextvars import copy_context
from functools import partial
from typing import Any, AsyncIterator, Iterator, Optional, Union

from langchain_core.messages import HumanMessage
from langchain_core.prompt_values import ChatPromptValue, PromptValue
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import AddableDict, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import var_child_runnable_config
from pydantic import ConfigDict, PrivateAttr

from polyprag import (DEFAULT_MODE, MODES, AdapterLibrary, Answer, FrameworkRetriever, GenerationConfig, InvalidInputError,
                      LoRAMixingLLM, Mixture, PolyPRAG, Prepared, answer_sources, face_pipeline, iterate_in_thread)

from .chat_models import ChatPolyPRAG
from .retrievers import PolyPRAGRetriever, returned_document, to_scored_document

Question = Union[str, dict, PromptValue]
Output = Union[str, dict]
_QUESTION_KEYS = ("question", "input", "query")


class PolyPRAGRunnable(RunnableSerializable[Question, Output]):
    """Parametric RAG in one Runnable: a drop-in for ``{"context": retriever | format_docs, "question":
    RunnablePassthrough()} | prompt | llm`` that keeps your retriever; ``batch`` answers all questions in one
    forward pass, each row with its own mixture; the output is the answer, or ``{"question", "answer",
    "documents"}`` with ``return_documents=True``. The input is a question, a dict with one, or a prompt value:
    ``ChatPromptTemplate.from_messages(...) | rag`` retrieves with the template's last human message and puts
    the template's text in the model's prompt where the mode reads passages or recitals.

    Example:
        rag = PolyPRAGRunnable(retriever=vectorstore.as_retriever(), library=library)  # any LangChain retriever
        rag = PolyPRAGRunnable(retriever=PolyPRAGRetriever(library=library, k=3), mode="parametric")  # or BM25
        rag.invoke("What is the capital of Zorvania?")
        chain = rag | StrOutputParser()
        chain.batch(["Who built the Krell Lighthouse?", "What is the currency of Zorvania?"])
        ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")]) | rag
        PolyPRAGRunnable(..., return_documents=True).pick("answer") | StrOutputParser()   # the answer of the dict
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Optional[BaseRetriever] = None
    """Where questions find their documents: any LangChain retriever (its k, settings and callbacks are kept) or a
    PolyPRAGRetriever."""
    library: Optional[AdapterLibrary] = None
    """The adapter library holding the retrieved documents' knowledge (default: the PolyPRAGRetriever's)."""
    rule: Optional[str] = None
    """How the documents' adapters combine: "mean" or "sum" (the library's default when None)."""
    on_unknown: str = "error"
    """A retrieved document the library does not hold: "error" (names it), "in_context" (its passage goes into the
    prompt) or "skip"."""
    llm: Optional[Union[ChatPolyPRAG, LoRAMixingLLM]] = None
    """The model (default: the library's, else the retriever-less ``rag``'s); a ChatPolyPRAG loads lazily."""
    rag: Optional[PolyPRAG] = None
    """A ready PolyPRAG pipeline, instead of ``retriever`` + ``llm``."""
    mode: str = DEFAULT_MODE
    """How knowledge reaches the model (see PolyPRAG; default combine_ensemble: each passage read with its own
    adapter, the rows voting): parametric | recite | combine | in_context | closed_book | parametric_ensemble |
    recite_ensemble | combine_ensemble | cross_ensemble | dual_ensemble | in_context_ensemble | lag |
    lag_in_context | lag_parametric (the lag modes need ``lag=``)."""
    lag: Optional[Mixture] = None
    """A LAG router (``polyprag.methods.lag.LAGRouter``), for the lag modes."""
    k: Optional[int] = None
    """Documents per question (default: the retriever's k; with another LangChain retriever, its first k)."""
    return_documents: bool = False
    """Output a dict with the answer and its source documents instead of the answer alone; read the answer with
    ``rag.pick("answer") | StrOutputParser()``."""
    max_tokens: Optional[int] = None
    """Most tokens per answer (default: the ChatPolyPRAG's, else the pipeline's)."""
    temperature: Optional[float] = None
    """Sampling temperature (default: the ChatPolyPRAG's, else greedy)."""
    stop: Optional[list[str]] = None
    """Strings that end an answer (default: the ChatPolyPRAG's)."""

    _pipeline: Optional[PolyPRAG] = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._check()  # after pydantic: our errors reach the caller as polyprag exceptions

    def _check(self) -> None:
        if self.temperature is not None:
            GenerationConfig(temperature=self.temperature)  # NaN or < 0: refused
        if self.mode not in MODES:
            raise InvalidInputError(f"mode must be one of {tuple(MODES)}, got {self.mode!r}.")
        if self.rag is None and self.retriever is None:
            raise InvalidInputError("PolyPRAGRunnable needs retriever=<a LangChain retriever> (with library=...) or "
                                    "rag=PolyPRAG(...).")
        if self.rag is None and self.llm is None and self._library() is None:
            raise InvalidInputError("Give llm=ChatPolyPRAG(...) or a LoRAMixingLLM, or library=AdapterLibrary.")
        if not (isinstance(self.llm, ChatPolyPRAG) and self.llm.llm is None and self.llm.library is None):
            self.pipeline()  # the model is at hand: refuse a bad mode/retriever pairing now, not at first call

    def pipeline(self) -> PolyPRAG:
        """The PolyPRAG pipeline this runnable runs (built, and its model loaded, on first use)."""
        with self._lock:
            if self._pipeline is None:
                if self.rag is not None:
                    self._pipeline = self.rag
                else:
                    llm = self.llm.load() if isinstance(self.llm, ChatPolyPRAG) else self.llm
                    llm = llm or self._library().llm
                    self._pipeline = face_pipeline(llm, self._retrieval(), self._library(), self.rule,
                                                   self.on_unknown, mode=self.mode, k=self.k, lag=self.lag)
            return self._pipeline

    def _library(self) -> Optional[AdapterLibrary]:
        own = self.retriever.library if isinstance(self.retriever, PolyPRAGRetriever) else None
        return self.library or own

    def _retrieval(self) -> Any:
        """The user's retriever as polyprag's: a PolyPRAGRetriever's own, any other (its k, search settings and
        callbacks kept) through the core's bridge."""
        if isinstance(self.retriever, PolyPRAGRetriever):
            return self.retriever.core
        return FrameworkRetriever(self.retriever.invoke, to_scored_document)

    def _generation(self) -> dict[str, Any]:
        chat = self.llm if isinstance(self.llm, ChatPolyPRAG) else None
        def pick(own, name):
            return own if own is not None else getattr(chat, name, None)
        stop = pick(self.stop, "stop")
        return {"max_new_tokens": pick(self.max_tokens, "max_tokens"), "temperature": pick(self.temperature,
                "temperature"), "stop": None if stop is None else tuple(stop)}

    # ---- the work, on lists of inputs -----------------------------------------------------------
    def _prepare(self, item: Question, config: Optional[RunnableConfig] = None) -> Prepared:
        """Retrieve and build the prompt and mixture. The user's retriever runs as a child of this run: it is
        called under ``config`` as LangChain calls any nested runnable (also for each question of a batch)."""
        question, query = asked(item, self.mode)
        prepare = partial(self.pipeline().prepare, question, self.mode, self.k, query)
        if config is None:
            return prepare()
        context = copy_context()
        context.run(var_child_runnable_config.set, config)
        return context.run(prepare)

    def _answer(self, inputs: list[Question], config: Optional[list[RunnableConfig]] = None,
                return_exceptions: bool = False) -> list[Any]:
        """Answers in input order; one batched generation per ``max_concurrency`` questions."""
        prepared: list[Any] = []
        for i, item in enumerate(inputs):
            try:
                prepared.append(self._prepare(item, config[i] if config else None))
            except Exception as e:  # bad input: reported for its own row, the batch goes on
                if not return_exceptions:
                    raise
                prepared.append(e)
        ready = [p for p in prepared if not isinstance(p, Exception)]
        size = (config[0].get("max_concurrency") if config else None) or len(ready) or 1
        answers: list[Answer] = []
        for start in range(0, len(ready), size):
            answers += self.pipeline().generate(ready[start:start + size], **self._generation())
        it = iter(answers)
        return [p if isinstance(p, Exception) else self._output(p, next(it), question_of(item))
                for p, item in zip(prepared, inputs)]

    def _output(self, prepared: Prepared, answer: Answer, question: str) -> Output:
        if not self.return_documents:
            return answer.text
        return {"question": question, "answer": answer.text, "documents": self._documents(prepared)}

    def _documents(self, prepared: Prepared) -> list:
        """The retrieved documents as LangChain documents, with the routing weights the mixture was made of."""
        return [returned_document(s) for s in answer_sources(prepared)]

    def _pieces(self, item: Question, config: Optional[RunnableConfig] = None) -> Iterator[Output]:
        p = self._prepare(item, config)
        if self.return_documents:
            yield AddableDict(question=question_of(item), documents=self._documents(p))
        rag = self.pipeline()
        for piece in rag.stream_prepared(p, **self._generation()):
            yield AddableDict(answer=piece) if self.return_documents else piece

    # ---- Runnable ---------------------------------------------------------------------------------
    def invoke(self, input: Question, config: Optional[RunnableConfig] = None, **kwargs: Any) -> Output:
        def answer(item: Question, config: RunnableConfig) -> Output:
            return self._answer([item], [config])[0]

        return self._call_with_config(answer, input, config)

    async def ainvoke(self, input: Question, config: Optional[RunnableConfig] = None, **kwargs: Any) -> Output:
        async def answer(item: Question, config: RunnableConfig) -> Output:
            return (await asyncio.to_thread(self._answer, [item], [config]))[0]

        return await self._acall_with_config(answer, input, config)

    def batch(self, inputs: list[Question], config: Optional[Union[RunnableConfig, list[RunnableConfig]]] = None,
              *, return_exceptions: bool = False, **kwargs: Any) -> list[Output]:
        def answer(items: list[Question], config: list[RunnableConfig]) -> list[Any]:
            return self._answer(items, config, return_exceptions)

        return self._batch_with_config(answer, inputs, config, return_exceptions=return_exceptions)

    async def abatch(self, inputs: list[Question],
                     config: Optional[Union[RunnableConfig, list[RunnableConfig]]] = None,
                     *, return_exceptions: bool = False, **kwargs: Any) -> list[Output]:
        async def answer(items: list[Question], config: list[RunnableConfig]) -> list[Any]:
            return await asyncio.to_thread(self._answer, items, config, return_exceptions)

        return await self._abatch_with_config(answer, inputs, config, return_exceptions=return_exceptions)

    def stream(self, input: Question, config: Optional[RunnableConfig] = None,
               **kwargs: Any) -> Iterator[Output]:
        def pieces(items: Iterator[Question], config: RunnableConfig) -> Iterator[Output]:
            yield from self._pieces(_one(items), config)

        yield from self._transform_stream_with_config(iter([input]), pieces, config)

    async def astream(self, input: Question, config: Optional[RunnableConfig] = None,
                      **kwargs: Any) -> AsyncIterator[Output]:
        async def pieces(items: AsyncIterator[Question], config: RunnableConfig) -> AsyncIterator[Output]:
            item = _one([i async for i in items])
            async for piece in iterate_in_thread(lambda: self._pieces(item, config)):
                yield piece

        async def once() -> AsyncIterator[Question]:
            yield input

        async for piece in self._atransform_stream_with_config(once(), pieces, config):
            yield piece


def asked(item: Question, mode: str) -> tuple[str, str]:
    """(what the model is asked, what the retriever searches for) for a runnable input: a prompt value's text and
    its last human message where the mode reads passages or recitals (the last human message alone elsewhere:
    the adapters were trained on the bare question), else the question twice."""
    query = question_of(item)
    if not isinstance(item, PromptValue):
        return query, query
    spec = MODES.get(mode)
    shown = item.to_string() if not isinstance(item, ChatPromptValue) else "\n".join(
        _text(m.content) for m in item.messages)
    return (shown if spec is not None and (spec.passages or spec.recite) else query), query


def _text(content: Any) -> str:
    """A message's text (the text parts of a multi-part content)."""
    if isinstance(content, str):
        return content
    return " ".join(c if isinstance(c, str) else str(c.get("text", "")) for c in content)


def question_of(item: Question) -> str:
    """The question in a runnable input: the string itself, a dict's "question" (or "input"/"query"), or a
    prompt value's last human message (a string prompt value's whole text)."""
    if isinstance(item, ChatPromptValue):
        human = [m for m in item.messages if isinstance(m, HumanMessage)]
        if not human:
            raise InvalidInputError("The prompt value has no human message to read the question from; end the "
                                    "template with (\"human\", \"{question}\").")
        return _text(human[-1].content)
    if isinstance(item, PromptValue):
        return item.to_string()
    if isinstance(item, dict):
        for key in _QUESTION_KEYS:
            if key in item:
                return item[key]
        raise InvalidInputError(f"A dict input needs one of the keys {_QUESTION_KEYS}; got {sorted(item)}.")
    return item


def _one(items) -> Question:
    items = list(items)
    if len(items) != 1:
        raise InvalidInputError(f"Expected one question per stream, got {len(items)} inputs.")
    return items[0]
