"""Updating a library: delete, replace and re-fit documents on Poly-PRAG and PRAG libraries, and what
retrieval, mixtures and saved folders show afterwards."""
from __future__ import annotations

import pytest
import torch

from polyprag import (AdapterLibrary, BankMixture, BM25Retriever, Document, DuplicateDocumentError,
                      InvalidInputError, ParametricRetriever, PolyPRAG, PolyPRAGEncoder, PRAGEncoder,
                      UnknownDocumentError)
from polyprag.methods.polyprag.routing import init_routing_logits

pytestmark = pytest.mark.usefixtures("one_thread")  # generation-heavy: one torch thread

QUESTION = "the capital of zorvania"


def _poly(llm, docs, **kw):
    opts = dict(num_adapters=3, rank=2, augmenter="passage", epochs=2, progress=False, seed=0)
    opts.update(kw)
    return PolyPRAGEncoder(llm, **opts).fit(docs)


def _prag(llm, docs):
    return PRAGEncoder(llm, augmenter="passage", epochs=1, progress=False).fit(docs)


def _logits(llm, library, ids, combine=None):
    return llm.logits(**llm.encode([QUESTION]), mixture=library.mixture(ids, combine))


def _tensors(library):
    return {k: v.clone() for k, v in library.bank.tensors().items()}


@pytest.mark.parametrize("make", [_poly, _prag], ids=["poly", "prag"])
def test_delete_refuses_the_ids_and_keeps_every_other_mixture(make, llm, docs, tmp_path):
    lib = make(llm, docs)
    keep = ["d0", "d2", "d3", "d4"]
    before = {c: _logits(llm, lib, ["d0", "d3"], c) for c in ("mean", "sum")}
    lib.delete_documents(["d1"])
    assert lib.doc_ids == keep and "d1" not in lib and lib.version == 1
    assert lib.bank.m == (3 if lib.kind == "poly" else 4)  # PRAG: the document's own adapter is gone
    for call in (lambda: lib.mixture(["d1"]), lambda: lib.routing_weights(["d0", "d1"]),
                 lambda: lib.document("d1")):
        with pytest.raises(UnknownDocumentError, match="'d1' was deleted"):
            call()
    for c in ("mean", "sum"):
        assert torch.equal(_logits(llm, lib, ["d0", "d3"], c), before[c])
    lib.save(tmp_path / "lib")
    again = AdapterLibrary.load(tmp_path / "lib", llm)
    assert again.doc_ids == keep and again.config.deleted_ids == ["d1"]
    with pytest.raises(UnknownDocumentError, match="'d1' was deleted"):
        again.mixture(["d1"])
    assert torch.equal(_logits(llm, again, ["d0", "d3"]), _logits(llm, lib, ["d0", "d3"]))
    with pytest.raises(UnknownDocumentError, match="'nope' is not in this library"):
        lib.delete_documents(["nope"])
    with pytest.raises(InvalidInputError, match="would delete or replace all 4 documents"):
        lib.delete_documents(keep)
    assert len(lib) == 4 and lib.version == 1  # a refused update changes nothing


@pytest.mark.parametrize("on_unknown", ["error", "in_context", "skip"])
def test_a_deleted_document_is_never_retrieved_again(on_unknown, llm, docs):
    """The retriever still indexes the deleted document (by id, or a copy of its text without the id); the
    parametric retriever leaves it out under every policy: not mixed, not put in the prompt."""
    lib = _poly(llm, docs)
    copy = Document(id="elsewhere-7", text=docs[1].text, title=docs[1].title)  # same text, another id
    lib.delete_documents(["d1"])
    for corpus in (docs, [d for d in docs if d.id != "d1"] + [copy]):
        retriever = ParametricRetriever(BM25Retriever(corpus, k=2), lib, on_unknown=on_unknown)
        found = retriever.retrieve("who built the krell lighthouse")
        assert found.encoded_ids and "d1" not in found.encoded_ids
        assert [s.document.text for s in found.skipped] == [docs[1].text]
        assert docs[1].text not in [s.document.text for s in found.documents]
        rag = PolyPRAG(llm, retriever, mode="parametric", max_new_tokens=2)
        assert "farrant" not in rag.prepare("who built the krell lighthouse").prompt


def test_grown_adapters_go_with_the_documents_that_alone_used_them(llm, docs):
    """Add with a grown bank, then delete the added documents: the bank is the original one again."""
    lib = _poly(llm, docs[:3])
    bank = _tensors(lib)
    routing = lib.routing_logits.clone()
    lib.add_documents(docs[3:], new_adapters=2, progress=False)
    assert lib.bank.m == 5
    lib.delete_documents(["d3", "d4"])
    assert lib.bank.m == 3 and lib.last_update["dropped_adapters"] == 2
    assert all(torch.equal(v, bank[k]) for k, v in lib.bank.tensors().items())
    assert torch.equal(lib.routing_logits, routing)


@pytest.mark.parametrize("make", [_poly, _prag], ids=["poly", "prag"])
def test_update_replaces_the_text_under_the_same_id_in_one_step(make, llm, docs, tmp_path):
    lib = make(llm, docs)
    new = Document(id="d0", text="the capital of zorvania is krell", title="zorvania")
    before = _logits(llm, lib, ["d0"])
    others = _logits(llm, lib, ["d2", "d3"])
    lib.update_documents([new], progress=False)
    assert lib.version == 1 and sorted(lib.doc_ids) == sorted(d.id for d in docs)
    assert lib.document("d0").text == new.text and "d0" not in lib.config.deleted_ids
    assert not torch.equal(_logits(llm, lib, ["d0"]), before)   # mixes what the new text taught
    assert torch.equal(_logits(llm, lib, ["d2", "d3"]), others)  # nobody else changed
    old = Document(id="stale-copy", text=docs[0].text, title=docs[0].title)  # the old text, under no known id
    found = ParametricRetriever(lambda q: [old, new], lib).retrieve("capital of zorvania")
    assert found.encoded_ids == ["d0"] and found.skipped[0].document.text == docs[0].text
    lib.save(tmp_path / "lib")
    assert AdapterLibrary.load(tmp_path / "lib", llm).document("d0").text == new.text
    with pytest.raises(UnknownDocumentError, match="'zz' is not in this library"):
        lib.update_documents([Document(id="zz", text="the moon lake")])
    with pytest.raises(DuplicateDocumentError, match="library.update_documents"):
        lib.add_documents([new])


def test_a_deleted_id_can_be_added_again(llm, docs):
    lib = _poly(llm, docs)
    lib.delete_documents(["d4"])
    lib.add_documents([docs[4]], progress=False)
    assert "d4" in lib and lib.config.deleted_ids == [] and lib.config.deleted_content == []
    found = ParametricRetriever(BM25Retriever(docs, k=1), lib).retrieve("tamsin island purple")
    assert found.encoded_ids == ["d4"]


def test_refit_retrains_only_the_adapters_the_deleted_document_used_most(llm, docs):
    lib = _poly(llm, docs, num_adapters=4, epochs=4, routing_lr=0.5, lr=1e-2)
    ids = list(lib.doc_ids)
    w = lib.routing_weights(ids)
    bank, z = _tensors(lib), lib.routing_logits.clone()
    lib.delete_documents(["d1"], refit=True, progress=False)
    refit = lib.last_update["refit"]
    hot = (w[1] > 1 / 4).nonzero().flatten().tolist()   # above uniform for the deleted document
    users = [d for i, d in enumerate(ids) if d != "d1" and (w[i, hot] > 1 / 4).any()]
    assert refit["adapters"] == hot and refit["documents"] == users and users and refit["steps"] > 0
    cold = [j for j in range(4) if j not in hot]
    for k, v in lib.bank.tensors().items():
        assert torch.equal(v[cold], bank[k][cold]), k         # the other adapters did not move
        assert not torch.equal(v[hot], bank[k][hot]), k       # re-fitted: started afresh and trained
    for d in lib.doc_ids:
        same = torch.equal(lib.routing_logits[lib.doc_ids.index(d)], z[ids.index(d)])
        assert same == (d not in users), d                    # only the re-fitted documents' routing trains


def test_refit_on_prag_has_nothing_to_do(llm, docs):
    lib = _prag(llm, docs)
    lib.delete_documents(["d1"], refit=True)
    assert lib.last_update["refit"] == {"adapters": [], "documents": [], "steps": 0} and lib.bank.m == 4


def test_rows_prepared_before_and_after_an_update_share_one_batch(llm, docs):
    """A batch whose questions were prepared on either side of an update mixes two banks: each row still gets
    its own state's delta."""
    lib = _poly(llm, docs[:3])
    first = lib.mixture(["d0", "d1"])
    lib.add_documents(docs[3:], progress=False)
    second = lib.mixture(["d3", "d0"])
    assert first.bank is not second.bank
    questions = [QUESTION, "the currency of zorvania"]  # as many tokens each: no padding
    both = llm.logits(**llm.encode(questions), mixture=BankMixture.stack([first, second]))
    for row, mix in enumerate((first, second)):
        alone = llm.logits(**llm.encode([questions[row]]), mixture=mix)
        torch.testing.assert_close(both[row], alone[0], rtol=1e-5, atol=1e-5)


def test_sparse_routing_starts_each_document_on_its_own_adapters(llm, docs):
    """routing_active=a: every row starts +3 on a adapters, -3 elsewhere; added documents start on new adapters."""
    lib = _poly(llm, docs[:3], num_adapters=4, routing_active=1, epochs=1)
    start = init_routing_logits(3, 4, 0, "cpu", active=1).detach()
    assert ((start > 0).sum(1) == 1).all() and set(start.abs().flatten().tolist()) == {3.0}
    assert (lib.routing_logits.argmax(1) == start.argmax(1)).all()  # one epoch does not undo the start
    lib.add_documents(docs[3:], new_adapters=2, progress=False)
    assert (lib.routing_logits[3:].argmax(1) >= 4).all()  # old adapters are frozen: new facts go to new ones
    with pytest.raises(InvalidInputError, match="routing_active"):
        PolyPRAGEncoder(llm, num_adapters=2, routing_active=3)
