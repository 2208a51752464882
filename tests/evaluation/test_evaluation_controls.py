"""The evaluation cannot be fooled: answer pages are never evidence, oracles count only answerable questions,
the prior and wrong-adapter controls build what they claim, and question kinds are scored apart."""
from __future__ import annotations

import json

import pytest
import torch

from polyprag import AdapterLibrary, Document, PolyPRAG
from polyprag.documents import Question, save_jsonl
from polyprag.evaluation import EvalConfig, run_evaluation
from polyprag.evaluation.questions import evidence, prior_answers, question_kind
from polyprag.evaluation.runner import FixedRetriever, WrongMixtureRetriever, library_documents

from conftest import random_poly_library


def _slice(folder, docs, rows):
    folder.mkdir(parents=True, exist_ok=True)
    save_jsonl([{"id": d.id, "title": d.title, "text": d.text} for d in docs], folder / "corpus.jsonl")
    save_jsonl(rows, folder / "questions.jsonl")
    return str(folder)


ROWS = [  # PopQA-shaped: d2 is the answer's own page for q0 and q1, and q1's evidence does not state its answer
    {"id": "q0", "question": "In what city was farrant born?", "answers": ["quellport"], "gold": ["d1", "d2"],
     "answer_pages": ["d2"], "gold_states_answer": True},
    {"id": "q1", "question": "In what city was marisol born?", "answers": ["quellport"], "gold": ["d3"],
     "answer_pages": ["d2"], "gold_states_answer": False},
    {"id": "q2", "question": "What is tamsin's occupation?", "answers": ["painter"], "gold": ["d4"],
     "answer_pages": ["d0"], "gold_states_answer": True},
]


def test_answer_pages_are_never_gold(llm, docs, tmp_path):
    q = Question("q0", "x", ("quellport",), ("d1", "d2"), {"answer_pages": ["d2"]})
    assert evidence(q) == ("d1",)
    data = _slice(tmp_path / "data", docs, ROWS)
    cfg = EvalConfig(data=data, k=1, methods=("in_context_oracle", "prag_oracle", "prag_wrong", "in_context"),
                     texts="passage", prag_epochs=1, max_new_tokens=3, latency_samples=0, progress=False)
    report = run_evaluation(cfg, llm=llm)
    by = {r.method: r for r in report.results}
    oracle = {p["id"]: p["documents"] for p in by["in_context_oracle"].predictions}
    assert oracle == {"q0": ["d1"], "q2": ["d4"]}  # the answer page d2 is not evidence; q1's evidence cannot answer
    assert by["in_context"].questions == 3 and by["prag_oracle"].questions == 2
    assert report.facts["oracle_questions"] == 2
    for p in by["prag_wrong"].predictions:  # a wrong document never names the answer either
        assert not set(p["documents"]) & set(next(r for r in ROWS if r["id"] == p["id"])["answer_pages"])
    c = report.comparison("prag_oracle", "in_context")
    assert c is not None and c.questions == 2  # an oracle is compared on the questions it answered
    assert report.injection_efficiency("prag_oracle") is None or report.injection_efficiency("prag_oracle") >= 0


def test_question_kinds_and_the_prior(docs, tmp_path, llm):
    qs = [Question(r["id"], r["question"], tuple(r["answers"])) for r in ROWS]
    assert [question_kind(q) for q in qs] == ["place of birth", "place of birth", "occupation"]
    assert question_kind(Question("h", "Which is older?", ("a",), (), {"type": "comparison"})) == "comparison"
    assert prior_answers(qs) == ["quellport", "quellport", "painter"]  # the most frequent answer of each kind
    data = _slice(tmp_path / "data", docs, ROWS)
    report = run_evaluation(EvalConfig(data=data, k=1, methods=("prior", "closed_book"), max_new_tokens=3,
                                       latency_samples=0, progress=False), llm=llm)
    prior = report.result("prior")
    assert [p["prediction"] for p in prior.predictions] == ["quellport", "quellport", "painter"]
    assert prior.accuracy == 100.0 and prior.latency_p50_s is None
    assert set(prior.by_kind) == {"place of birth", "occupation"}
    assert prior.by_kind["place of birth"] == {"questions": 2, "accuracy": 100.0}
    assert "accuracy by question kind" in report.markdown()


def test_combine_wrong_shows_the_passages_but_mixes_the_wrong_documents(llm, docs):
    library = random_poly_library(llm, docs, m=3)
    question = "who built the krell lighthouse"
    retriever = WrongMixtureRetriever(FixedRetriever(docs, {question: ["d1", "d0"]}),
                                      FixedRetriever(docs, {question: ["d3", "d4"]}), library, rule="mean")
    found = retriever.retrieve(question)
    assert [s.document.id for s in found.documents] == ["d1", "d0"]  # the prompt shows the retrieved passages
    assert found.library_ids == ["d3", "d4"]  # the adapters are the wrong documents'
    assert torch.equal(found.mixture.weights, library.mixture(["d3", "d4"], "mean").weights)
    assert not torch.equal(found.mixture.weights, library.mixture(["d1", "d0"], "mean").weights)
    answer = PolyPRAG(llm, retriever, mode="combine", max_new_tokens=3).answer(question)  # as the runner asks
    assert [s.document.id for s in answer.documents] == ["d1", "d0"]
    assert answer.prompt == llm.question_prompt(question, [docs[1].full_text, docs[0].full_text])
    assert torch.equal(answer.mixture.weights, found.mixture.weights)


def test_combine_wrong_methods_answer_with_the_retrieved_passages(llm, docs, tmp_path):
    data = _slice(tmp_path / "data", docs, ROWS)
    cfg = EvalConfig(data=data, k=2, methods=("prag_combine", "prag_combine_wrong", "prag_combine_ensemble_wrong"),
                     texts="passage", prag_epochs=1, max_new_tokens=3, latency_samples=0, progress=False)
    report = run_evaluation(cfg, llm=llm)
    right, wrong, ens = (report.result(m).predictions for m in cfg.methods)
    assert [p["documents"] for p in right] == [p["documents"] for p in wrong] == [p["documents"] for p in ens]


def test_library_holds_the_questions_documents_the_corpus_or_n_more(docs):
    qs = [Question("q", "x", ("a",), ("d4",))]
    retrieved = [["d0"]]
    ids = lambda lib: [d.id for d in library_documents(docs, qs, retrieved, True, True, lib, 0)]  # noqa: E731
    assert ids("questions") == ["d0", "d4"]
    assert ids("corpus") == [d.id for d in docs]
    two = ids("2")
    assert len(two) == 4 and {"d0", "d4"} <= set(two) and two == ids("2")  # seeded
    with pytest.raises(Exception, match="library must be"):
        EvalConfig(data="x", library="everything")


def test_a_library_trained_once_is_reused(llm, docs, tmp_path):
    data = _slice(tmp_path / "data", docs, ROWS)
    cache = tmp_path / "libs"
    cfg = EvalConfig(data=data, k=2, methods=("prag",), texts="passage", prag_epochs=1, max_new_tokens=3,
                     latency_samples=0, libraries=str(cache), library="corpus", progress=False)
    first = run_evaluation(cfg, llm=llm)
    (saved,) = cache.iterdir()
    assert json.loads((saved / "eval-encoding.json").read_text())["documents"] == len(docs)
    stamp = (saved / "bank.safetensors").stat().st_mtime_ns
    again = run_evaluation(EvalConfig(**{**cfg.__dict__, "library": "questions"}), llm=llm)  # a subset: reused
    assert (saved / "bank.safetensors").stat().st_mtime_ns == stamp
    assert [p["prediction"] for p in again.results[0].predictions] == [p["prediction"] for p in first.results[0].predictions]
    other = run_evaluation(EvalConfig(**{**cfg.__dict__, "prag_epochs": 2}), llm=llm)  # other settings: trained anew
    assert len(list(cache.iterdir())) == 2 and other.results[0].questions == 3
    assert AdapterLibrary.load(saved, llm).doc_ids == [d.id for d in docs]


def test_libraries_of_two_corpora_are_kept_apart(llm, docs, tmp_path):
    cache = tmp_path / "libs"
    for name, corpus in (("a", docs), ("b", docs[:4])):
        data = _slice(tmp_path / name, corpus, [{"id": "q", "question": "who built the krell lighthouse",
                                                 "answers": ["farrant"], "gold": ["d1"]}])
        run_evaluation(EvalConfig(data=data, k=1, methods=("prag",), texts="passage", prag_epochs=1,
                                  max_new_tokens=3, latency_samples=0, libraries=str(cache), library="corpus",
                                  progress=False), llm=llm)
    held = sorted(json.loads((d / "eval-encoding.json").read_text())["documents"] for d in cache.iterdir())
    assert held == [4, 5]  # the second corpus did not overwrite the first one's library


def test_a_shared_bank_is_reused_only_for_the_documents_it_holds(llm, docs, tmp_path):
    """Poly-PRAG's bank depends on every document it learned: a whole-corpus library is not reused for a run that
    holds fewer documents (it would change that run's answers), and the two libraries are kept side by side."""
    data = _slice(tmp_path / "data", docs, ROWS)
    cache = tmp_path / "libs"
    cfg = EvalConfig(data=data, k=1, methods=("polyprag",), texts="passage", epochs=1, num_adapters=2,
                     max_new_tokens=3, latency_samples=0, libraries=str(cache), library="corpus", progress=False)
    run_evaluation(cfg, llm=llm)
    run_evaluation(EvalConfig(**{**cfg.__dict__, "library": "questions"}), llm=llm)
    held = sorted(json.loads((d / "eval-encoding.json").read_text())["documents"] for d in cache.iterdir())
    assert len(held) == 2 and held[-1] == len(docs) and held[0] < len(docs)
    stamps = {d.name: (d / "bank.safetensors").stat().st_mtime_ns for d in cache.iterdir()}
    run_evaluation(EvalConfig(**{**cfg.__dict__, "library": "questions"}), llm=llm)  # the same documents: reused
    assert {d.name: (d / "bank.safetensors").stat().st_mtime_ns for d in cache.iterdir()} == stamps
