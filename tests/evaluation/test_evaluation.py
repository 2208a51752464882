"""Evaluation: the metrics against hand-computed cases, and an end-to-end run on a 10-question slice."""
from __future__ import annotations

import json

import pytest

from polyprag import InvalidInputError
from polyprag.evaluation import (EvalConfig, accuracy, exact_match, f1_score, normalize_answer, recall_at_k,
                                 run_evaluation)
from polyprag.evaluation.runner import encode_processes
from slices import QUESTIONS, write_slice

pytestmark = pytest.mark.usefixtures("one_thread")  # generation-heavy: one torch thread


def test_normalize_answer_as_squad():
    assert normalize_answer("  The  Eiffel-Tower!  ") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"


def test_exact_match_max_over_aliases():
    assert exact_match("The Politician.", ["journalist", "politician"]) == 1.0
    assert exact_match("a politician by trade", ["politician"]) == 0.0
    assert exact_match("", ["politician"]) == 0.0


def test_f1_hand_computed():
    # prediction "barack obama jr" vs gold "barack obama": common 2, P = 2/3, R = 1 -> F1 = 0.8
    assert f1_score("Barack Obama Jr.", ["Barack Obama"]) == pytest.approx(0.8)
    # max over aliases: "new york city" vs ["york", "new york city"] -> 1.0
    assert f1_score("New York City", ["York", "the New York City"]) == pytest.approx(1.0)
    # repeated tokens count as a multiset: pred "the cat cat" -> [cat, cat], gold [cat] -> P 1/2, R 1 -> 2/3
    assert f1_score("the cat cat", ["cat"]) == pytest.approx(2 / 3)
    assert f1_score("dog", ["cat"]) == 0.0
    # PRAG: a yes/no mismatch scores 0 even with overlap
    assert f1_score("yes", ["no"]) == 0.0 and f1_score("no", ["no"]) == 1.0


def test_accuracy_is_alias_containment_on_word_boundaries():
    assert accuracy("He was an Australian politician.", ["political figure", "politician"]) == 1.0
    assert accuracy("a politicians' club", ["politician"]) == 0.0  # no partial words
    assert accuracy("anything", [""]) == 0.0


def test_recall_at_k():
    assert recall_at_k(["a", "b", "c"], ["b", "z"]) == 0.5
    assert recall_at_k(["a"], []) is None


def test_config_refuses_unknown_method(tmp_path):
    with pytest.raises(InvalidInputError, match="Unknown method"):
        EvalConfig(data=str(tmp_path), methods=("closed_book", "rag_fusion"))
    with pytest.raises(InvalidInputError, match="compute_dtype"):
        EvalConfig(data=str(tmp_path), compute_dtype="int8")
    with pytest.raises(InvalidInputError, match="recipe"):
        EvalConfig(data=str(tmp_path), recipe="fast")
    with pytest.raises(InvalidInputError, match="training text"):
        EvalConfig(data=str(tmp_path), texts="passage,summary")


def test_missing_data_folder_is_refused(tmp_path, llm):
    with pytest.raises(InvalidInputError, match="corpus.jsonl"):
        run_evaluation(EvalConfig(data=str(tmp_path), progress=False), llm=llm)


def test_end_to_end_on_tiny_slice(llm, docs, tmp_path):
    data = write_slice(tmp_path / "data", docs)
    cfg = EvalConfig(data=str(data), n=10, k=2, num_adapters=3, epochs=1, prag_epochs=1, texts="passage,rewrite,qa",
                     cache=str(tmp_path / "cache"), answer_batch_size=4, max_new_tokens=4, latency_samples=2,
                     out=str(tmp_path / "out"), progress=False)
    report = run_evaluation(cfg, llm=llm)
    by = {r.method: r for r in report.results}
    assert list(by) == list(cfg.methods) + ["best_reading"]  # the strongest reading baseline, added
    reads = [by[m] for m in ("in_context", "in_context_top1", "in_context_ensemble")]
    assert by["best_reading"].accuracy == max(r.accuracy for r in reads)
    assert by["best_reading"].reading in {r.method for r in reads if r.accuracy == by["best_reading"].accuracy}
    assert report.comparison("prag_recite_ensemble", "best_reading") is not None
    for r in report.results:
        assert 0 <= r.em <= r.f1 <= 100 and 0 <= r.accuracy <= 100
        assert len(r.predictions) == 10 and (r.method == "prior" or r.latency_p50_s > 0)  # prior: no model
    assert by["closed_book"].recall_at_k is None and 0 < by["in_context"].recall_at_k <= 100
    # PRAG stores a whole adapter per document; Poly-PRAG's new document costs only its routing row
    assert by["prag"].storage_bytes_new_doc > by["polyprag"].storage_bytes_new_doc > 0
    assert by["prag"].encode_s_per_doc > 0 and by["closed_book"].encode_s_per_doc is None
    assert report.facts["augment"]["generated"] == report.facts["documents"] <= 5
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["method"] for r in saved["results"]] == list(cfg.methods) + ["best_reading"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| polyprag_combine |" in table and "cache hits" in table
    assert (tmp_path / "out" / "libraries" / "poly" / "config.json").is_file()
    # seeded: the same run answers the same, and the second run reads every augmentation from the cache
    again = run_evaluation(EvalConfig(**{**cfg.__dict__, "out": None}), llm=llm)
    assert again.facts["augment"]["cache_hits"] == report.facts["documents"]
    assert again.facts["augment"]["generated"] == 0
    assert [p["prediction"] for r in again.results for p in r.predictions] == \
        [p["prediction"] for r in report.results for p in r.predictions]


def test_lag_methods_need_polyprag_lag(llm, docs, tmp_path):
    data = write_slice(tmp_path / "data", docs)
    cfg = EvalConfig(data=str(data), n=4, k=2, methods=("lag", "lag_in_context"), texts="passage", prag_epochs=1,
                     max_new_tokens=3, latency_samples=1, progress=False)
    try:
        import polyprag.methods.lag  # noqa: F401
    except ImportError:
        with pytest.raises(Exception, match="polyprag.methods.lag"):
            run_evaluation(cfg, llm=llm)
        return
    report = run_evaluation(cfg, llm=llm)
    assert [r.method for r in report.results] == ["lag", "lag_in_context"]
    assert report.results[0].storage_bytes_per_doc > 0
    lag = report.facts["lag"]  # LAG's own costs: its factor library and the per-token routing overhead
    assert lag["adapters"] == report.facts["documents"] and lag["library_bytes"] > 0
    assert lag["routing_tokens"] >= 1000 and "routing overhead" in report.markdown()  # measured over 1,000+ tokens


def test_polyprag_sum_combines_the_documents_deltas(llm, docs, tmp_path):
    """polyprag answers with the mean of the top-k routing vectors, polyprag_sum with the sum of the k
    documents' deltas, both from the one library the run encodes."""
    from polyprag import AdapterLibrary, BM25Retriever, ParametricRetriever, PolyPRAG

    data = write_slice(tmp_path / "data", docs)
    cfg = EvalConfig(data=str(data), n=4, k=2, methods=("polyprag", "polyprag_sum"), num_adapters=3, epochs=1,
                     texts="passage", prag_epochs=1, max_new_tokens=4, latency_samples=0, out=str(tmp_path / "out"),
                     progress=False)
    report = run_evaluation(cfg, llm=llm)
    library = AdapterLibrary.load(tmp_path / "out" / "libraries" / "poly", llm)
    questions = [q for q, _, _ in QUESTIONS[:4]]
    applied = {}
    for result, combine in zip(report.results, ("mean", "sum")):
        rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=2), library, rule=combine),
                       mode="parametric", max_new_tokens=4)
        answers = rag.answer_batch(questions)
        assert [p["prediction"] for p in result.predictions] == [a.text for a in answers]
        applied[combine] = answers
    # the two rules mix the same two retrieved documents into different adapters: sum is not mean again
    for question, mean, summed in zip(questions, applied["mean"], applied["sum"]):
        assert [d.document.id for d in mean.documents] == [d.document.id for d in summed.documents]
        assert len(mean.documents) == 2
        ids = llm.encode([llm.question_prompt(question)])["input_ids"]
        logits = [llm.logits(ids, mixture=a.mixture)[0, -1] for a in (mean, summed)]
        assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_libraries_trained_side_by_side_are_the_ones_trained_in_turn(docs, tmp_path):
    """Two worker processes (one per library) train exactly the libraries one process trains in turn."""
    from tiny import tiny_model, tiny_tokenizer

    model = tmp_path / "model"
    tiny_model().save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    data = write_slice(tmp_path / "data", docs)
    runs = {}
    for workers in (1, 2):
        cfg = EvalConfig(data=str(data), n=6, k=2, model=str(model), methods=("prag", "polyprag", "prag_wrong"),
                         num_adapters=3, epochs=2, prag_epochs=2, texts="passage", max_new_tokens=4,
                         latency_samples=0, workers=workers, out=str(tmp_path / f"out{workers}"), progress=False)
        assert encode_processes(cfg, 2) == workers
        runs[workers] = run_evaluation(cfg)
        assert (tmp_path / f"out{workers}" / "libraries" / "prag" / "config.json").is_file()
    one, two = ([p["prediction"] for r in runs[w].results for p in r.predictions] for w in (1, 2))
    assert one == two
    for kind in ("prag", "poly"):
        a = (tmp_path / "out1" / "libraries" / kind / "bank.safetensors").read_bytes()
        b = (tmp_path / "out2" / "libraries" / kind / "bank.safetensors").read_bytes()
        assert a == b, f"{kind}: the bank trained in a worker differs from the one trained here"
    assert runs[2].facts["train_s"]["prag"] > 0


def test_how_many_processes_train_the_libraries(llm):
    cfg = EvalConfig(data="unused", workers=0)
    assert encode_processes(cfg, 1) == 1  # one library: nothing to run beside it
    assert encode_processes(cfg, 2, llm_given=True) == 1  # a model object cannot be reloaded by name
    assert encode_processes(cfg, 2, device="cuda") == 1
    assert 1 <= encode_processes(cfg, 3) <= 3
    assert encode_processes(EvalConfig(data="unused", workers=8), 2) == 2
    with pytest.raises(InvalidInputError, match="workers"):
        EvalConfig(data="unused", workers=-1)
