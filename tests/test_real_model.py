"""The behaviour users care about, on the real default model: injected facts become answerable."""
from __future__ import annotations

import os
import time

import pytest

from polyprag import MODES, BM25Retriever, ParametricRetriever, PolyPRAG, load_corpus, load_questions
from polyprag.demo.quickstart import DATA, contains_answer, demo_encoder
from polyprag.generation.models import default_model_path
from polyprag.generation.prompts import repeat_end

pytestmark = pytest.mark.model


def test_second_load_uses_the_converted_cache(real_llm):
    path = default_model_path()  # converted by the real_llm fixture already
    stamp = os.path.getmtime(path / "model.safetensors")
    t0 = time.time()
    assert default_model_path() == path
    assert time.time() - t0 < 1.0 and os.path.getmtime(path / "model.safetensors") == stamp


def test_parametric_mode_answers_invented_facts_closed_book_cannot(real_llm, tmp_path):
    docs = load_corpus(DATA / "invented_facts.jsonl")
    questions = load_questions(DATA / "invented_questions.jsonl")
    assert len(docs) >= 6 and all(len(q.gold) == 1 for q in questions)
    library = demo_encoder(real_llm).fit(docs)
    library.save(tmp_path / "lib")
    retriever = ParametricRetriever(BM25Retriever(docs, k=1), library)
    asked = [q.question for q in questions]
    closed = PolyPRAG(real_llm, retriever, mode="closed_book").answer_batch(asked)
    param = PolyPRAG(real_llm, retriever, mode="parametric").answer_batch(asked)
    for a, q in zip(param, questions):
        assert "Passage" not in a.prompt and q.gold[0] in [s.document.id for s in a.documents]
    n_closed = sum(contains_answer(a.text, q.answers) for a, q in zip(closed, questions))
    n_param = sum(contains_answer(a.text, q.answers) for a, q in zip(param, questions))
    print(f"closed-book {n_closed}/{len(questions)}, parametric {n_param}/{len(questions)}")
    assert n_closed == 0
    assert n_param > len(questions) / 2  # "most of them"
    for mode in [m for m in MODES if not MODES[m].lag]:  # the demo's answers never loop, in any mode
        answers = [a.text for a in PolyPRAG(real_llm, retriever, mode=mode).answer_batch(asked)]
        assert not [a for a in answers if repeat_end(a) is not None], (mode, answers)
