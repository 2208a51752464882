"""LAG decided once per question (methods.lag.selection) and the library's whole-adapter uses, on the tiny model."""
from __future__ import annotations

import pytest
import torch
from test_lag import _prag_library

from polyprag import BankMixture, InvalidInputError, ParametricRetriever, PolyPRAG
from polyprag.methods.lag import LAGLibrary, LAGRouter
from polyprag.methods.lag.selection import LAGRetriever, LAGSelector, _span_mask

QUESTIONS = ["who is the king", "the cat of the house", "is the king a cat"]


def _ids(llm, text: str) -> torch.Tensor:
    return llm.encode([llm.question_prompt(text)])["input_ids"]


def test_a_chosen_adapter_at_full_strength_is_the_prag_document_mixture(llm):
    prag = _prag_library(llm, 4)
    lag = LAGLibrary.from_adapter_library(prag)
    ids = _ids(llm, QUESTIONS[0])
    for j, doc in enumerate(prag.doc_ids):
        ours = llm.logits(ids, mixture=lag.mixture(torch.nn.functional.one_hot(torch.tensor(j), 4).float()))
        theirs = llm.logits(ids, mixture=prag.mixture([doc]))
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    both = llm.logits(ids, mixture=lag.mixture(torch.tensor([1.0, 0.0, 1.0, 0.0])))
    torch.testing.assert_close(both, llm.logits(ids, mixture=prag.mixture(["doc-0", "doc-2"], "sum")),
                               atol=1e-4, rtol=1e-4)


def test_votes_are_the_papers_decisions_counted_over_the_question(llm):
    lag = LAGLibrary.from_adapter_library(_prag_library(llm, 5))
    selector = LAGSelector(lag, score="votes", tokens="question", k=3, routed=True)
    router = LAGRouter(lag, k=3)
    question = QUESTIONS[1]
    prompt = llm.question_prompt(question)
    enc = llm.encode([prompt])
    mask = _span_mask(llm.tokenizer, prompt, question, enc["input_ids"].shape[1]).bool()
    assert 0 < int(mask.sum()) < mask.numel()  # the question's tokens, not the template's
    with router.recording() as record:
        llm.logits(enc["input_ids"], mixture=router)
    expected = torch.zeros(len(lag))
    for calls in record.values():
        expected += torch.bincount(calls[0].view(-1)[mask], minlength=len(lag)).float()
    torch.testing.assert_close(selector.scores([question])[0], expected)
    # batched with other questions (left padding): each row's scores are its own
    torch.testing.assert_close(selector.scores(QUESTIONS)[1], expected)
    bare = LAGSelector(lag, score="votes", tokens="question", k=3).scores([question])[0]
    assert bare.sum() == expected.sum()  # on the bare model's pass: as many decisions, made on other inputs


def test_held_mixture_applies_the_top_adapters_and_mean_divides_them(llm):
    lag = LAGLibrary.from_adapter_library(_prag_library(llm, 5))
    selector = LAGSelector(lag, top=2, score="spectr")
    chosen = selector.choose([QUESTIONS[0]])[0]
    assert chosen.tolist() == selector.scores([QUESTIONS[0]])[0].topk(2).indices.tolist()
    w = selector.weights(chosen[None])[0]
    assert sorted(w.nonzero().flatten().tolist()) == sorted(chosen.tolist()) and w.sum() == 2
    mean = LAGSelector(lag, top=2, score="spectr", combine="mean")
    assert mean.weights(chosen[None])[0].sum() == pytest.approx(1.0)
    ids = _ids(llm, QUESTIONS[0])
    torch.testing.assert_close(llm.logits(ids, mixture=selector.mixture(QUESTIONS[0])),
                               llm.logits(ids, mixture=lag.mixture(w)))


def test_retriever_feeds_the_pipelines_parametric_mode(llm):
    prag = _prag_library(llm, 4)
    lag = LAGLibrary.from_adapter_library(prag)
    retriever = LAGRetriever(lag, prag.documents, k=1, score="votes")
    question = QUESTIONS[2]
    best = prag.doc_ids[int(retriever.selector.scores([question])[0].argmax())]
    assert [s.document.id for s in retriever.retrieve(question)] == [best]
    rag = PolyPRAG(llm, ParametricRetriever(retriever, prag), mode="parametric", max_new_tokens=4)
    prepared = rag.prepare(question)
    assert [s.document.id for s in prepared.documents] == [best]
    ids = _ids(llm, question)
    torch.testing.assert_close(llm.logits(ids, mixture=prepared.mixture), llm.logits(ids, mixture=prag.mixture([best])))
    # the same through the LAG library's own adapter library (what a peft library of adapters gets)
    own = lag.as_adapter_library()
    rag2 = PolyPRAG(llm, ParametricRetriever(LAGRetriever(lag, k=1), own), mode="parametric", max_new_tokens=4)
    assert rag2.answer(question).text == rag.answer(question).text


def test_controls_without_and_shuffled(llm):
    prag = _prag_library(llm, 5)
    lag = LAGLibrary.from_adapter_library(prag)
    small = lag.without(["doc-1", "doc-3", "not-there"])
    assert small.names == ["doc-0", "doc-2", "doc-4"]
    module = next(iter(lag.modules))
    torch.testing.assert_close(small.factors(module, "doc-2")[1], lag.factors(module, "doc-2")[1])
    assert LAGSelector(small, top=3).choose(QUESTIONS).max() < 3
    with pytest.raises(InvalidInputError, match="every adapter"):
        lag.without(lag.names)
    shuffled = lag.shuffled(seed=0)
    for module in lag.modules:  # every adapter got another one's factors at every module, spectra kept
        mine = [lag.factors(module, j)[1] for j in range(5)]
        theirs = [shuffled.factors(module, j)[1] for j in range(5)]
        assert all(not torch.equal(a, b) for a, b in zip(mine, theirs))
        assert sorted(float(b.norm()) for b in mine) == pytest.approx(sorted(float(b.norm()) for b in theirs))
    ids = _ids(llm, QUESTIONS[0])
    one = torch.tensor([1.0, 0, 0, 0, 0])
    assert (llm.logits(ids, mixture=lag.mixture(one)) - llm.logits(ids, mixture=shuffled.mixture(one))).abs().max() > 1e-3


def test_bad_selector_arguments_are_refused(llm):
    lag = LAGLibrary.from_adapter_library(_prag_library(llm, 3))
    with pytest.raises(InvalidInputError, match="score"):
        LAGSelector(lag, score="bm25")
    with pytest.raises(InvalidInputError, match="tokens"):
        LAGSelector(lag, tokens="answer")
    with pytest.raises(InvalidInputError):
        LAGSelector(lag, top=4)
    with pytest.raises(InvalidInputError, match="combine"):
        LAGSelector(lag, combine="max")
