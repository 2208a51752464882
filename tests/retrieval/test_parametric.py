"""Bring your own retriever: any retriever drives the parametric pipeline; unknown documents follow on_unknown."""
from __future__ import annotations

import pytest
import torch

from conftest import random_poly_library
from polyprag import (BM25Retriever, Document, InvalidInputError, ParametricRetriever, PolyPRAG, ScoredDocument,
                      UnknownDocumentError, passage_id)

QUESTION = "who built the krell lighthouse"
STRANGER = Document(id="x9", text="the moon lake is green", title="moon")


@pytest.fixture
def library(llm, docs):
    return random_poly_library(llm, docs, m=3)


def answer_with(library, retriever, mode="parametric", **kw):
    return PolyPRAG(library.llm, ParametricRetriever(retriever, library, **kw), mode=mode,
                    max_new_tokens=6).answer(QUESTION)


def fixed(*documents):
    """A plain callable retriever that returns these documents whatever the query."""
    return lambda query: list(documents)


def test_any_retriever_shape_gives_the_mixture_of_the_same_documents_by_id(library, docs):
    expected = library.mixture(["d1", "d4"])
    bm25 = ParametricRetriever(BM25Retriever(docs, k=2), library).retrieve(QUESTION)
    assert bm25.doc_ids == ["d1", "d4"] and torch.equal(bm25.mixture.weights, expected.weights)

    class Duck:  # the eval runner's kind: .retrieve(query, k=None) -> ScoredDocuments
        def retrieve(self, query, k=None):
            return [ScoredDocument(docs[1], 2.0), ScoredDocument(docs[4], 1.0)][:k]

    shapes = [Duck(), fixed(docs[1], docs[4]), fixed((docs[1], 0.9), (docs[4], 0.1)),
              fixed(ScoredDocument(docs[1], 3.0), ScoredDocument(docs[4], 2.0))]
    reference = answer_with(library, BM25Retriever(docs, k=2)).text
    for retriever in shapes:
        found = ParametricRetriever(retriever, library).retrieve(QUESTION)
        assert found.doc_ids == ["d1", "d4"] and torch.equal(found.mixture.weights, expected.weights)
        assert answer_with(library, retriever).text == reference


def test_documents_are_matched_by_content_when_the_retriever_has_other_ids(library, docs):
    krell, tamsin = docs[1], docs[4]
    copies = [Document(id="uuid-1", text=krell.text, title=krell.title),        # same title and text
              Document(id="uuid-2", text=tamsin.text),                           # its title dropped
              Document(id="uuid-3", text=docs[0].full_text),                     # title inside the text
              Document(id="uuid-4", text="other", metadata={"id": "d3"}),        # metadata id
              Document(id="uuid-5", text="chunk", metadata={"ref_doc_id": "d2"})]  # a parsed node's source
    found = ParametricRetriever(fixed(*copies), library).retrieve(QUESTION)
    assert found.library_ids == ["d1", "d4", "d0", "d3", "d2"]
    assert found.doc_ids == [f"uuid-{i}" for i in range(1, 6)]  # the retriever's own documents come back
    assert torch.equal(found.mixture.weights, library.mixture(["d1", "d4", "d0", "d3", "d2"]).weights)
    assert found.routing_rows()[1] == library.routing_weights(["d4"])[0].tolist()
    assert passage_id(krell.title, krell.text) == Document.from_text(krell.text, krell.title).id


def test_unknown_documents_are_refused_by_default_with_their_names(library, docs):
    with pytest.raises(UnknownDocumentError, match=r"'x9' \(moon\).*add_documents.*on_unknown='in_context'"):
        ParametricRetriever(fixed(docs[1], STRANGER), library).retrieve(QUESTION)
    with pytest.raises(InvalidInputError, match="on_unknown must be one of"):
        ParametricRetriever(fixed(docs[1]), library, on_unknown="ignore")


def test_unknown_documents_in_context_go_into_the_prompt_even_in_parametric_mode(library, docs):
    answer = answer_with(library, fixed(docs[1], STRANGER), on_unknown="in_context")
    assert [s.document.id for s in answer.documents] == ["d1", "x9"]
    assert "the moon lake is green" in answer.prompt and docs[1].text not in answer.prompt  # only the unknown one
    assert torch.equal(answer.mixture.weights, library.mixture(["d1"]).weights)
    combine = answer_with(library, fixed(docs[1], STRANGER), mode="combine", on_unknown="in_context")
    assert docs[1].text in combine.prompt and "moon lake" in combine.prompt
    alone = answer_with(library, fixed(STRANGER), on_unknown="in_context")
    assert alone.mixture is None and "moon lake" in alone.prompt  # nothing known: passages only


def test_unknown_documents_skipped_are_left_out(library, docs):
    found = ParametricRetriever(fixed(STRANGER, docs[1]), library, on_unknown="skip").retrieve(QUESTION)
    assert found.doc_ids == ["d1"] and [s.document.id for s in found.skipped] == ["x9"]
    answer = answer_with(library, fixed(STRANGER, docs[1]), on_unknown="skip")
    assert answer.text == answer_with(library, fixed(docs[1])).text and "moon" not in answer.prompt


def test_a_fixed_corpus_is_checked_up_front_only_when_unknown_documents_are_errors(library, docs):
    with pytest.raises(InvalidInputError, match="not encoded in the library.*on_unknown"):
        ParametricRetriever(BM25Retriever(docs + [STRANGER]), library)
    retriever = ParametricRetriever(BM25Retriever(docs + [STRANGER], k=1), library, on_unknown="in_context")
    assert retriever.retrieve("moon lake green").library_ids == [None]


def test_a_document_added_to_the_library_is_found_afterwards(llm, docs):
    from polyprag import PolyPRAGEncoder

    library = PolyPRAGEncoder(llm, num_adapters=2, augmenter="passage", epochs=1, progress=False).fit(docs)
    retriever = ParametricRetriever(fixed(STRANGER), library, on_unknown="in_context")
    assert retriever.retrieve(QUESTION).library_ids == [None]
    library.add_documents([STRANGER], progress=False)
    assert retriever.retrieve(QUESTION).library_ids == ["x9"]


def test_things_that_are_not_retrievers_are_refused_with_advice(library, docs):
    from langchain_core.retrievers import BaseRetriever

    class LangChainOne(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return []

    with pytest.raises(InvalidInputError, match="langchain_polyprag.PolyPRAGRunnable"):
        ParametricRetriever(LangChainOne(), library)
    with pytest.raises(InvalidInputError, match="must have .retrieve"):
        ParametricRetriever(42, library)
    with pytest.raises(InvalidInputError, match="Retrieved item 0 is a str"):
        ParametricRetriever(fixed("d1"), library).retrieve(QUESTION)
    with pytest.raises(InvalidInputError, match="needs a ParametricRetriever"):
        PolyPRAG(library.llm, fixed(docs[1]), mode="parametric")


def test_in_context_mode_takes_any_retriever_without_a_library(llm, docs):
    answer = PolyPRAG(llm, fixed(docs[2]), mode="in_context", max_new_tokens=4).answer(QUESTION)
    assert docs[2].text in answer.prompt and answer.mixture is None


@pytest.mark.parametrize("kind", ["bm25", "hybrid"])
@pytest.mark.parametrize("mode", ["parametric", "in_context"])
def test_a_question_checks_its_query_once(library, docs, monkeypatch, kind, mode):
    """From PolyPRAG.answer through ParametricRetriever to BM25 (or BM25 + dense fused), the query is checked
    once: each retriever below the pipeline is asked through its checked entry."""
    import sys

    from fakes import word_embed
    from polyprag import build_retriever
    from polyprag.retrieval import base

    calls, check = [], base.check_query

    def spy(query):
        calls.append(query)
        return check(query)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("polyprag") and getattr(module, "check_query", None) is check:
            monkeypatch.setattr(module, "check_query", spy)
    retriever = ParametricRetriever(build_retriever(kind, docs, k=2, embed=word_embed), library)
    answer = PolyPRAG(library.llm, retriever, mode=mode, max_new_tokens=3).answer(QUESTION)
    assert answer.documents[0].document.id == "d1"
    assert calls == [QUESTION]
