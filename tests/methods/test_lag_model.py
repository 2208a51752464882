"""LAG on the real default model: per-document adapters, no retriever, no passages, beats closed book."""
from __future__ import annotations

import pytest
from conftest import DATA

from polyprag import PolyPRAG, PRAGEncoder, load_corpus, load_questions
from polyprag.methods.lag import LAGLibrary, LAGRouter


def _correct(answers, questions) -> int:
    return sum(any(a.lower() in ans.text.lower() for a in q.answers) for ans, q in zip(answers, questions))


@pytest.mark.model
def test_lag_without_retriever_beats_closed_book(real_llm):
    docs = load_corpus(DATA / "invented_facts.jsonl")       # 8 invented facts, one question each
    questions = load_questions(DATA / "invented_questions.jsonl")
    assert len(docs) >= 6
    # One LoRA per document, the LAG paper's knowledge-adapter shape (rank 6, alpha 2·rank) on
    # gate/up/down, trained with the default recipe's texts and schedule (the passage, 8 epochs at lr 4e-3).
    library = PRAGEncoder(real_llm, rank=6, alpha=12, progress=False).fit(docs)
    router = LAGRouter(LAGLibrary.from_adapter_library(library), k=3)
    asked = [q.question for q in questions]
    closed = PolyPRAG(real_llm, None, mode="closed_book", max_new_tokens=16).answer_batch(asked)
    lag = PolyPRAG(real_llm, None, mode="lag", lag=router, max_new_tokens=16).answer_batch(asked)
    n_closed, n_lag = _correct(closed, questions), _correct(lag, questions)
    print(f"\nLAG (no retriever, no passages) {n_lag}/{len(questions)} vs closed book {n_closed}/{len(questions)}")
    assert n_lag > n_closed
