"""Per-document reading on the real model: among BM25's three similar biographies, plain in-context RAG answers
from the wrong one, while recite_ensemble (each retrieved document's adapter recites on a row of its own, the rows
vote token by token) answers from the right one — and does not with wrong documents' adapters.

The questions are tests/data/popqa_birthplaces.jsonl (a fixed rule, see tests/test_injection_model.py); each row holds
BM25's top 3 over the whole PopQA corpus ("retrieved"), which all encode into one PRAG library.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyprag import Document, ParametricRetriever, PolyPRAG, PRAGEncoder
from polyprag.evaluation import accuracy

pytestmark = pytest.mark.model
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "popqa_birthplaces.jsonl"


@pytest.fixture(scope="module")
def fast_llm():
    from polyprag import LoRAMixingLLM

    return LoRAMixingLLM.from_pretrained(device="cpu", compute_dtype="auto")


def test_recite_ensemble_answers_what_in_context_rag_misses_among_distractors(fast_llm):
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = {p["id"]: Document(id=p["id"], title=p["title"], text=p["text"]) for r in rows for p in r["retrieved"]}
    retrieved = {r["question"]: [docs[p["id"]] for p in r["retrieved"]] for r in rows}
    library = PRAGEncoder(fast_llm, progress=False).fit(list(docs.values()))
    questions = [r["question"] for r in rows]

    def score(mode, found):
        rag = PolyPRAG(fast_llm, ParametricRetriever(lambda q: found[q], library), mode=mode)
        answers = rag.answer_batch(questions)
        return [bool(accuracy(a.text, r["answers"])) for a, r in zip(answers, rows)], [a.text for a in answers]

    plain, plain_text = score("in_context", retrieved)
    ensemble, ensemble_text = score("recite_ensemble", retrieved)
    # the wrong-documents control: another question's three retrieved documents (none of them this one's evidence)
    wrong_docs = {q: retrieved[questions[(i + 1) % len(questions)]] for i, q in enumerate(questions)}
    for r, q in zip(rows, questions):
        assert not {p["id"] for p in r["passages"]} & {d.id for d in wrong_docs[q]}
    wrong, wrong_text = score("recite_ensemble", wrong_docs)
    print(f"in_context {sum(plain)}/6 {plain_text}\nrecite_ensemble {sum(ensemble)}/6 {ensemble_text}\n"
          f"recite_ensemble_wrong {sum(wrong)}/6 {wrong_text}")
    assert any(e and not p for e, p in zip(ensemble, plain))  # a question in-context RAG misses, answered
    assert sum(ensemble) > sum(plain)
    assert sum(wrong) < sum(ensemble)
