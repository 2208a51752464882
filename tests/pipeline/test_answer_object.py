"""One answer object: what a face reports about the retrieved documents is what was applied, also when the
library is updated between the retrieval and the report."""
from __future__ import annotations

import pytest
import torch

from conftest import random_poly_library
from polyprag import Document, PolyPRAGEncoder

Q = "who built the krell lighthouse"


def _trained(llm, docs):
    return PolyPRAGEncoder(llm, num_adapters=3, epochs=1, augmenter="passage", progress=False).fit(docs)


def _update_between(monkeypatch, rag, library, doc_id, applied):
    """Replace ``doc_id``'s text while the question is being answered: after retrieval, before the answer."""
    original = rag.generate

    def generate(prepared, **kw):
        applied.extend(p.mixture for p in prepared)
        library.update_documents([Document(id=doc_id, text="the krell lighthouse is green", title="krell")],
                                 epochs=1)
        return original(prepared, **kw)

    monkeypatch.setattr(rag, "generate", generate)


def _changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape != b.shape or not torch.allclose(a, b)


def test_langchain_reports_the_routing_that_was_applied(llm, docs, monkeypatch, one_thread):
    from langchain_polyprag import PolyPRAGRetriever, PolyPRAGRunnable

    library = _trained(llm, docs)
    runnable = PolyPRAGRunnable(retriever=PolyPRAGRetriever(documents=docs, k=2), library=library,
                                mode="parametric", return_documents=True, max_tokens=3)
    rag = runnable.pipeline()
    top = runnable.retriever.invoke(Q)[0].id
    applied: list = []
    _update_between(monkeypatch, rag, library, top, applied)
    before = library.routing_weights([top]).clone()
    out = runnable.invoke(Q)
    assert _changed(library.routing_weights([top]), before)  # the update did change the routing row (and grew m)
    rows = torch.tensor([d.metadata["routing_weights"] for d in out["documents"]])
    assert torch.allclose(rows.mean(0), applied[0].weights[0, 0])  # "mean": the mixture is the rows' mean
    assert torch.allclose(rows[0], before[0])


def test_llamaindex_reports_the_routing_that_was_applied(llm, docs, monkeypatch, one_thread):
    from llamaindex_polyprag import PolyPRAGLLM, PolyPRAGQueryEngine

    library = _trained(llm, docs)
    engine = PolyPRAGQueryEngine.from_library(library, k=2, llm=PolyPRAGLLM(llm=llm, max_new_tokens=3),
                                              mode="recite_ensemble")
    rag = engine._rag
    prepared = rag.prepare(Q)
    top = prepared.retrieval.library_ids[0]
    before = library.routing_weights([top]).clone()
    library.update_documents([Document(id=top, text="the krell lighthouse is green", title="krell")], epochs=1)
    assert _changed(library.routing_weights([top]), before)
    assert torch.allclose(torch.tensor(prepared.routing_rows()[0]), before[0])  # the state the retrieval read
    nodes = engine._nodes(prepared)
    assert torch.allclose(torch.tensor(nodes[0].node.metadata["routing_weights"]), before[0])


def test_a_question_reads_its_routing_once_and_tokenises_its_prompt_once(llm, docs, monkeypatch, one_thread):
    """Walked from the runnable's invoke to the hooks: one read of the routing weights, one tokenisation."""
    from langchain_polyprag import PolyPRAGRetriever, PolyPRAGRunnable
    from polyprag.methods.polyprag.kind import PolyPRAGKind

    library = random_poly_library(llm, docs, m=3)
    runnable = PolyPRAGRunnable(retriever=PolyPRAGRetriever(documents=docs, k=2), library=library,
                                mode="parametric", return_documents=True, max_tokens=3)
    runnable.invoke(Q)  # warm: the matcher's index is built once per library state
    reads, tokenised = [], []
    weights = PolyPRAGKind.weights
    monkeypatch.setattr(PolyPRAGKind, "weights", lambda self, state, rows: reads.append(rows) or
                        weights(self, state, rows))
    tok = llm.tokenizer
    call = type(tok).__call__
    monkeypatch.setattr(type(tok), "__call__", lambda self, text, *a, **kw: tokenised.append(text) or
                        call(self, text, *a, **kw))
    out = runnable.invoke(Q)
    assert len(reads) == 1 and len(reads[0]) == 2  # the two retrieved documents' rows, read once
    prompt = llm.question_prompt(Q)
    assert tokenised.count(prompt) == 1  # the prompt, tokenised once (for generation)
    assert [d.metadata["routing_weights"] for d in out["documents"]] == library.routing_weights(
        [d.id for d in out["documents"]]).tolist()
