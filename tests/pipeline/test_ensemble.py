"""Ensemble modes: each retrieved document answers on a row of its own, the rows decode one answer together."""
from __future__ import annotations

import pytest
import torch

from conftest import random_poly_library
from polyprag import BM25Retriever, InvalidInputError, ParametricRetriever, PolyPRAG
from polyprag.pipeline.modes import MODES

Q = "who built the krell lighthouse"


def _rag(llm, docs, mode, k=3, **kw):
    library = random_poly_library(llm, docs, m=3)
    return library, PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=k), library), mode=mode,
                             max_new_tokens=5, recite_tokens=6, **kw)


def _greedy_ensemble(llm, prompts, mixtures, weights, steps):
    """The ensemble decoded by hand: at each step the argmax of Σ_d w_d softmax(logits_d), one token for all rows."""
    rows = [llm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out = []
    for _ in range(steps):
        probs = 0
        for ids, mix, w in zip(rows, mixtures, weights):
            logits = llm.logits(torch.tensor([ids + out]), mixture=mix)[0, -1].float()
            probs = probs + w * torch.softmax(logits, -1)
        out.append(int(probs.argmax()))
    return out


def test_one_row_with_all_the_weight_decodes_as_that_row_alone(llm, docs, one_thread):
    library, _ = _rag(llm, docs, "parametric_ensemble")
    prompts = [llm.question_prompt(Q, [d.full_text]) for d in docs[:3]]
    mixtures = [library.mixture([d.id]) for d in docs[:3]]
    alone = llm.generate([prompts[1]], [mixtures[1]], max_new_tokens=5, short=False)[0]
    together = llm.generate_ensemble([prompts], [mixtures], [[0.0, 1.0, 0.0]], max_new_tokens=5, short=False)[0]
    assert together == alone


def test_the_ensemble_takes_the_token_of_the_weighted_mean_of_the_rows(llm, docs, one_thread):
    library, _ = _rag(llm, docs, "parametric_ensemble")
    prompts = [llm.question_prompt(Q, [d.full_text]) for d in docs[:3]]
    mixtures = [library.mixture([d.id]) for d in docs[:3]]
    weights = [0.5, 0.3, 0.2]
    text = llm.generate_ensemble([prompts], [mixtures], [weights], max_new_tokens=4, short=False,
                                 min_new_tokens=4)[0]
    expected = llm.tokenizer.decode(_greedy_ensemble(llm, prompts, mixtures, weights, 4), skip_special_tokens=True)
    assert text == expected.strip()
    # and it is not simply one of the rows: each row alone decodes something else for some weighting
    rows = llm.generate(prompts, mixtures, max_new_tokens=4, short=False, min_new_tokens=4)
    assert len(set(rows)) > 1


def test_groups_are_decoded_apart_and_in_order(llm, docs, one_thread):
    library, _ = _rag(llm, docs, "parametric_ensemble")
    groups = [[llm.question_prompt(Q, [d.full_text]) for d in docs[i:i + 2]] for i in range(3)]
    mixtures = [[library.mixture([d.id]) for d in docs[i:i + 2]] for i in range(3)]
    each = [llm.generate_ensemble([g], [m], max_new_tokens=4)[0] for g, m in zip(groups, mixtures)]
    llm.max_batch_rows = 4  # two groups of two rows per batch at most: a group is never split
    assert llm.generate_ensemble(groups, mixtures, max_new_tokens=4) == each


def test_ensemble_modes_build_a_row_per_document(llm, docs, one_thread):
    library, rag = _rag(llm, docs, "combine_ensemble")
    p = rag.prepare(Q)
    ids = [s.document.id for s in p.documents]
    assert p.ensemble and p.mixture is None and len(p.rows) == len(ids) == 3
    for (prompt, mixture), s, i in zip(p.rows, p.documents, ids):
        assert prompt == llm.question_prompt(Q, [s.document.full_text])  # its own passage only
        assert torch.equal(mixture.weights, library.mixture([i]).weights)  # its own adapter only
    assert p.weights == pytest.approx([6 / 11, 3 / 11, 2 / 11])  # rank weights 1, 1/2, 1/3, normalised

    recite = rag.prepare(Q, mode="recite_ensemble")
    assert [r[1] for r in recite.rows] == [None] * 3  # the recitals are read without an adapter
    assert [r[0] for r in recite.rows] == [llm.question_prompt(Q, [t]) for t in recite.recitals]
    parametric = rag.prepare(Q, mode="parametric_ensemble")
    assert [r[0] for r in parametric.rows] == [llm.question_prompt(Q)] * 3  # no passage: the adapters only
    in_context = rag.prepare(Q, mode="in_context_ensemble")
    assert [r[1] for r in in_context.rows] == [None] * 3


def test_an_ensemble_answer_is_the_ensemble_of_its_rows(llm, docs, one_thread):
    library, rag = _rag(llm, docs, "combine_ensemble", ensemble_weights="uniform")
    answer = rag.answer(Q)
    expected = llm.generate_ensemble([[r[0] for r in answer.rows]], [answer.row_mixtures], [answer.weights],
                                     max_new_tokens=5)[0]
    assert answer.text == expected and answer.weights == pytest.approx([1 / 3] * 3)
    assert rag.answer_batch([Q, "what is the capital of zorvania"])[0].text == answer.text  # batched = alone
    assert "".join(rag.stream(Q)) == answer.text


def test_the_document_that_decides_is_the_one_whose_row_is_sure(llm, docs, one_thread):
    """Per-document choice: a row that is certain of its answer outvotes rows that spread their probability."""
    library, _ = _rag(llm, docs, "parametric_ensemble")
    target = llm.tokenizer.convert_tokens_to_ids("farrant")

    class Sure(torch.nn.Module):  # stands in for a document whose adapter knows the answer
        pass

    prompts = [llm.question_prompt(Q, [d.full_text]) for d in docs[:3]]
    ids = [llm.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    from polyprag.generation.llm import _Ensemble

    scores = torch.zeros(3, len(llm.tokenizer))
    scores[1, target] = 20.0                # row 1 is sure of "farrant"
    scores[0, 5], scores[2, 7] = 1.0, 1.0   # the others lean weakly elsewhere
    out = _Ensemble([(0, 3)], torch.log(torch.tensor([0.5, 0.25, 0.25])))(torch.tensor(ids[0])[None], scores)
    assert int(out[0].argmax()) == int(out[2].argmax()) == target  # every row takes the sure row's token
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_ensemble_input_is_checked(llm, docs):
    with pytest.raises(InvalidInputError, match="greedy"):
        llm.generate_ensemble([["a"]], temperature=0.7)
    with pytest.raises(InvalidInputError, match="one mixture and one weight"):
        llm.generate_ensemble([["a", "b"]], weights=[[1.0]])
    with pytest.raises(InvalidInputError, match="positive sum"):
        llm.generate_ensemble([["a", "b"]], weights=[[0.0, 0.0]])
    with pytest.raises(InvalidInputError, match="ensemble_weights"):
        PolyPRAG(llm, BM25Retriever(docs), mode="in_context_ensemble", ensemble_weights="score")
    with pytest.raises(InvalidInputError, match="ParametricRetriever"):
        PolyPRAG(llm, BM25Retriever(docs), mode="recite_ensemble")
    assert {m for m, spec in MODES.items() if spec.ensemble} == {
        "parametric_ensemble", "recite_ensemble", "combine_ensemble", "in_context_ensemble", "cross_ensemble",
        "dual_ensemble"}


def test_cross_ensemble_reads_each_passage_with_the_other_documents_adapters(llm, docs, one_thread):
    library, rag = _rag(llm, docs, "cross_ensemble")
    p = rag.prepare(Q)
    ids = [s.document.id for s in p.documents]
    assert len(p.rows) == 3
    for r, ((prompt, mixture), s) in enumerate(zip(p.rows, p.documents)):
        assert prompt == llm.question_prompt(Q, [s.document.full_text])
        others = [i for j, i in enumerate(ids) if j != r]
        assert torch.equal(mixture.weights, library.mixture(others).weights)  # not its own adapter


def test_dual_ensemble_gives_each_document_a_reading_vote_and_an_adapter_vote(llm, docs, one_thread):
    library, rag = _rag(llm, docs, "dual_ensemble")
    p = rag.prepare(Q)
    ids = [s.document.id for s in p.documents]
    assert len(p.rows) == 6
    assert [m for _, m in p.rows[:3]] == [None] * 3  # the passages read as in_context_ensemble
    assert [r[0] for r in p.rows[:3]] == [llm.question_prompt(Q, [s.document.full_text]) for s in p.documents]
    for (prompt, mixture), i in zip(p.rows[3:], ids):  # the adapters on the bare question
        assert prompt == llm.question_prompt(Q) and torch.equal(mixture.weights, library.mixture([i]).weights)
    assert p.weights == pytest.approx([6 / 22, 3 / 22, 2 / 22] * 2)  # each document's rank weight, twice
