"""Evaluation controls: oracle, wrong-document, uniform and shuffled routing give the mixtures they claim;
the paired bootstrap against a hand-computed case."""
from __future__ import annotations

import pytest
import torch

from conftest import random_poly_library
from slices import QUESTIONS, write_slice

from polyprag import Question
from polyprag.evaluation import (EvalConfig, FixedRetriever, compare, paired_bootstrap, routing_control,
                                 run_evaluation)
from polyprag.evaluation.runner import choose_documents

pytestmark = pytest.mark.usefixtures("one_thread")  # generation-heavy: one torch thread


def test_bootstrap_hand_computed():
    # diffs [1, 0]: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4 -> 95% interval [0, 1]
    diff, low, high = paired_bootstrap([1, 0], [0, 0], samples=20_000, seed=1)
    assert (diff, low, high) == (0.5, 0.0, 1.0)
    # identical per-question differences: no spread at all
    assert paired_bootstrap([1, 1, 0], [0, 0, -1]) == (1.0, 1.0, 1.0)
    # 30 wins out of 30 questions vs 0: beyond noise; 15 wins 15 losses: the interval holds 0
    assert paired_bootstrap([1] * 30, [0] * 30)[1] > 0
    d, lo, hi = paired_bootstrap([1] * 15 + [0] * 15, [0] * 15 + [1] * 15)
    assert d == 0 and lo < 0 < hi
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])


def test_uniform_and_shuffled_routing(llm, docs):
    lib = random_poly_library(llm, docs, m=4)
    uni = routing_control(lib, "uniform")
    assert torch.allclose(uni.routing_weights(lib.doc_ids), torch.full((len(docs), 4), 0.25))
    shuf = routing_control(lib, "shuffled", seed=3)
    w, ws = lib.routing_weights(lib.doc_ids), shuf.routing_weights(lib.doc_ids)
    # every document gets another document's row: the same rows, none in its own place
    assert all(not torch.allclose(ws[i], w[i]) for i in range(len(docs)))
    assert sorted(map(tuple, ws.tolist())) == sorted(map(tuple, w.tolist()))
    assert shuf.bank is lib.bank and torch.equal(routing_control(lib, "shuffled", seed=3).routing_logits,
                                                 shuf.routing_logits)


def test_oracle_and_wrong_documents():
    qs = [Question(id="q0", question="a?", answers=["x"], gold=["g0", "g1"]),
          Question(id="q1", question="b?", answers=["y"], gold=["g2", "missing"])]
    encoded = ["g0", "g1", "g2", "r0", "r1", "r2", "w0", "w1"]
    retrieved = [["r0", "g0", "r1"], ["r2", "r0", "r1"]]
    src = choose_documents(qs, retrieved, encoded, gold_only=False, seed=0)
    assert src["gold"] == [["g0", "g1"], ["g2"]]  # gold ids outside the corpus are dropped
    for ids, wrong, gold in zip(retrieved, src["wrong"], src["gold"]):
        assert len(wrong) == len(ids) and not set(wrong) & (set(ids) | set(gold))
    only_gold = choose_documents(qs, retrieved, encoded, gold_only=True, seed=0)
    assert [len(w) for w in only_gold["wrong"]] == [2, 1]  # as many as the oracle uses
    r = FixedRetriever([], {})
    assert r.retrieve("unknown question") == []


def test_eval_controls_apply_the_mixtures_they_claim(llm, docs, tmp_path):
    """The oracle method mixes the gold documents, the wrong-documents control others, and the learned,
    shuffled and uniform routing rows differ; the report carries injection efficiency and intervals."""
    data = write_slice(tmp_path / "data", docs)
    methods = ("closed_book", "in_context", "in_context_oracle", "polyprag", "polyprag_oracle",
               "polyprag_oracle_shuffled", "polyprag_oracle_uniform", "polyprag_wrong", "prag_oracle")
    cfg = EvalConfig(data=str(data), n=6, k=2, methods=methods, num_adapters=3, epochs=1, prag_epochs=1,
                     texts="passage", max_new_tokens=3, latency_samples=0, bootstrap=200, progress=False)
    report = run_evaluation(cfg, llm=llm)
    by = {r.method: r for r in report.results}
    for i, (q, _, gold) in enumerate(QUESTIONS[:6]):
        assert by["polyprag_oracle"].predictions[i]["documents"] == gold
        assert by["in_context_oracle"].predictions[i]["documents"] == gold
        wrong = by["polyprag_wrong"].predictions[i]["documents"]
        assert not set(wrong) & (set(gold) | set(by["polyprag"].predictions[i]["documents"]))
    assert report.facts["encoded_from"] == "bm25 top-2 ∪ gold passages"
    assert report.comparison("polyprag_oracle", "polyprag_oracle_shuffled") is not None
    assert report.comparison("polyprag", "polyprag_wrong") is not None
    c = report.comparison("polyprag_oracle", "closed_book")
    assert c.low <= c.diff <= c.high
    eff = report.injection_efficiency("prag_oracle")
    assert eff is None or eff == pytest.approx(by["prag_oracle"].accuracy / by["in_context_oracle"].accuracy)
    table = report.markdown()
    assert "Δacc vs closed_book" in table and "polyprag_oracle − polyprag_oracle_shuffled" in table


def test_compare_pairs_each_method_with_its_controls():
    from polyprag.evaluation import MethodResult

    def res(name, accs):
        return MethodResult(name, 0, 0, 0, None, predictions=[{"accuracy": a, "f1": a} for a in accs])

    rs = [res("closed_book", [0, 0]), res("prag_oracle", [1, 1]), res("prag_wrong", [0, 1])]
    pairs = {(c.a, c.b) for c in compare(rs, samples=100)}
    assert pairs == {("prag_oracle", "closed_book"), ("prag_wrong", "closed_book"), ("prag_oracle", "prag_wrong")}
