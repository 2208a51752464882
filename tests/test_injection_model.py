"""Knowledge injection on real questions, default model, default recipe: real PopQA passages encoded with
no recipe arguments make their questions answerable from the adapters alone (parametric and recite modes),
with no passage in the prompt.

The six questions are a fixed rule, not a pick: the first PopQA place-of-birth questions (rows 457+ of
../shared/data/popqa) whose evidence states the answer (``gold_states_answer``) and is at most 120 words (to keep
the test short). Only the evidence is encoded: never the answer's own article, which names the answer by its title.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyprag import Document, ParametricRetriever, PolyPRAG, PolyPRAGEncoder, PRAGEncoder
from polyprag.evaluation import accuracy

pytestmark = pytest.mark.model
SAMPLE = Path(__file__).parent / "data" / "popqa_birthplaces.jsonl"


@pytest.fixture(scope="module")
def sample():
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = {p["id"]: Document(id=p["id"], title=p["title"], text=p["text"]) for r in rows for p in r["passages"]}
    return rows, list(docs.values())


@pytest.fixture(scope="module")
def fast_llm():
    from polyprag import LoRAMixingLLM

    return LoRAMixingLLM.from_pretrained(device="cpu", compute_dtype="auto")


@pytest.mark.parametrize("encoder", [PRAGEncoder, PolyPRAGEncoder])
def test_default_recipe_injects_real_passages(fast_llm, sample, encoder):
    rows, docs = sample
    by_id = {d.id: d for d in docs}
    library = encoder(fast_llm, progress=False).fit(docs)
    prompts = [fast_llm.question_prompt(r["question"]) for r in rows]
    closed = fast_llm.generate(prompts)
    param = fast_llm.generate(prompts, [library.mixture([p["id"] for p in r["passages"]]) for r in rows])
    n_closed = sum(accuracy(a, r["answers"]) for a, r in zip(closed, rows))
    n_param = sum(accuracy(a, r["answers"]) for a, r in zip(param, rows))
    gold = {r["question"]: [by_id[p["id"]] for p in r["passages"]] for r in rows}
    rag = PolyPRAG(fast_llm, ParametricRetriever(lambda q: gold[q], library), mode="recite")
    recited = rag.answer_batch([r["question"] for r in rows])
    for a, r in zip(recited, rows):  # the passages reach the prompt only as the adapters recite them
        assert a.prompt == fast_llm.question_prompt(r["question"], a.recitals) and a.mixture is None
    n_recite = sum(accuracy(a.text, r["answers"]) for a, r in zip(recited, rows))
    print(f"{encoder.__name__}: closed-book {n_closed:.0f}/6, parametric {n_param:.0f}/6, recite {n_recite:.0f}/6: "
          f"{param} {[a.text for a in recited]}")
    # measured on the 2-core CPU (2026-12-03, default recipe, evidence only: no answer page): closed-book 0/6;
    # parametric PRAG 3/6, Poly-PRAG 3/6; recite PRAG 2/6, Poly-PRAG 2/6. (With each question's answer page
    # encoded too, as before 2026-12-03, recite answered 5/6 and 4/6: the page names the answer by its title.)
    # Asserted: both ways of answering from the adapters alone beat the bare model, and one of them answers two
    # or more; tests/pipeline/test_ensemble_model.py asserts the majority under real retrieval (recite_ensemble)
    assert n_recite > n_closed and n_param > n_closed and max(n_recite, n_param) >= 2
