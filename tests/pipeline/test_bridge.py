"""The bridge the faces share (polyprag.pipeline.bridge), driven with plain callables: a framework retriever's items
come back with the answer they were retrieved for, and an answer's sources report the routing it was prepared with."""
from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import random_poly_library
from polyprag import (BM25Retriever, Document, FrameworkRetriever, InvalidInputError, PolyPRAGEncoder, ScoredDocument,
                      Source, SourcedDocument, answer_sources, face_pipeline)
from polyprag.library.state import LibraryState

QUESTION = "who built the krell lighthouse"


@pytest.fixture
def library(llm, docs):
    return random_poly_library(llm, docs, m=3)


class Hit:
    """A framework's own retrieved item: not a polyprag type, tagged with the query that found it."""

    def __init__(self, doc: Document, score: float | None, query: str):
        self.doc, self.score, self.query = doc, score, query


def search_over(docs, ids=("d1", "d4")):
    by_id = {d.id: d for d in docs}
    return lambda query: [Hit(by_id[i], 2.0 - r, query) for r, i in enumerate(ids)]


def convert(hit: Hit, position: int) -> ScoredDocument | Document:
    return hit.doc if hit.score is None else ScoredDocument(hit.doc, hit.score)


def test_framework_items_come_back_as_the_sources_of_the_answer(library, docs):
    search = search_over(docs)
    rag = face_pipeline(library.llm, FrameworkRetriever(search, convert), library, mode="parametric")
    prepared = rag.prepare(QUESTION)
    sources = answer_sources(prepared)
    assert [s.document.document.id for s in sources] == ["d1", "d4"]
    assert all(isinstance(s.original, Hit) and s.original.query == QUESTION for s in sources)
    assert [s.original.doc.id for s in sources] == ["d1", "d4"]
    assert [s.document.score for s in sources] == [2.0, 1.0]
    assert [s.routing_weights for s in sources] == library.routing_weights(["d1", "d4"]).tolist()
    answer = rag.generate([prepared], max_new_tokens=2)[0]
    assert [d.original for d in answer.documents] == [s.original for s in sources]  # the answer carries them too


def test_an_item_without_a_score_is_ranked_and_a_bad_conversion_is_refused(library, docs):
    unscored = FrameworkRetriever(lambda q: [Hit(docs[1], None, q), Hit(docs[4], None, q)], convert)
    found = unscored(QUESTION)
    assert [s.score for s in found] == [1.0, 0.5]  # reciprocal rank
    assert all(isinstance(s, SourcedDocument) for s in found)
    assert [s.document for s in found] == [docs[1], docs[4]] and found[1].original.doc is docs[4]
    bad = FrameworkRetriever(lambda q: ["d1"], lambda item, i: item)
    with pytest.raises(InvalidInputError, match="Retrieved item 0 is a str"):
        face_pipeline(library.llm, bad, library).prepare(QUESTION)


def test_polyprag_retrievers_have_no_originals_and_passage_modes_no_routing(library, docs):
    own = answer_sources(face_pipeline(library.llm, BM25Retriever(docs, k=2), library).prepare(QUESTION))
    assert [s.original for s in own] == [None, None]
    assert [s.routing_weights for s in own] == library.routing_weights([s.document.document.id for s in own]).tolist()
    in_context = face_pipeline(library.llm, FrameworkRetriever(search_over(docs), convert), library,
                               mode="in_context").prepare(QUESTION)
    assert [(s.original.doc.id, s.routing_weights) for s in answer_sources(in_context)] == [("d1", None),
                                                                                           ("d4", None)]
    assert answer_sources(face_pipeline(library.llm, None, mode="closed_book").prepare(QUESTION)) == []


def test_concurrent_questions_each_get_their_own_originals(library, docs):
    """Eight questions prepared at once, all inside the user's retriever together, all retrieving the same ids:
    each answer's originals are the items found for its own question (no originals shared by id)."""
    questions = [f"{QUESTION} {w}" for w in ("red", "blue", "green", "purple", "quellport", "velt", "vase", "moon")]
    together = threading.Barrier(len(questions), timeout=60)
    inner = search_over(docs)

    def search(query):
        together.wait()  # every question is in its retrieval before any returns
        return inner(query)

    rag = face_pipeline(library.llm, FrameworkRetriever(search, convert), library, mode="parametric", k=2)
    with ThreadPoolExecutor(len(questions)) as pool:
        prepared = list(pool.map(rag.prepare, questions))
    for q, p in zip(questions, prepared):
        sources = answer_sources(p)
        assert p.question == q and [s.original.query for s in sources] == [q, q]
        assert [s.original.doc.id for s in sources] == ["d1", "d4"]


def test_sources_report_the_prepared_routing_without_reading_the_library_again(library, docs, monkeypatch):
    rag = face_pipeline(library.llm, FrameworkRetriever(search_over(docs), convert), library, mode="parametric")
    prepared = rag.prepare(QUESTION)

    def read(*args, **kwargs):
        raise AssertionError("the sources recomputed routing weights")

    monkeypatch.setattr(LibraryState, "routing_weights", read)
    monkeypatch.setattr(type(library), "routing_weights", read)
    rows = [s.routing_weights for s in answer_sources(prepared)]
    assert rows == prepared.routing_rows()
    assert torch.allclose(torch.tensor(rows).mean(0), prepared.mixture.weights[0, 0])  # "mean": the rows' mean


def test_sources_report_the_prepared_routing_across_a_live_update(llm, docs, one_thread):
    library = PolyPRAGEncoder(llm, num_adapters=3, epochs=1, augmenter="passage", progress=False).fit(docs)
    rag = face_pipeline(llm, FrameworkRetriever(search_over(docs), convert), library, mode="parametric")
    prepared = rag.prepare(QUESTION)
    before = library.routing_weights(["d1", "d4"]).clone()
    library.update_documents([Document(id="d1", text="the krell lighthouse is green", title="krell")], epochs=1)
    now = library.routing_weights(["d1", "d4"])
    assert now.shape != before.shape or not torch.allclose(now, before)  # the update changed the routing
    sources = answer_sources(prepared)
    assert all(isinstance(s, Source) and s.original.query == QUESTION for s in sources)
    assert torch.allclose(torch.tensor([s.routing_weights for s in sources]), before)


def test_the_bridge_imports_no_framework():
    code = ("import sys, polyprag.pipeline.bridge\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'llama_index')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
