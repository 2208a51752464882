"""The bm25s backend scores and ranks exactly as rank-bm25's BM25Okapi, negative-idf floor included."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyprag import BM25Retriever, Document, InvalidInputError, load_corpus, load_questions
from polyprag.retrieval.base import top_k

SHARED = Path("/work/shared/data")
WORDS = "quellport zorvania krell lighthouse velt marisol vase purple island river king".split()


def _ranking(retriever, query, k=10):
    return [(h.document.id, round(h.score, 9)) for h in retriever.retrieve(query, k)]


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared QA corpora")
@pytest.mark.parametrize("name", ["popqa", "hotpotqa", "2wikimultihopqa"])
def test_identical_rankings_on_the_shared_corpora(name):
    docs = load_corpus(SHARED / name / "corpus.jsonl")
    questions = load_questions(SHARED / name / "questions.jsonl")[:150]
    slow, fast = BM25Retriever(docs, backend="rank_bm25"), BM25Retriever(docs, backend="bm25s")
    for q in questions:
        np.testing.assert_allclose(fast.score_array(q.question), slow.score_array(q.question), atol=1e-9)
        assert _ranking(fast, q.question) == _ranking(slow, q.question), q.question


def test_terms_in_most_documents_get_rank_bm25s_epsilon_floor_not_zero():
    # "island" is in 4 of 5 documents: its Okapi idf is negative and floored at ε·mean idf > 0,
    # so the document with more "island" wins; bm25s's own robertson idf would clip it to 0 (a tie).
    texts = ["island island island velt", "island king", "island river", "island vase", "marisol"]
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(texts)]
    slow, fast = BM25Retriever(docs, backend="rank_bm25"), BM25Retriever(docs, backend="bm25s")
    assert fast.score_array("island")[0] > fast.score_array("island")[1] > 0
    np.testing.assert_allclose(fast.score_array("island"), slow.score_array("island"), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS + ["the"]), min_size=1, max_size=8), min_size=1, max_size=12),
       st.lists(st.sampled_from(WORDS + ["unknownword"]), min_size=1, max_size=5))
def test_same_scores_on_random_corpora(texts, query):
    docs = [Document(id=str(i), text=" ".join(t)) for i, t in enumerate(texts)]
    q = " ".join(query)
    slow, fast = BM25Retriever(docs, backend="rank_bm25"), BM25Retriever(docs, backend="bm25s")
    np.testing.assert_allclose(fast.score_array(q), slow.score_array(q), atol=1e-9)
    k = min(5, len(docs))  # a k beyond the corpus is refused
    assert [h.document.id for h in fast.retrieve(q, k)] == [h.document.id for h in slow.retrieve(q, k)]


def test_top_k_breaks_ties_by_corpus_order():
    scores = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 0.0])
    assert top_k(scores, 3) == [1, 3, 2]
    assert top_k(scores, 10) == [1, 3, 2, 4, 0, 5]
    assert top_k(np.zeros(4), 2) == [0, 1]


def test_queries_with_only_stop_words_or_unknown_words_score_zero():
    docs = [Document(id="a", text="the krell lighthouse"), Document(id="b", text="marisol vase"),
            Document(id="c", text="velt river")]
    fast = BM25Retriever(docs, backend="bm25s")
    assert fast.scores("the of and") == [0.0, 0.0, 0.0]
    assert fast.scores("zzz qqq") == [0.0, 0.0, 0.0]
    assert [h.document.id for h in fast.retrieve("vase zzz")] == ["b", "a", "c"]


def test_unknown_backend_is_refused():
    with pytest.raises(InvalidInputError, match="bm25s"):
        BM25Retriever([Document(id="a", text="x")], backend="elastic")


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared QA corpora")
def test_bench_command_runs_the_bm25_benchmark(tmp_path):
    import argparse
    import json

    from polyprag.cli import cmd_bench

    out = tmp_path / "bm25.json"
    args = argparse.Namespace(suite="bm25", passthrough=["--sizes", "300", "--queries", "5", "--out", str(out)])
    assert cmd_bench(args) == 0
    row = json.loads(out.read_text())["sizes"][0]
    assert row["documents"] == 300 and row["same_top_k"] == 5 and row["ratio"] > 0
