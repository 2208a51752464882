"""PolyPRAG: retrieve, then answer with knowledge injected as parameters, in context, both, or neither."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from .errors import InvalidInputError
from .llm import GenerationConfig, LoRAMixingLLM
from .mixing import Mixture
from .parametric import ParametricRetriever
from .retrieval import BM25Retriever, ScoredDocument, check_query

MODES = ("parametric", "combine", "in_context", "closed_book")


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
    ``in_context`` (standard RAG: passages only) or ``closed_book`` (the bare model).

    Example:
        rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=3), library), mode="parametric")
        rag.answer("Who …?").text
    """

    def __init__(self, llm: LoRAMixingLLM, retriever: ParametricRetriever | BM25Retriever | None = None,
                 mode: str = "parametric", k: int | None = None, max_new_tokens: int = 32,
                 temperature: float = 0.0, stop: Sequence[str] = ()):
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}.")
        if mode in ("parametric", "combine") and not isinstance(retriever, ParametricRetriever):
            raise InvalidInputError(f"mode={mode!r} needs a ParametricRetriever (BM25 + an AdapterLibrary).")
        if mode == "in_context" and retriever is None:
            raise InvalidInputError("mode='in_context' needs a retriever.")
        self.llm = llm
        self.retriever = retriever
        self.mode = mode
        self.k = k
        self.generation = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                           stop=tuple(stop))

    def prepare(self, question: str, mode: str | None = None, k: int | None = None) -> Prepared:
        """Retrieve and build the prompt and mixture for one question, without generating."""
        question = check_query(question)
        mode = mode or self.mode
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {MODES}, got {mode!r}.")
        k = k or self.k
        docs: list[ScoredDocument] = []
        mixture = None
        if isinstance(self.retriever, ParametricRetriever) and mode != "closed_book":
            found = self.retriever.retrieve(question, k)
            docs = found.documents
            if mode in ("parametric", "combine"):
                mixture = found.mixture
        elif self.retriever is not None and mode != "closed_book":
            if mode in ("parametric", "combine"):
                raise InvalidInputError(f"mode={mode!r} needs a ParametricRetriever.")
            docs = self.retriever.retrieve(question, k)
        passages = [s.document.full_text for s in docs] if mode in ("in_context", "combine") else []
        return Prepared(question, self.llm.question_prompt(question, passages), mixture, docs, mode)

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
