"""AdapterLibrary: encoding, save/load round trips, routing-only growth, integrity checks."""
from __future__ import annotations

import json

import pytest
import torch

from polyprag import (AdapterLibrary, BM25Retriever, Document, DuplicateDocumentError, IncompatibleModelError,
                      LibraryError, ParametricRetriever, PolyPRAG, PolyPRAGEncoder, PRAGEncoder,
                      UnknownDocumentError)
from edits import edit_config
from tiny import tiny_llm


def _poly(llm, docs, **kw):
    opts = dict(num_adapters=3, rank=2, augmenter="passage", epochs=2, progress=False, seed=0)
    opts.update(kw)
    return PolyPRAGEncoder(llm, **opts).fit(docs)


def test_fit_trains_bank_and_routing(llm, docs):
    lib = _poly(llm, docs)
    assert len(lib) == len(docs) and lib.kind == "poly"
    assert tuple(lib.routing_logits.shape) == (5, 3)
    assert any(b.abs().sum() > 0 for b in lib.bank.B)  # B starts at zero; training moved it
    w = lib.routing_weights(["d0", "d1"])
    torch.testing.assert_close(w.sum(-1), torch.ones(2))


def test_training_is_seeded_and_repeatable(docs):
    a, b = _poly(tiny_llm(), docs), _poly(tiny_llm(), docs)
    assert torch.equal(a.routing_logits, b.routing_logits)
    assert all(torch.equal(x, y) for x, y in zip(a.bank.A, b.bank.A))


def test_save_load_gives_identical_outputs(llm, docs, tmp_path):
    lib = _poly(llm, docs)
    lib.save(tmp_path / "lib")
    again = AdapterLibrary.load(tmp_path / "lib", llm)
    assert again.doc_ids == lib.doc_ids and again.config.kind == "poly"
    enc = llm.encode(["the capital of zorvania"])
    for combine in ("mean", "sum"):
        x = llm.logits(**enc, mixture=lib.mixture(["d0", "d3"], combine))
        y = llm.logits(**enc, mixture=again.mixture(["d0", "d3"], combine))
        assert torch.equal(x, y)


def test_add_documents_grows_the_bank_and_leaves_old_answers_bit_identical(llm, docs, tmp_path):
    """The default add trains new adapters for the new documents; old adapters and old documents' mixtures
    do not change by a single bit, and the new documents route onto the new adapters too."""
    lib = _poly(llm, docs[:3])
    bank_before = {k: v.clone() for k, v in lib.bank.tensors().items()}
    enc = llm.encode(["the capital of zorvania"])
    before = llm.logits(**enc, mixture=lib.mixture(["d0", "d2"]))
    lib.add_documents(docs[3:], progress=False, new_adapters=2)
    assert lib.bank.m == 5 and lib.config.m == 5 and len(lib) == 5
    for k, v in lib.bank.tensors().items():
        assert torch.equal(v[:3], bank_before[k]), k           # old adapters frozen
        assert v[3:].abs().sum() > 0 or k.endswith("lora_A")   # new B trained away from zero
    assert torch.equal(lib.routing_weights(["d0", "d1", "d2"])[:, 3:], torch.zeros(3, 2))
    assert torch.equal(llm.logits(**enc, mixture=lib.mixture(["d0", "d2"])), before)
    assert (lib.routing_weights(["d3", "d4"])[:, 3:] > 0).all()
    lib.save(tmp_path / "lib")
    again = AdapterLibrary.load(tmp_path / "lib", llm)
    assert again.doc_ids == lib.doc_ids and again.bank.m == 5
    with pytest.raises(Exception, match="strategy"):
        lib.add_documents([Document(id="d8", text="x")], strategy="magic")


def test_add_documents_routing_only_leaves_bank_bit_identical(llm, docs, tmp_path):
    lib = _poly(llm, docs[:3])
    bank_before = {k: v.clone() for k, v in lib.bank.tensors().items()}
    routing_before = lib.routing_logits.clone()
    lib.add_documents(docs[3:], progress=False, strategy="routing")
    assert len(lib) == 5 and lib.doc_ids[3:] == ["d3", "d4"]
    for k, v in lib.bank.tensors().items():
        assert torch.equal(v, bank_before[k]), k
    assert torch.equal(lib.routing_logits[:3], routing_before)
    assert not torch.equal(lib.routing_logits[3:], torch.zeros(2, 3))
    lib.save(tmp_path / "lib")
    assert AdapterLibrary.load(tmp_path / "lib", llm).doc_ids == lib.doc_ids


def test_add_documents_refuses_ids_already_encoded(llm, docs):
    lib = _poly(llm, docs)
    with pytest.raises(DuplicateDocumentError, match="already in the library"):
        lib.add_documents([Document(id="d0", text="again")])


def test_prag_library_is_one_adapter_per_document_summed(llm, docs, tmp_path):
    lib = PRAGEncoder(llm, augmenter="passage", progress=False).fit(docs)
    assert lib.kind == "prag" and lib.bank.m == len(docs)
    mix = lib.mixture(["d1", "d4"])  # PRAG default: sum of the documents' deltas
    assert mix.weights.shape == (1, 2, 5)
    assert torch.equal(mix.weights[0], torch.eye(5)[[1, 4]])
    lib.add_documents([Document(id="d9", text="the moon lake")], progress=False)
    assert lib.bank.m == 6
    lib.save(tmp_path / "prag")
    assert AdapterLibrary.load(tmp_path / "prag", llm).bank.m == 6


def test_a_prag_library_saved_as_per_document_loads_as_prag(llm, docs, tmp_path):
    """PRAG's kind was called "per_document" in config.json before it had one name; such a library still loads."""
    PRAGEncoder(llm, augmenter="passage", progress=False).fit(docs[:2]).save(tmp_path / "old")
    edit_config(tmp_path / "old", kind="per_document")
    assert AdapterLibrary.load(tmp_path / "old", llm).kind == "prag"


def test_prag_batched_training_equals_one_document_at_a_time(llm, docs):
    together = PRAGEncoder(llm, augmenter="passage", progress=False).fit(docs[:3])
    alone = [PRAGEncoder(llm, augmenter="passage", progress=False).fit([d]) for d in docs[:3]]
    for j in range(3):
        for a, b in zip(together.bank.B, [lib.bank.B for lib in alone][j]):
            torch.testing.assert_close(a[j], b[0], atol=1e-6, rtol=1e-5)


def test_load_refuses_another_base_model(llm, docs, tmp_path):
    _poly(llm, docs).save(tmp_path / "lib")
    with pytest.raises(IncompatibleModelError, match="another base model"):
        AdapterLibrary.load(tmp_path / "lib", tiny_llm(seed=1))


def test_load_refuses_altered_files(llm, docs, tmp_path):
    path = _poly(llm, docs).save(tmp_path / "lib")
    data = bytearray((path / "routing.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (path / "routing.safetensors").write_bytes(bytes(data))
    with pytest.raises(LibraryError, match="checksum"):
        AdapterLibrary.load(path, llm)


def test_load_refuses_newer_format(llm, docs, tmp_path):
    path = _poly(llm, docs).save(tmp_path / "lib")
    edit_config(path, format_version=99)
    with pytest.raises(LibraryError, match="format version 99; this polyprag reads up to 2. Upgrade polyprag"):
        AdapterLibrary.load(path, llm)


def test_unknown_documents_are_refused_with_advice(llm, docs):
    lib = _poly(llm, docs)
    with pytest.raises(UnknownDocumentError, match="add_documents"):
        lib.mixture(["nope"])
    with pytest.raises(Exception, match="not encoded"):
        ParametricRetriever(BM25Retriever(docs + [Document(id="x", text="other")]), lib)


def test_pipeline_modes(llm, docs):
    lib = _poly(llm, docs)
    ret = ParametricRetriever(BM25Retriever(docs, k=2), lib)
    q = "who built the krell lighthouse"
    par = PolyPRAG(llm, ret, mode="parametric", max_new_tokens=4).answer(q)
    assert par.documents[0].document.id == "d1" and par.mixture is not None
    assert "Passage" not in par.prompt
    comb = PolyPRAG(llm, ret, mode="combine", max_new_tokens=4).answer(q)
    assert comb.mixture is not None and "krell lighthouse was built" in comb.prompt
    ic = PolyPRAG(llm, ret, mode="in_context", max_new_tokens=4).answer(q)
    assert ic.mixture is None and "krell lighthouse was built" in ic.prompt
    cb = PolyPRAG(llm, ret, mode="closed_book", max_new_tokens=4).answer(q)
    assert cb.mixture is None and cb.documents == []
    batch = PolyPRAG(llm, ret, mode="parametric", max_new_tokens=4).answer_batch([q, "the capital of zorvania"])
    assert batch[0].text == par.text
    streamed = "".join(PolyPRAG(llm, ret, mode="parametric", max_new_tokens=4).stream(q))
    assert streamed.strip() == par.text
