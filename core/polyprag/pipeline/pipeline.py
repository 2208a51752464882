"""PolyPRAG: retrieve, then answer with knowledge injected as parameters, in context, both, or neither.

``recite`` (recitation, as RECITE: Sun et al. 2023, "Recitation-Augmented Language Models") answers from the
parameters in two steps: each retrieved document's own mixture writes back what its adapter learned (from the
token every passage was trained from, no text of the document given), then the model reads those recitals in
its prompt, with no adapter applied. A small model stores a passage far better than it answers from it
directly: the adapter holds the knowledge, reading it in context does the reasoning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ..documents import check_text
from ..errors import IncompatibleModelError, InvalidInputError
from ..generation.llm import GenerationConfig, LoRAMixingLLM
from ..engine import Mixture, SumMixture
from ..retrieval.parametric import (ParametricRetriever, Retrieval, check_retriever, corpus_size,
                                   retrieve_checked_from)
from ..retrieval.base import ScoredDocument, check_query, check_top_k
from ..library.state import LibraryState
from .fit import fit_prompt
from .modes import DEFAULT_MODE, ENSEMBLE_WEIGHTS, MODES
from .recite import Reciter



@dataclass
class Answer:
    """An answer with the documents that shaped it and the mixture that was applied (an ensemble mode applies
    one mixture per document: ``row_mixtures``, with the ensemble ``weights``)."""

    text: str
    documents: list[ScoredDocument] = field(default_factory=list)
    mixture: Mixture | None = None
    mode: str = DEFAULT_MODE
    prompt: str = field(default="", repr=False)
    recitals: list[str] = field(default_factory=list)  # mode "recite": what each document's adapter wrote back
    rows: list[tuple[str, Mixture | None]] = field(default_factory=list, repr=False)  # ensemble: (prompt, mixture)
    weights: list[float] = field(default_factory=list)  # ensemble: each row's weight in the vote

    @property
    def row_mixtures(self) -> list[Mixture | None]:
        return [m for _, m in self.rows]


@dataclass
class Prepared:
    """Everything decided before generation: prompt, mixture, documents; an ensemble mode has one
    (prompt, mixture) row per document and their weights instead (``prompt`` is then its first row's)."""

    question: str
    prompt: str
    mixture: Mixture | None
    documents: list[ScoredDocument]
    mode: str
    recitals: list[str] = field(default_factory=list)  # mode "recite": each encoded document's recital, rank order
    rows: list[tuple[str, Mixture | None]] = field(default_factory=list)  # ensemble modes only
    weights: list[float] = field(default_factory=list)
    retrieval: Retrieval | None = field(default=None, repr=False)  # what the library matched, in the state it read

    @property
    def ensemble(self) -> bool:
        return bool(self.rows)

    def routing_rows(self) -> list[list[float] | None]:
        """Each document's routing weights ([m] floats, None for one the library does not hold) as the retrieval
        read them: the rows the applied mixture was made of, whatever the library holds since."""
        return self.retrieval.routing_rows() if self.retrieval is not None else [None] * len(self.documents)


@dataclass
class _Pending:
    """A question retrieved but not yet prompted: its rows (one, or one per document in an ensemble mode), each
    with its passages in rank order (a text, or a document to recite) and its mixture."""

    question: str
    mode: str
    documents: list[ScoredDocument]
    rows: list[tuple[list[str | tuple[LibraryState, str]], Mixture | None]]
    ensemble: bool = False
    retrieval: Retrieval | None = None
    ranks: list[int] = field(default_factory=list)  # each row's document rank (ensembles)


class PolyPRAG:
    """Question answering with a mode: ``parametric`` (mixture only), ``combine`` (mixture + passages),
    ``in_context`` (standard RAG: passages only), ``closed_book`` (the bare model) or ``recite`` (each
    retrieved document's adapter recites what it learned, then the model reads the recitals); with a LAG
    router (``lag=``, see ``polyprag.methods.lag``): ``lag`` (router only, no retriever needed),
    ``lag_in_context`` (router + passages) and ``lag_parametric`` (router + retrieved mixture).

    Ensemble modes read each retrieved document on its own: ``recite_ensemble`` (a row per document with its
    own recital), ``combine_ensemble`` (its passage and its own adapter), ``parametric_ensemble`` (its own
    adapter only) and ``in_context_ensemble`` (its passage only); the rows are decoded together and each step
    takes the token of the weighted mean of their distributions (REPLUG), so a small model is not misled by
    the distractors beside the document that holds the answer. ``ensemble_weights``: ``"uniform"`` or
    ``"rank"`` (the document at retrieval rank r weighs 1/(r+1)). Cost: k rows of one document each
    instead of one row of k documents (the same prefill tokens, k times the decode rows).

    ``reciter``: a ``Reciter`` shared with other pipelines on the same ``llm`` (its budget replaces
    ``recite_tokens``), so that each library state's documents are recited once between them.

    Example:
        rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=3), library), mode="parametric")
        rag.answer("Who …?").text
    """

    def __init__(self, llm: LoRAMixingLLM, retriever: ParametricRetriever | Any | None = None,
                 mode: str = DEFAULT_MODE, k: int | None = None, max_new_tokens: int = 32,
                 temperature: float = 0.0, stop: Sequence[str] = (), lag: Mixture | None = None,
                 recite_tokens: int = 160, ensemble_weights: str = "rank", reciter: Reciter | None = None):
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
        if ensemble_weights not in ENSEMBLE_WEIGHTS:
            raise InvalidInputError(f"ensemble_weights must be one of {ENSEMBLE_WEIGHTS}, got {ensemble_weights!r}.")
        self.ensemble_weights = ensemble_weights
        if reciter is not None and reciter.llm is not llm:
            raise InvalidInputError("The reciter given to PolyPRAG recites with another model wrapper; pass one made "
                                    "with this llm: Reciter(llm, recite_tokens).")
        # mode "recite": each document's recital, kept per library state (shared when given: its own budget)
        self.reciter = Reciter(llm, recite_tokens) if reciter is None else reciter

    def _check_mode(self, mode: str) -> str:
        spec = MODES.get(mode) if isinstance(mode, str) else None
        if spec is None:
            raise InvalidInputError(f"mode must be one of {tuple(MODES)}, got {mode!r}.")
        if spec.library and not isinstance(self.retriever, ParametricRetriever):
            raise InvalidInputError(f"mode={mode!r} needs a ParametricRetriever (a retriever + an AdapterLibrary): "
                                    "PolyPRAG(llm, ParametricRetriever(retriever, library)).")
        if spec.passages and self.retriever is None:
            raise InvalidInputError(f"mode={mode!r} needs a retriever for its passages.")
        if spec.lag and self.lag is None:
            raise InvalidInputError(f"mode={mode!r} needs a LAG router: PolyPRAG(..., lag=LAGRouter(...)).")
        return mode

    def _check_k(self, k: int) -> int:
        return check_top_k(k, corpus_size(self.retriever))  # no bound: a retriever without a fixed corpus

    def prepare(self, question: str, mode: str | None = None, k: int | None = None,
                query: str | None = None) -> Prepared:
        """Retrieve and build the prompt and mixture for one question, without generating its answer
        (mode ``recite`` generates the recitals its prompt holds); ``query``: what the retriever searches for,
        when it is not the question's text (a face's prompt template around the user's question)."""
        return self.prepare_batch([question], mode, k, None if query is None else [query])[0]

    def prepare_batch(self, questions: Sequence[str], mode: str | None = None, k: int | None = None,
                      queries: Sequence[str] | None = None) -> list[Prepared]:
        """``prepare`` for many questions; the recite modes write every question's recitals in one batch."""
        if isinstance(questions, str):
            raise InvalidInputError("answer_batch takes a list of questions, got one string; pass [question], or "
                                    "call answer(question).")
        queries = questions if queries is None else queries
        pending = [self._retrieve(q, mode, k, query) for q, query in zip(questions, queries, strict=True)]
        recited = iter(self.reciter.recite([p for q in pending for parts, _ in q.rows for p in parts
                                            if not isinstance(p, str)]))
        out = []
        for q in pending:
            rows, recitals = [], []
            for parts, mixture in q.rows:
                texts = [p if isinstance(p, str) else next(recited) for p in parts]  # in the order recited
                recitals += [t for t, p in zip(texts, parts) if not isinstance(p, str)]
                rows.append((fit_prompt(self.llm, q.question, texts, self.generation.max_new_tokens), mixture))
            if q.ensemble:
                out.append(Prepared(q.question, rows[0][0], None, q.documents, q.mode, recitals, rows,
                                    self._weights(q.ranks), q.retrieval))
            else:
                out.append(Prepared(q.question, rows[0][0], rows[0][1], q.documents, q.mode, recitals,
                                    retrieval=q.retrieval))
        return out

    def _weights(self, ranks: Sequence[int]) -> list[float]:
        """The ensemble weights of rows whose documents have these retrieval ranks (0 = first)."""
        w = [1.0] * len(ranks) if self.ensemble_weights == "uniform" else [1.0 / (r + 1) for r in ranks]
        return [x / sum(w) for x in w]

    def _retrieve(self, question: str, mode: str | None, k: int | None, query: str | None = None) -> _Pending:
        question = check_text(check_query(question), "The query")
        query = question if query is None or query == question else check_text(check_query(query), "The query")
        mode = self._check_mode(mode or self.mode)
        spec = MODES[mode]
        k = self.k if k is None else self._check_k(k)
        docs: list[ScoredDocument] = []
        rows: list[tuple[list, Mixture | None]] = []
        ranks: list[int] = []  # ensemble: the retrieval rank of each row's document (its weight in the vote)
        found = None
        if spec.library:
            found = self.retriever.retrieve_checked(query, k)  # query, mode and k checked above
            docs = found.documents

            def part(s: ScoredDocument, i: str | None):  # encoded documents are recited; unknown ones go in as text
                return s.document.full_text if i is None or not spec.recite else (found.state, i)

            if spec.ensemble:  # a row per document: its passage or recital, its own adapter (or the others')
                ids = found.library_ids
                for r, (s, i) in enumerate(zip(docs, ids)):
                    if spec.others:
                        other = [x for j, x in enumerate(ids) if j != r and x is not None]
                        mix = found.state.mixture(other) if spec.mixture and other else None
                    else:
                        mix = None if i is None or not spec.mixture or spec.dual else found.state.mixture([i])
                    shown = spec.recite or spec.passages or i is None
                    rows.append(([part(s, i)] if shown else [], mix))
                    ranks.append(r)
                if spec.dual:  # the second vote of each encoded document: its adapter on the bare question
                    for r, i in enumerate(ids):
                        if i is not None:
                            rows.append(([], found.state.mixture([i])))
                            ranks.append(r)
            elif spec.recite:
                rows.append(([part(s, i) for s, i in zip(docs, found.library_ids)], None))
            else:
                in_prompt = docs if spec.passages else found.in_context  # unknown documents: in context
                rows.append(([s.document.full_text for s in in_prompt], found.mixture))
        elif spec.passages:  # passages only: the library, if any, plays no part
            raw = self.retriever.retriever if isinstance(self.retriever, ParametricRetriever) else self.retriever
            docs = retrieve_checked_from(raw, query, k)  # query and k checked above
            texts = [s.document.full_text for s in docs]
            rows = [([t], None) for t in texts] if spec.ensemble else [(texts, None)]
            ranks = list(range(len(texts)))
        if not rows:  # closed book, lag, or an ensemble that retrieved nothing: one row without documents
            rows = [([], None)]
        if spec.lag:
            rows = [(parts, self.lag if m is None else SumMixture([self.lag, m])) for parts, m in rows]
        return _Pending(question, mode, docs, rows, ensemble=spec.ensemble, retrieval=found,
                        ranks=ranks if len(ranks) == len(rows) else list(range(len(rows))))

    def answer(self, question: str, mode: str | None = None, k: int | None = None, **generation) -> Answer:
        """Answer one question."""
        return self.answer_batch([question], mode=mode, k=k, **generation)[0]

    def answer_batch(self, questions: Sequence[str], mode: str | None = None, k: int | None = None,
                     **generation) -> list[Answer]:
        """Answer many questions in one batched generation, each row with its own mixture."""
        return self.generate(self.prepare_batch(questions, mode, k), **generation)

    def generate(self, prepared: Sequence[Prepared], **generation) -> list[Answer]:
        """Generate answers for prepared questions in one batch (ensembles in one batch of their own)."""
        texts = [""] * len(prepared)
        plain = [i for i, p in enumerate(prepared) if not p.ensemble]
        grouped = [i for i, p in enumerate(prepared) if p.ensemble]
        if plain:
            out = self.llm.generate([prepared[i].prompt for i in plain], [prepared[i].mixture for i in plain],
                                    config=self.generation, **generation)
            for i, t in zip(plain, out):
                texts[i] = t
        if grouped:
            out = self.llm.generate_ensemble([[r[0] for r in prepared[i].rows] for i in grouped],
                                             [[r[1] for r in prepared[i].rows] for i in grouped],
                                             [prepared[i].weights for i in grouped], config=self.generation,
                                             **generation)
            for i, t in zip(grouped, out):
                texts[i] = t
        return [Answer(t, p.documents, p.mixture, p.mode, p.prompt, list(p.recitals), list(p.rows), list(p.weights))
                for t, p in zip(texts, prepared)]

    def stream(self, question: str, mode: str | None = None, k: int | None = None,
               **generation) -> Iterator[str]:
        """Yield the answer to one question piece by piece (an ensemble mode yields it whole, once decoded)."""
        p = self.prepare(question, mode, k)
        yield from self.stream_prepared(p, **generation)

    def stream_prepared(self, p: Prepared, **generation) -> Iterator[str]:
        """Yield the answer to a prepared question piece by piece (an ensemble's answer whole, once decoded)."""
        if p.ensemble:
            text = self.generate([p], **generation)[0].text
            if text:
                yield text
            return
        yield from self.llm.stream(p.prompt, p.mixture, config=self.generation, **generation)


def _check_same_model(library_llm: LoRAMixingLLM, llm: LoRAMixingLLM) -> None:
    """Refuse a library encoded on another base model than the one that will answer."""
    if library_llm.fingerprint() != llm.fingerprint():
        raise IncompatibleModelError("The retriever's library was encoded on another base model than the LLM "
                                     "given to PolyPRAG; pass the library's model (library.llm) or re-encode.")
