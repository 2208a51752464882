"""PolyPRAG: retrieve, then answer with knowledge injected as parameters, in context, both, or neither.

``recite`` (recitation, as RECITE: Sun et al. 2023, "Recitation-Augmented Language Models") answers from the
parameters in two steps: each retrieved document's own mixture writes back what its adapter learned (from the
token every passage was trained from, no text of the document given), then the model reads those recitals in
its prompt, with no adapter applied. A small model stores a passage far better than it answers from it
directly: the adapter holds the knowledge, reading it in context does the reasoning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .documents import check_text
from .errors import IncompatibleModelError, InvalidInputError
from .llm import GenerationConfig, LoRAMixingLLM
from .engine import Mixture, SumMixture
from .parametric import ParametricRetriever, check_retriever, retrieve_from
from .retrieval import ScoredDocument, check_query, check_top_k
from .state import LibraryState

MODES = ("parametric", "recite", "combine", "in_context", "closed_book", "lag", "lag_in_context", "lag_parametric")
log = logging.getLogger(__name__)
MIN_PASSAGE_TOKENS = 8  # a passage cut shorter than this is dropped instead: a fragment tells the model little

_USES_MIXTURE = ("parametric", "recite", "combine", "lag_parametric")  # the retrieved documents' mixture
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
    recitals: list[str] = field(default_factory=list)  # mode "recite": what each document's adapter wrote back


@dataclass
class Prepared:
    """Everything decided before generation: prompt, mixture, documents."""

    question: str
    prompt: str
    mixture: Mixture | None
    documents: list[ScoredDocument]
    mode: str
    recitals: list[str] = field(default_factory=list)  # mode "recite": each encoded document's recital, rank order


@dataclass
class _Pending:
    """A question retrieved but not yet prompted: its passages in rank order, each a text or a document to recite."""

    question: str
    mode: str
    documents: list[ScoredDocument]
    mixture: Mixture | None
    parts: list[str | tuple[LibraryState, str]]  # a passage's text, or (library state, document id) to recite


class PolyPRAG:
    """Question answering with a mode: ``parametric`` (mixture only), ``combine`` (mixture + passages),
    ``in_context`` (standard RAG: passages only), ``closed_book`` (the bare model) or ``recite`` (each
    retrieved document's adapter recites what it learned, then the model reads the recitals); with a LAG
    router (``lag=``, see ``polyprag.lag``): ``lag`` (router only, no retriever needed),
    ``lag_in_context`` (router + passages) and ``lag_parametric`` (router + retrieved mixture).

    Example:
        rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=3), library), mode="parametric")
        rag.answer("Who …?").text
    """

    def __init__(self, llm: LoRAMixingLLM, retriever: ParametricRetriever | Any | None = None,
                 mode: str = "parametric", k: int | None = None, max_new_tokens: int = 32,
                 temperature: float = 0.0, stop: Sequence[str] = (), lag: Mixture | None = None,
                 recite_tokens: int = 160):
        self.llm = llm
        self.retriever = retriever if retriever is None else check_retriever(retriever)
        self.lag = lag
        self._check_mode(mode)
        if isinstance(retriever, ParametricRetriever) and retriever.library.llm is not llm:
            _check_same_model(retriever.library.llm, llm)
        self.mode = mode
        self.k = None if k is None else self._check_k(k)
        self.generation = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                           stop=tuple(stop))
        if recite_tokens < 1:
            raise InvalidInputError(f"recite_tokens must be >= 1, got {recite_tokens}.")
        # a recital is greedy and decodes to its end-of-text token (or this budget): the passage, not a sentence
        self.recital = GenerationConfig(max_new_tokens=recite_tokens, short=False)

    def _check_mode(self, mode: str) -> str:
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}.")
        if mode in _USES_MIXTURE and not isinstance(self.retriever, ParametricRetriever):
            raise InvalidInputError(f"mode={mode!r} needs a ParametricRetriever (a retriever + an AdapterLibrary): "
                                    "PolyPRAG(llm, ParametricRetriever(retriever, library)).")
        if mode in _USES_PASSAGES and self.retriever is None:
            raise InvalidInputError(f"mode={mode!r} needs a retriever for its passages.")
        if mode in _USES_LAG and self.lag is None:
            raise InvalidInputError(f"mode={mode!r} needs a LAG router: PolyPRAG(..., lag=LAGRouter(...)).")
        return mode

    def _check_k(self, k: int) -> int:
        docs = getattr(self.retriever, "documents", None)  # None: a retriever without a fixed corpus
        return check_top_k(k, len(docs) if isinstance(docs, Sequence) else None)

    def prepare(self, question: str, mode: str | None = None, k: int | None = None) -> Prepared:
        """Retrieve and build the prompt and mixture for one question, without generating its answer
        (mode ``recite`` generates the recitals its prompt holds)."""
        return self.prepare_batch([question], mode, k)[0]

    def prepare_batch(self, questions: Sequence[str], mode: str | None = None, k: int | None = None) -> list[Prepared]:
        """``prepare`` for many questions; mode ``recite`` writes every question's recitals in one batch."""
        pending = [self._retrieve(q, mode, k) for q in questions]
        self._recite([p for q in pending for p in q.parts if not isinstance(p, str)])
        out = []
        for q in pending:
            parts = [p if isinstance(p, str) else p[0].recitals[self._recital_key(p[1])] for p in q.parts]
            recitals = [t for t, p in zip(parts, q.parts) if not isinstance(p, str)]
            out.append(Prepared(q.question, self._prompt(q.question, parts), q.mixture, q.documents, q.mode,
                                recitals))
        return out

    def _recital_key(self, doc_id: str) -> tuple:
        return doc_id, self.recital.max_new_tokens, str(self.llm.compute_dtype)

    def _recite(self, wanted: Sequence[tuple[LibraryState, str]]) -> None:
        """Recite the documents whose recitals their states do not hold yet, all in one batch: each row applies its
        own document's mixture to the recital prompt and decodes greedily to its end-of-text token."""
        todo = list({(id(state), doc): (state, doc) for state, doc in wanted
                     if self._recital_key(doc) not in state.recitals}.values())
        if not todo:
            return
        texts = self.llm.generate([self.llm.recital_prompt] * len(todo), [state.mixture([doc]) for state, doc in todo],
                                  config=self.recital)
        for (state, doc), text in zip(todo, texts):
            state.recitals[self._recital_key(doc)] = text

    def _retrieve(self, question: str, mode: str | None, k: int | None) -> _Pending:
        question = check_text(check_query(question), "The query")
        mode = self._check_mode(mode or self.mode)
        k = self.k if k is None else self._check_k(k)
        docs: list[ScoredDocument] = []
        parts: list[str | tuple[LibraryState, str]] = []
        mixture = None
        if mode in _USES_MIXTURE:
            found = self.retriever.retrieve(question, k)
            docs = found.documents
            if mode == "recite":  # encoded documents are recited by their own mixtures; unknown ones go in as text
                parts = [s.document.full_text if i is None else (found.state, i)
                         for s, i in zip(docs, found.library_ids)]
            else:
                mixture = found.mixture
                in_prompt = docs if mode in _USES_PASSAGES else found.in_context  # unknown documents: in context
                parts = [s.document.full_text for s in in_prompt]
        elif mode in _USES_PASSAGES:  # passages only: the library, if any, plays no part
            raw = self.retriever.retriever if isinstance(self.retriever, ParametricRetriever) else self.retriever
            docs = retrieve_from(raw, question, k)
            parts = [s.document.full_text for s in docs]
        if mode in _USES_LAG:
            mixture = self.lag if mixture is None else SumMixture([self.lag, mixture])
        return _Pending(question, mode, docs, mixture, parts)

    def _prompt(self, question: str, passages: Sequence[str]) -> str:
        """The question prompt, fitted to the model's context with room for the answer: passages give way first
        (the lowest ranked is cut, then dropped); only a question too long to fit alone is cut (keeping its end)."""
        prompt = self.llm.question_prompt(question, passages)
        limit = self.llm.context_window - self.generation.max_new_tokens
        if len(prompt) <= limit:  # a token spans at least one character: nothing to count
            return prompt
        over = self._tokens(prompt) - limit
        if over <= 0:
            return prompt
        if passages and self._tokens(self.llm.question_prompt(question, ())) <= limit:
            return self._fit_passages(question, list(passages), limit)
        tok = self.llm.tokenizer
        q_ids = tok(question, add_special_tokens=False)["input_ids"]
        keep = max(1, len(q_ids) - over)
        log.warning("The question has %d tokens and does not fit the model's context (%d tokens); keeping its "
                    "last %d. Ask a shorter question to use all of it.", len(q_ids), self.llm.context_window, keep)
        return self.llm.question_prompt(tok.decode(q_ids[-keep:]), passages)

    def _fit_passages(self, question: str, passages: list[str], limit: int) -> str:
        """The prompt with the whole question and as much of the passages, in rank order, as fits in ``limit``."""
        given = len(passages)
        while passages:
            prompt = self.llm.question_prompt(question, passages)
            over = self._tokens(prompt) - limit
            if over <= 0:
                break
            keep = self._tokens(passages[-1]) - over  # tokens of the lowest-ranked passage that can stay
            cut = _head(self.llm.tokenizer, passages[-1], keep) if keep >= MIN_PASSAGE_TOKENS else ""
            if cut and len(cut) < len(passages[-1]):
                passages[-1] = cut
            else:  # too little would be left (or cutting does not shorten it): drop it
                passages.pop()
        else:
            prompt = self.llm.question_prompt(question, ())
        log.warning("The passages do not fit the model's context (%d tokens) beside the question; kept %d of %d "
                    "(the last one possibly cut) and the whole question. Retrieve fewer or shorter passages to "
                    "use all of them.", self.llm.context_window, len(passages), given)
        return prompt

    def _tokens(self, text: str) -> int:
        return len(self.llm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer(self, question: str, mode: str | None = None, k: int | None = None, **generation) -> Answer:
        """Answer one question."""
        return self.answer_batch([question], mode=mode, k=k, **generation)[0]

    def answer_batch(self, questions: Sequence[str], mode: str | None = None, k: int | None = None,
                     **generation) -> list[Answer]:
        """Answer many questions in one batched generation, each row with its own mixture."""
        return self.generate(self.prepare_batch(questions, mode, k), **generation)

    def generate(self, prepared: Sequence[Prepared], **generation) -> list[Answer]:
        """Generate answers for prepared questions in one batch."""
        if not prepared:
            return []
        texts = self.llm.generate([p.prompt for p in prepared], [p.mixture for p in prepared],
                                  config=self.generation, **generation)
        return [Answer(t, p.documents, p.mixture, p.mode, p.prompt, list(p.recitals)) for t, p in zip(texts, prepared)]

    def stream(self, question: str, mode: str | None = None, k: int | None = None,
               **generation) -> Iterator[str]:
        """Yield the answer to one question piece by piece."""
        p = self.prepare(question, mode, k)
        yield from self.llm.stream(p.prompt, p.mixture, config=self.generation, **generation)


def _head(tokenizer, text: str, n: int) -> str:
    """The first ``n`` tokens of ``text``, as the original characters where the tokenizer maps tokens to them."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text[:offsets[n - 1][1]].rstrip()
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:n]).rstrip()


def _check_same_model(library_llm: LoRAMixingLLM, llm: LoRAMixingLLM) -> None:
    """Refuse a library encoded on another base model than the one that will answer."""
    if library_llm.fingerprint() != llm.fingerprint():
        raise IncompatibleModelError("The retriever's library was encoded on another base model than the LLM "
                                     "given to PolyPRAG; pass the library's model (library.llm) or re-encode.")
