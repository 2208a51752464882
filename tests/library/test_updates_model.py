"""Updates on the real default model: documents added to an encoded library of invented facts become answerable
in parametric mode, what the library answered stays answered, and deleted documents are refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from polyprag import (BM25Retriever, ParametricRetriever, PolyPRAG, PolyPRAGEncoder, UnknownDocumentError,
                      load_corpus, load_questions)
from polyprag.demo.quickstart import DATA, contains_answer

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("one_thread")]  # one torch thread
ADDED = Path(__file__).resolve().parents[1] / "data"


def _answered(llm, library, corpus, questions, mode: str = "parametric") -> set[str]:
    """Ids of the questions answered from the top-1 BM25 document's adapters, no passage of it in the prompt:
    recited and read (mode "recite"), or the mixture applied to the question (mode "parametric")."""
    rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(corpus, k=1), library), mode=mode)
    answers = rag.answer_batch([q.question for q in questions])
    for a, q in zip(answers, questions):
        assert a.prompt == llm.question_prompt(q.question, a.recitals)  # only what the adapters recited
        assert tuple(s.document.id for s in a.documents) == q.gold
    print({q.id: a.text for a, q in zip(answers, questions)})
    return {q.id for a, q in zip(answers, questions) if contains_answer(a.text, q.answers)}


def test_added_facts_are_answered_old_ones_kept_deleted_ones_refused(real_llm):
    docs, questions = load_corpus(DATA / "invented_facts.jsonl"), load_questions(DATA / "invented_questions.jsonl")
    new, new_questions = load_corpus(ADDED / "added_facts.jsonl"), load_questions(ADDED / "added_questions.jsonl")
    assert len(new) == len(new_questions) == 6
    library = PolyPRAGEncoder(real_llm, progress=False).fit(docs)
    before = _answered(real_llm, library, docs, questions)
    library.add_documents(new, progress=False)
    after_old = _answered(real_llm, library, docs + new, questions)
    after_new = _answered(real_llm, library, docs + new, new_questions)
    recited = _answered(real_llm, library, docs + new, new_questions, mode="recite")
    print(f"parametric: before: {len(before)}/8; after adding: {len(after_new)}/6 added, {len(before & after_old)}/"
          f"{len(before)} of those answered before (recite mode: {len(recited)}/6 added); add took "
          f"{library.last_update['seconds']:.0f} s, +{library.last_update['new_adapters']} adapters")
    # issue 17's target: 5/6 added facts answered, 90% of the old ones kept. Measured on the 2-core CPU
    # (2026-12-01, default recipe: passage, 15 epochs, each document starting on 2 adapters): 6/6, 7/7 kept
    assert len(after_new) >= 5
    # recitation of the added facts read back: 4/6 before this round's merge, 3/6 after it (the
    # answers now stop at a repeated phrase, long texts train in windows); the parametric figure above held 6/6
    assert len(recited) >= 3
    assert len(before & after_old) >= 0.9 * len(before)

    gone = [docs[-1].id, new[0].id]
    library.delete_documents(gone)
    for q in (questions[-1], new_questions[0]):  # the retriever still indexes them; retrieval leaves them out
        found = ParametricRetriever(BM25Retriever(docs + new, k=3), library).retrieve(q.question)
        assert not set(gone) & set(found.encoded_ids) and q.gold[0] in [s.document.id for s in found.skipped]
    for doc_id in gone:
        with pytest.raises(UnknownDocumentError, match=f"'{doc_id}' was deleted"):
            library.mixture([doc_id])
