"""One test per row of issue 32's table (a new user's CLI and API session): no user file is ever lost, moved or
changed; damaged or edited libraries are refused with the key or value named; every bad input is a PolyPRAGError."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from polyprag import (AdapterLibrary, BM25Retriever, CorpusFormatError, Document, InvalidInputError, LibraryError,
                      ParametricRetriever, PolyPRAG, PolyPRAGEncoder, PolyPRAGError)
from polyprag.errors import LibraryFolderError
from edits import edit_config

from conftest import random_poly_library


def user_folder(root: Path) -> dict[str, bytes]:
    """A folder of a user's own files (the data folder of the report): what it holds, byte for byte."""
    (root / "sub").mkdir(parents=True)
    (root / "corpus.jsonl").write_text('{"id": "u1", "text": "the capital of zorvania is quellport"}\n')
    (root / "notes.txt").write_text("my notes\n")
    (root / "sub" / "important.txt").write_bytes(b"\x00\x01 important")
    return snapshot(root)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def lib(llm, docs):
    return random_poly_library(llm, docs, m=3)


# ---- a library folder is the library's alone ------------------------------------------------------
def test_save_into_a_folder_of_user_files_is_refused_and_leaves_it_as_it_was(lib, tmp_path):
    data = tmp_path / "data"
    before = user_folder(data)
    with pytest.raises(LibraryFolderError, match=r"data holds files that polyprag did not write \(e\.g\. corpus.jsonl"):
        lib.save(data)
    assert snapshot(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing hidden beside it either


def test_save_over_an_existing_file_is_refused_and_nothing_is_renamed(lib, tmp_path):
    target = tmp_path / "lib"
    target.write_text("a file of mine")
    with pytest.raises(LibraryFolderError, match="is an existing file, not a folder"):
        lib.save(target)
    assert target.read_text() == "a file of mine"
    assert [p.name for p in tmp_path.iterdir()] == ["lib"]  # no hidden .lib.old-PID


def test_save_replaces_its_own_library_and_an_empty_folder(llm, lib, docs, tmp_path):
    (tmp_path / "empty").mkdir()
    lib.save(tmp_path / "empty")
    lib.save(tmp_path / "empty")  # over the library it wrote
    smaller = random_poly_library(llm, docs[:2], m=2)
    smaller.save(tmp_path / "empty")
    assert AdapterLibrary.load(tmp_path / "empty", llm).doc_ids == ["d0", "d1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_unwritable_paths_are_a_polyprag_error(lib, tmp_path):
    with pytest.raises(LibraryFolderError, match="Cannot write an adapter library to /proc/x"):
        lib.save("/proc/x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(LibraryFolderError, match="Cannot write"):
        lib.save(tmp_path / "file" / "lib")  # a parent that is a file


def test_the_current_folder_is_refused(lib, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LibraryFolderError, match="'.' is the current folder"):
        lib.save(".")


# ---- every byte is checked -------------------------------------------------------------------------
def test_config_json_is_covered_by_the_manifest(llm, lib, tmp_path):
    path = lib.save(tmp_path / "lib")
    manifest = json.loads((path / "polyprag-manifest.json").read_text())
    assert set(manifest["files"]) == {"config.json", "bank.safetensors", "routing.safetensors", "documents.jsonl"}
    edit_config(path, signed=False, alpha=80.0)  # an edit in a text editor
    with pytest.raises(LibraryError, match="config.json does not match its checksum"):
        AdapterLibrary.load(path, llm)


@pytest.mark.parametrize("field,value,said", [
    ("alpha", 0, "'alpha' must be a positive finite number, got 0"),
    ("alpha", -8.0, "'alpha' must be a positive finite number, got -8.0"),
    ("rank", 0, "'rank' must be a positive integer, got 0"),
    ("rank", 3, r"the bank \(m=3, rank=2\) does not match its config \(m=3, rank=3\)"),
    ("m", 0, "'m' must be a positive integer"),
    ("m", 7, r"the bank \(m=3, rank=2\) does not match its config \(m=7"),
    ("dtype", "float8", "'dtype' must be one of"),
    ("target_modules", [], "'target_modules' must list module names"),
])
def test_values_out_of_range_are_refused_even_with_the_manifest_resigned(llm, lib, tmp_path, field, value, said):
    path = lib.save(tmp_path / "lib")
    edit_config(path, **{field: value})
    with pytest.raises(LibraryError, match=said):
        AdapterLibrary.load(path, llm)


def test_routing_table_of_the_wrong_shape_is_refused(llm, lib, tmp_path):
    from safetensors.torch import save_file

    from edits import resign

    path = lib.save(tmp_path / "lib")
    save_file({"routing_logits": torch.zeros(5, 2)}, str(path / "routing.safetensors"))
    resign(path)
    with pytest.raises(LibraryError, match=r"Routing table shape \(5, 2\) does not match 5 documents × 3 adapters"):
        AdapterLibrary.load(path, llm)


def test_a_listed_document_named_as_deleted_is_refused(llm, lib, tmp_path):
    path = lib.save(tmp_path / "lib")
    edit_config(path, deleted_ids=["d1"])
    with pytest.raises(LibraryError, match="'d1' is both held and listed as deleted"):
        AdapterLibrary.load(path, llm)


def test_an_unknown_config_key_is_named_with_the_format_version(llm, lib, tmp_path):
    path = lib.save(tmp_path / "lib")
    edit_config(path, colour="blue")
    with pytest.raises(LibraryError, match="has the key 'colour', which library format version 2 does not have"):
        AdapterLibrary.load(path, llm)


def test_a_format_1_library_still_loads_and_is_replaced_as_a_library(llm, lib, tmp_path):
    """Libraries saved before the manifest (config.json listing the other files) load and may be saved over."""
    from polyprag.library.storage import MANIFEST, sha256_file

    path = lib.save(tmp_path / "lib")
    (path / MANIFEST).unlink()
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(format_version=1, files={n: sha256_file(path / n) for n in
                                        ("bank.safetensors", "routing.safetensors", "documents.jsonl")})
    (path / "config.json").write_text(json.dumps(cfg))
    assert AdapterLibrary.load(path, llm).doc_ids == lib.doc_ids
    lib.save(path)
    assert (path / MANIFEST).is_file()


# ---- one error type ---------------------------------------------------------------------------------
def test_fit_of_one_document_and_answer_batch_of_one_string(llm, docs, lib):
    enc = PolyPRAGEncoder(llm, num_adapters=2, augmenter="passage", epochs=1, progress=False)
    with pytest.raises(InvalidInputError, match="got one Document; pass a list, e.g. \\[document\\]"):
        enc.fit(docs[0])
    rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=2), lib), max_new_tokens=2)
    with pytest.raises(InvalidInputError, match="answer_batch takes a list of questions, got one string"):
        rag.answer_batch("who built the krell lighthouse")


@pytest.mark.parametrize("temperature", [-1.0, math.nan, math.inf])
def test_a_temperature_that_is_negative_or_not_finite_is_refused(llm, docs, lib, temperature):
    retriever = ParametricRetriever(BM25Retriever(docs, k=2), lib)
    with pytest.raises(InvalidInputError, match="temperature must be a finite number >= 0"):
        PolyPRAG(llm, retriever, temperature=temperature)
    with pytest.raises(InvalidInputError, match="temperature must be"):
        PolyPRAG(llm, retriever, max_new_tokens=2).answer("who built the lighthouse", temperature=temperature)


def test_document_text_as_bytes_is_named_as_bytes():
    with pytest.raises(InvalidInputError, match=r"'a' has text of type bytes; give a string \(decode it first"):
        Document("a", b"bytes")


def test_eval_refuses_a_gold_id_missing_from_the_corpus(tmp_path):
    from polyprag.evaluation.runner import load_slice

    (tmp_path / "corpus.jsonl").write_text('{"id": "p1", "text": "the velt is the currency"}\n')
    (tmp_path / "questions.jsonl").write_text('{"id": "q1", "question": "what is the velt", "answers": ["x"], '
                                              '"gold": ["p1", "p9"]}\n')
    with pytest.raises(CorpusFormatError, match="question 'q1' names gold passage 'p9', which corpus.jsonl does not hold"):
        load_slice(tmp_path)


def test_a_device_this_machine_lacks_is_a_polyprag_error():
    from polyprag.generation.models import pick_device

    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="Device 'cuda' is not available here .*--device cpu"):
            pick_device("cuda")
    with pytest.raises(InvalidInputError, match="Unknown device 'gpu0'"):
        pick_device("gpu0")


def test_k_larger_than_the_corpus_is_refused_not_filled_with_documents_that_do_not_match(docs):
    with pytest.raises(InvalidInputError, match=r"k=9 is larger than the corpus \(5 documents\)"):
        BM25Retriever(docs, k=9)
    with pytest.raises(InvalidInputError, match=r"k=6 is larger than the corpus \(5 documents\)"):
        BM25Retriever(docs, k=2).retrieve("lighthouse", k=6)


def test_langchain_face_k_larger_than_the_corpus(docs):
    from langchain_polyprag import PolyPRAGRetriever

    with pytest.raises(InvalidInputError, match="k=8 is larger than the corpus"):
        PolyPRAGRetriever(documents=docs, k=8)
    with pytest.raises(InvalidInputError, match="k=6 is larger than the corpus"):
        PolyPRAGRetriever(documents=docs, k=2).invoke("lighthouse", k=6)


# ---- the LlamaIndex face ------------------------------------------------------------------------------
def test_llamaindex_repr_of_the_engine_and_the_llm(lib):
    from llamaindex_polyprag import PolyPRAGLLM, PolyPRAGQueryEngine

    engine = PolyPRAGQueryEngine.from_library(lib, k=2)
    text = repr(engine)
    assert "mode='combine_ensemble'" in text and "poly, 5 documents" in text and "PolyPRAGRetriever" in text
    assert "max_new_tokens=64" in repr(PolyPRAGLLM(llm=lib.llm)) and str(engine)


def _index(docs):
    from llama_index.core import Document as LIDocument
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    return VectorStoreIndex.from_documents([LIDocument(text=d.text, id_=d.id) for d in docs],
                                           embed_model=MockEmbedding(embed_dim=8))


@pytest.mark.parametrize("k,said", [(0, "k must be a positive integer"), (-1, "k must be a positive integer"),
                                    (True, "k must be a positive integer"), (9, r"k=9 is larger than the index \(5 nodes\)")])
def test_llamaindex_from_index_checks_k(lib, docs, k, said):
    from llamaindex_polyprag import PolyPRAGQueryEngine

    with pytest.raises(InvalidInputError, match=said):
        PolyPRAGQueryEngine.from_index(_index(docs), lib, k=k)


@pytest.mark.parametrize("temperature", [-1.0, math.nan])
def test_faces_refuse_a_bad_temperature(lib, temperature):
    from langchain_polyprag import ChatPolyPRAG
    from llamaindex_polyprag import PolyPRAGLLM

    with pytest.raises(PolyPRAGError, match="temperature"):
        ChatPolyPRAG(llm=lib.llm, temperature=temperature)
    with pytest.raises(PolyPRAGError, match="temperature"):
        PolyPRAGLLM(llm=lib.llm, temperature=temperature)
