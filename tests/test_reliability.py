"""Every bad input gets a specific polyprag exception whose message says what to do; integrity and security checks."""
from __future__ import annotations

import inspect
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from polyprag import (AdapterLibrary, BankMixture, BM25Retriever, CorpusFormatError, Document,
                      DuplicateDocumentError, IncompatibleModelError, InvalidInputError, LibraryError,
                      LoRAMixingLLM, ParametricRetriever, PolyPRAG, PolyPRAGEncoder, UnknownDocumentError,
                      load_corpus)
from polyprag.encoding.checkpoint import safe_child
from polyprag.errors import CheckpointError, TrainingError
from polyprag.methods.polyprag.routing import routing_weights
from edits import edit_config, resign
from polyprag.library.storage import MANIFEST
from tiny import tiny_llm, tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lib(llm, docs):
    return PolyPRAGEncoder(llm, num_adapters=3, rank=2, augmenter="passage", epochs=1, progress=False).fit(docs)


@pytest.fixture
def rag(llm, docs, lib):
    return PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=2), lib), max_new_tokens=3)


# ---- queries --------------------------------------------------------------------------------------
@pytest.mark.parametrize("query", ["", "   \n\t"])
def test_empty_query(rag, query):
    with pytest.raises(InvalidInputError, match="empty or only white space; ask a question"):
        rag.answer(query)


def test_query_that_is_not_text(rag):
    with pytest.raises(InvalidInputError, match="must be a string"):
        rag.answer(None)
    with pytest.raises(InvalidInputError, match="not valid Unicode"):
        rag.answer("who built \ud800 the lighthouse")  # a lone surrogate: the tokenizer would raise TypeError


def word_llm() -> LoRAMixingLLM:
    """The tiny model, whose word-level tokenizer round-trips text exactly."""
    return tiny_llm()


def test_huge_query_is_truncated_with_a_warning(docs, caplog):
    llm = word_llm()
    lib = PolyPRAGEncoder(llm, num_adapters=2, augmenter="passage", epochs=1, progress=False).fit(docs)
    rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=2), lib), mode="combine", max_new_tokens=3)
    question = "who built the krell lighthouse " * 3300  # 100,000+ characters, ~33,000 tokens
    assert len(question) >= 100_000
    with caplog.at_level(logging.WARNING, logger="polyprag"):
        answer = rag.answer(question)
    assert isinstance(answer.text, str) and answer.documents[0].document.id == "d1"
    warned = [r.getMessage() for r in caplog.records]
    assert any("The question has 33000 tokens and does not fit the model's context (512 tokens)" in w
               for w in warned), warned
    prompt = llm.tokenizer(answer.prompt, add_special_tokens=False)["input_ids"]
    assert len(prompt) == 512 - 3  # the question was cut to fit; nothing else had to be
    assert "Passage 1: krell: the krell lighthouse was built by farrant" in answer.prompt  # passages kept
    assert answer.prompt.rstrip().endswith("assistant\nThe answer is")  # the answer turn, pre-filled


def test_k_larger_than_the_corpus_or_not_positive(llm, docs, rag, lib):
    with pytest.raises(InvalidInputError, match=r"k=50 is larger than the corpus \(5 documents\); ask for at most k=5"):
        rag.answer("who built the lighthouse", k=50)
    with pytest.raises(InvalidInputError, match="k=6 is larger than the corpus"):
        PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs), lib), k=6)
    with pytest.raises(InvalidInputError, match="k=9 is larger"):
        rag.retriever.retrieve("lighthouse", k=9)
    with pytest.raises(InvalidInputError, match="k must be a positive integer, got 0"):
        rag.answer("who built the lighthouse", k=0)  # 0 used to fall back to the default silently


# ---- corpora and documents ------------------------------------------------------------------------
def test_duplicate_ids(llm, docs, tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text('{"id": "a", "text": "one"}\n{"id": "a", "text": "two"}\n')
    with pytest.raises(DuplicateDocumentError, match="appears twice"):
        load_corpus(f)
    with pytest.raises(DuplicateDocumentError, match="'d0' appears twice"):
        PolyPRAGEncoder(llm, augmenter="passage", progress=False).fit(docs + [docs[0]])
    with pytest.raises(DuplicateDocumentError):
        BM25Retriever(docs + [docs[0]])


def test_empty_corpus(llm, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CorpusFormatError, match="the corpus is empty"):
        load_corpus(tmp_path / "empty.jsonl")
    with pytest.raises(InvalidInputError, match="the corpus is empty"):
        PolyPRAGEncoder(llm, augmenter="passage", progress=False).fit([])
    with pytest.raises(InvalidInputError, match="the corpus is empty"):
        BM25Retriever([])


def test_documents_that_are_not_text():
    with pytest.raises(InvalidInputError, match="empty text"):
        Document(id="a", text="  ")
    with pytest.raises(InvalidInputError, match="non-empty string"):
        Document(id="", text="x")
    with pytest.raises(InvalidInputError, match="title of type int"):
        Document(id="a", text="x", title=3)
    with pytest.raises(InvalidInputError, match="Document text holds characters that are not valid Unicode"):
        Document(id="a", text="caf\udce9")  # what bytes.decode(errors="surrogateescape") leaves


def test_unknown_document_ids(lib):
    with pytest.raises(UnknownDocumentError, match=r"'nope' is not in this library .*add_documents"):
        lib.mixture(["d0", "nope"])
    with pytest.raises(InvalidInputError, match=r"list of document ids, e.g. \['d0'\]"):
        lib.mixture("d0")


# ---- routing and mixtures -------------------------------------------------------------------------
def test_nan_or_inf_routing_logits(llm, docs, lib, tmp_path):
    bad = lib.routing_logits.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN or inf .*re-encode"):
        routing_weights(bad)
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        AdapterLibrary(llm, lib.bank, docs, lib.config, routing_logits=bad.clone().fill_(float("inf")))
    path = lib.save(tmp_path / "lib")  # a saved table altered consistently (checksum updated too)
    from safetensors.torch import save_file

    save_file({"routing_logits": bad}, str(path / "routing.safetensors"))
    resign(path)
    with pytest.raises(LibraryError, match="NaN or inf weights .*re-encode"):
        AdapterLibrary.load(path, llm)


def test_diverging_training_stops_with_advice(llm, docs):
    enc = PolyPRAGEncoder(llm, num_adapters=2, augmenter="passage", epochs=3, batch_size=2, lr=1e30,
                          routing_lr=1e30, progress=False)
    with pytest.raises(TrainingError, match="Training diverged: the loss is .* Lower lr"):
        enc.fit(docs)


def test_mixture_naming_adapters_that_do_not_exist(llm, lib):
    with pytest.raises(InvalidInputError, match="can only name adapters that exist"):
        BankMixture(lib.bank, torch.ones(1, 1, lib.bank.m + 2))
    narrow = LoRAMixingLLM(tiny_model(0), tiny_tokenizer(), target_modules=("gate_proj",), name="tiny-llama")
    with pytest.raises(IncompatibleModelError, match="targets .* layer\\(s\\) this model does not hook"):
        AdapterLibrary(narrow, lib.bank, lib.documents, lib.config, routing_logits=lib.routing_logits)


def test_pipeline_refuses_a_library_of_another_model(docs, lib):
    with pytest.raises(IncompatibleModelError, match="another base model than the LLM"):
        PolyPRAG(tiny_llm(seed=3), ParametricRetriever(BM25Retriever(docs), lib))


# ---- integrity of saved libraries -----------------------------------------------------------------
def test_wrong_dtype_is_named(lib, tmp_path):
    path = lib.save(tmp_path / "lib")
    half = LoRAMixingLLM(tiny_model(0).to(torch.bfloat16), tiny_tokenizer(), name="tiny-llama")
    with pytest.raises(IncompatibleModelError, match="encoded in float32 and the model is bfloat16: .*dtype='float32'"):
        AdapterLibrary.load(path, half)


def test_truncated_or_altered_files(llm, lib, tmp_path):
    path = lib.save(tmp_path / "lib")
    bank = path / "bank.safetensors"
    good = bank.read_bytes()
    bank.write_bytes(good[: len(good) // 2])
    with pytest.raises(LibraryError, match="bank.safetensors does not match its checksum .*re-encode"):
        AdapterLibrary.load(path, llm)
    bank.write_bytes(good)
    (path / "documents.jsonl").write_text('{"id": "d0", "text": "rewritten"}\n', encoding="utf-8")
    with pytest.raises(LibraryError, match="documents.jsonl does not match its checksum"):
        AdapterLibrary.load(path, llm)


def test_config_cannot_drop_checksums_or_point_outside(llm, lib, tmp_path):
    path = lib.save(tmp_path / "lib")
    manifest = json.loads((path / MANIFEST).read_text())
    for files, said in (({}, "does not list config.json"),
                        ({k: v for k, v in manifest["files"].items() if k != "bank.safetensors"},
                         "lists files .* expected .*the config was altered"),
                        ({**manifest["files"], "../../etc/passwd": "0" * 64}, "'../../etc/passwd', which is not a file")):
        (path / MANIFEST).write_text(json.dumps({**manifest, "files": files}))
        with pytest.raises(LibraryError, match=said):
            AdapterLibrary.load(path, llm)
    (path / MANIFEST).write_text(json.dumps(manifest))
    edit_config(path, rank="2")
    with pytest.raises(LibraryError, match="'rank' must be a positive integer"):
        AdapterLibrary.load(path, llm)


@pytest.mark.parametrize("name", ["../escape", "..", "a/b", "/etc/passwd", "a\\b", "", "x\x00y"])
def test_path_traversal_names_are_refused(tmp_path, name):
    with pytest.raises(InvalidInputError, match="not a plain file or folder name"):
        safe_child(tmp_path, name)


def test_plain_names_stay_inside(tmp_path):
    assert safe_child(tmp_path, "lib-1.v2") == tmp_path / "lib-1.v2"


# ---- checkpoints ----------------------------------------------------------------------------------
def test_interrupted_fit_resumes_to_the_same_library(docs, tmp_path, monkeypatch):
    import polyprag.encoding.checkpoint as ckmod

    opts = dict(num_adapters=3, augmenter="passage", epochs=2, batch_size=2, progress=False)
    clean = PolyPRAGEncoder(tiny_llm(), **opts).fit(docs)
    write, calls = ckmod.Checkpoint.write, []

    def crash_at_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands for a crash between two saves
        return write(self, *a, **k)

    monkeypatch.setattr(ckmod.Checkpoint, "write", crash_at_third)
    with pytest.raises(KeyboardInterrupt):
        PolyPRAGEncoder(tiny_llm(), **opts).fit(docs, checkpoint_dir=tmp_path, checkpoint_every=1)
    monkeypatch.setattr(ckmod.Checkpoint, "write", write)
    resumed = PolyPRAGEncoder(tiny_llm(), **opts).fit(docs, checkpoint_dir=tmp_path, checkpoint_every=1)
    assert torch.equal(clean.routing_logits, resumed.routing_logits)
    assert all(torch.equal(a, b) for a, b in zip(clean.bank.B, resumed.bank.B))
    other = PolyPRAGEncoder(tiny_llm(), **{**opts, "epochs": 1}).fit(docs, checkpoint_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # another run: its own folder, nothing picked up by mistake
    assert not torch.equal(other.routing_logits, clean.routing_logits)


def test_damaged_checkpoint_is_named(llm, docs, tmp_path):
    opts = dict(num_adapters=2, augmenter="passage", epochs=1, progress=False)
    PolyPRAGEncoder(llm, **opts).fit(docs, checkpoint_dir=tmp_path)
    (state,) = tmp_path.glob("*/state.safetensors")
    state.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is damaged .*delete it"):
        PolyPRAGEncoder(llm, **opts).fit(docs, checkpoint_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="checkpoint_every must be a positive"):
        PolyPRAGEncoder(llm, **opts).fit(docs, checkpoint_dir=tmp_path / "x", checkpoint_every=0)


# ---- security ---------------------------------------------------------------------------------------
def _sources():
    for folder in ("core/polyprag", "langchain_polyprag", "llamaindex_polyprag"):
        yield from (ROOT / folder).rglob("*.py")


def test_no_pickle_and_torch_load_only_with_weights_only():
    for f in _sources():
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), f
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{f}: {call.group(0)}"


def test_trust_remote_code_is_off_unless_asked():
    default = inspect.signature(LoRAMixingLLM.from_pretrained).parameters["trust_remote_code"].default
    assert default is False
    for f in _sources():
        assert not re.search(r"trust_remote_code\s*=\s*True", f.read_text(encoding="utf-8")), f
