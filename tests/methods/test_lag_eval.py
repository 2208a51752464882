"""LAG's methods in `polyprag eval` on the tiny model: the paper's rule, the pooled variants, the anchors, the controls."""
from __future__ import annotations

from slices import write_slice

from polyprag.evaluation import METHODS, EvalConfig, run_evaluation
from polyprag.evaluation.runner import questions_documents

LAG = ("lag", "lag_arrow", "lag_held", "lag_held_top3", "lag_uniform_top3", "lag_ensemble", "lag_recite",
       "lag_held_nodocs", "lag_held_shuffled")


def test_lag_variants_controls_and_costs(llm, docs, tmp_path):
    data = write_slice(tmp_path / "data", docs)
    cfg = EvalConfig(data=str(data), n=4, k=2, methods=LAG, texts="passage", prag_epochs=1, max_new_tokens=3,
                     recite_tokens=4, latency_samples=0, bootstrap=200, progress=False)
    report = run_evaluation(cfg, llm=llm)
    by = {r.method: r for r in report.results}
    assert list(by) == list(LAG)
    lag = report.facts["lag"]
    assert lag["routing_tokens"] >= 1000 and lag["bare_us_per_token"] > 0  # measured, not assumed
    assert lag["selection_ms_per_question"] > 0
    # a pooled variant's documents are its own pick, from the library, one (held) or three (top3) per question
    encoded = {d.id for d in docs}
    for name, n in (("lag_held", 1), ("lag_held_top3", 3), ("lag_ensemble", 3), ("lag_recite", 1)):
        assert all(len(p["documents"]) == n and set(p["documents"]) <= encoded for p in by[name].predictions), name
        assert by[name].recall_at_k is not None
    # the no-documents control never picks one of the questions' documents
    banned = set(questions_documents(report_questions(data, 4), docs))
    assert all(not set(p["documents"]) & banned for p in by["lag_held_nodocs"].predictions)
    assert lag["nodocs_adapters"] == report.facts["documents"] - len(banned & encoded)
    pairs = {(c.a, c.b) for c in report.comparisons}
    assert ("lag_held", "lag_held_nodocs") in pairs and ("lag_held", "lag_held_shuffled") in pairs


def report_questions(data, n):
    from dataclasses import replace

    from polyprag.evaluation.questions import evidence
    from polyprag.evaluation.runner import load_slice

    _, questions = load_slice(data, n)
    return [replace(q, gold=evidence(q)) for q in questions]


def test_every_lag_method_has_its_controls():
    for name, spec in METHODS.items():
        if spec.library == "lag" and spec.routing == "learned" and name != "lag_in_context":
            assert METHODS[name + "_nodocs"].routing == "nodocs" and METHODS[name + "_shuffled"].routing == "shuffled"
            assert spec.lag is not None
