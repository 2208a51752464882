"""PolyPRAG: retrieve, then answer with knowledge injected as parameters, in context, both, or neither."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from .documents import check_text
from .errors import IncompatibleModelError, InvalidInputError
from .llm import GenerationConfig, LoRAMixingLLM
from .mixing import Mixture, SumMixture
from .parametric import ParametricRetriever, check_k
from .retrieval import BM25Retriever, ScoredDocument, check_query

MODES = ("parametric", "combine", "in_context", "closed_book", "lag", "lag_in_context", "lag_parametric")
log = logging.getLogger(__name__)

_USES_MIXTURE = ("parametric", "combine", "lag_parametric")   # the retrieved documents' mixture
_USES_PASSAGES = ("in_context", "combine", "lag_in_context")  # the retrieved passages in the prompt
_USES_LAG = ("lag", "lag_in_context", "lag_parametric")       # the data-free LAG router


@dataclass
class Answer:
    """An answer with the documents that shaped it and the mixture that was applied."""

    text: str
    documents: list[ScoredDocument] = field(default_factory=list)
    mixture: Mixture | None = None
    mode: str = "parametric"
    prompt: str = field(default="", repr=False)


@dataclass
class Prepared:
    """Everything decided before generation: prompt, mixture, documents."""

    question: str
    prompt: str
    mixture: Mixture | None
    documents: list[ScoredDocument]
    mode: str


class PolyPRAG:
    """Question answering with a mode: ``parametric`` (mixture only), ``combine`` (mixture + passages),
    ``in_context`` (standard RAG: passages only) or ``closed_book`` (the bare model); with a LAG
    router (``lag=``, see ``polyprag.lag``): ``lag`` (router only, no retriever needed),
    ``lag_in_context`` (router + passages) and ``lag_parametric`` (router + retrieved mixture).

    Example:
        rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=3), library), mode="parametric")
        rag.answer("Who …?").text
    """

    def __init__(self, llm: LoRAMixingLLM, retriever: ParametricRetriever | BM25Retriever | None = None,
                 mode: str = "parametric", k: int | None = None, max_new_tokens: int = 32,
                 temperature: float = 0.0, stop: Sequence[str] = (), lag: Mixture | None = None):
        self.llm = llm
        self.retriever = retriever
        self.lag = lag
        self._check_mode(mode)
        if isinstance(retriever, ParametricRetriever) and retriever.library.llm is not llm:
            _check_same_model(retriever.library.llm, llm)
        self.mode = mode
        self.k = None if k is None else self._check_k(k)
        self.generation = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                           stop=tuple(stop))

    def _check_mode(self, mode: str) -> str:
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}.")
        if mode in _USES_MIXTURE and not isinstance(self.retriever, ParametricRetriever):
            raise InvalidInputError(f"mode={mode!r} needs a ParametricRetriever (BM25 + an AdapterLibrary).")
        if mode in _USES_PASSAGES and self.retriever is None:
            raise InvalidInputError(f"mode={mode!r} needs a retriever for its passages.")
        if mode in _USES_LAG and self.lag is None:
            raise InvalidInputError(f"mode={mode!r} needs a LAG router: PolyPRAG(..., lag=LAGRouter(...)).")
        return mode

    def _check_k(self, k: int) -> int:
        return check_k(k, len(self.retriever.documents) if self.retriever is not None else None)

    def prepare(self, question: str, mode: str | None = None, k: int | None = None) -> Prepared:
        """Retrieve and build the prompt and mixture for one question, without generating."""
        question = check_text(check_query(question), "The query")
        mode = self._check_mode(mode or self.mode)
        k = self.k if k is None else self._check_k(k)
        docs: list[ScoredDocument] = []
        mixture = None
        if mode in _USES_MIXTURE or mode in _USES_PASSAGES:
            if isinstance(self.retriever, ParametricRetriever):
                found = self.retriever.retrieve(question, k)
                docs = found.documents
                mixture = found.mixture if mode in _USES_MIXTURE else None
            else:
                docs = self.retriever.retrieve(question, k)
        if mode in _USES_LAG:
            mixture = self.lag if mixture is None else SumMixture([self.lag, mixture])
        passages = [s.document.full_text for s in docs] if mode in _USES_PASSAGES else []
        return Prepared(question, self._prompt(question, passages), mixture, docs, mode)

    def _prompt(self, question: str, passages: Sequence[str]) -> str:
        """The question prompt; an over-long question is cut (keeping its end, with a warning) so that the
        instruction, the passages and the answer still fit the model's context."""
        prompt = self.llm.question_prompt(question, passages)
        limit = self.llm.context_window - self.generation.max_new_tokens
        if len(prompt) <= limit:  # a token spans at least one character: nothing to count
            return prompt
        tok = self.llm.tokenizer
        over = len(tok(prompt, add_special_tokens=False)["input_ids"]) - limit
        if over <= 0:
            return prompt
        q_ids = tok(question, add_special_tokens=False)["input_ids"]
        keep = max(1, len(q_ids) - over)
        log.warning("The question has %d tokens and does not fit the model's context (%d tokens); keeping its "
                    "last %d. Ask a shorter question to use all of it.", len(q_ids), self.llm.context_window, keep)
        return self.llm.question_prompt(tok.decode(q_ids[-keep:]), passages)

    def answer(self, question: str, mode: str | None = None, k: int | None = None, **generation) -> Answer:
        """Answer one question."""
        return self.answer_batch([question], mode=mode, k=k, **generation)[0]

    def answer_batch(self, questions: Sequence[str], mode: str | None = None, k: int | None = None,
                     **generation) -> list[Answer]:
        """Answer many questions in one batched generation, each row with its own mixture."""
        prepared = [self.prepare(q, mode, k) for q in questions]
        return self.generate(prepared, **generation)

    def generate(self, prepared: Sequence[Prepared], **generation) -> list[Answer]:
        """Generate answers for prepared questions in one batch."""
        if not prepared:
            return []
        texts = self.llm.generate([p.prompt for p in prepared], [p.mixture for p in prepared],
                                  config=self.generation, **generation)
        return [Answer(t, p.documents, p.mixture, p.mode, p.prompt) for t, p in zip(texts, prepared)]

    def stream(self, question: str, mode: str | None = None, k: int | None = None,
               **generation) -> Iterator[str]:
        """Yield the answer to one question piece by piece."""
        p = self.prepare(question, mode, k)
        yield from self.llm.stream(p.prompt, p.mixture, config=self.generation, **generation)


def _check_same_model(library_llm: LoRAMixingLLM, llm: LoRAMixingLLM) -> None:
    """Refuse a library encoded on another base model than the one that will answer."""
    if library_llm.fingerprint() != llm.fingerprint():
        raise IncompatibleModelError("The retriever's library was encoded on another base model than the LLM "
                                     "given to PolyPRAG; pass the library's model (library.llm) or re-encode.")
