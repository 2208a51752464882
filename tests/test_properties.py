"""Property-based: arbitrary strings, documents, ks and files fed to the retriever, encoder, library and
pipeline; only polyprag's documented exceptions (PolyPRAGError and its subclasses) may ever escape."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyprag import (AdapterLibrary, BM25Retriever, Document, ParametricRetriever, PolyPRAG, PolyPRAGEncoder,
                      PolyPRAGError, load_corpus)
from test_reliability import word_llm

# Any code point, lone surrogates included (what a careless bytes.decode leaves behind).
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
WORDY = st.text(st.sampled_from(list("the capital zorvania krell lighthouse ?!.\n\t é中")), max_size=60)
TEXT = st.one_of(ANY_TEXT, WORDY)
K = st.one_of(st.none(), st.integers(-2, 12), st.sampled_from([True, 2.5, "3"]))
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])

documents = st.lists(st.builds(Document, id=TEXT, text=TEXT, title=st.one_of(st.just(""), TEXT)),
                     min_size=0, max_size=4)


def documented_only(call, *args, **kwargs):
    """Run ``call``; a polyprag exception is an accepted answer to bad input, any other exception fails."""
    try:
        return call(*args, **kwargs)
    except PolyPRAGError as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        return None


@pytest.fixture(scope="module")
def setup():
    llm = word_llm()
    docs = [Document(id=f"d{i}", text=t) for i, t in
            enumerate(["the capital of zorvania is quellport", "the krell lighthouse was built by farrant",
                       "the velt is the currency of zorvania"])]
    lib = PolyPRAGEncoder(llm, num_adapters=2, augmenter="passage", epochs=1, progress=False).fit(docs)
    return llm, docs, lib


@settings(max_examples=60, **SETTINGS)
@given(docs=st.data(), query=TEXT, k=K)
def test_retriever(docs, query, k):
    built = documented_only(lambda: docs.draw(documents))
    if built is None:
        return
    retriever = documented_only(BM25Retriever, built, k=2)
    if retriever is not None:
        hits = documented_only(retriever.retrieve, query, k)
        assert hits is None or len(hits) <= len(built)


@settings(max_examples=15, **SETTINGS)
@given(data=st.data())
def test_encoder(setup, data):
    llm, _, _ = setup
    built = documented_only(lambda: data.draw(documents))
    if built is None:
        return
    lib = documented_only(PolyPRAGEncoder(llm, num_adapters=2, augmenter="passage", epochs=1, batch_size=4,
                                          max_length=64, progress=False).fit, built)
    if lib is not None:
        assert lib.doc_ids == [d.id for d in built]


@settings(max_examples=40, **SETTINGS)
@given(query=TEXT, k=K, mode=st.sampled_from(["parametric", "combine", "in_context", "closed_book", "lag", "x"]),
       ids=st.lists(TEXT, max_size=3))
def test_pipeline_and_library(setup, query, k, mode, ids):
    llm, docs, lib = setup
    rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=2), lib), max_new_tokens=2)
    answer = documented_only(rag.answer, query, mode=mode, k=k)
    assert answer is None or isinstance(answer.text, str)
    documented_only(lib.mixture, ids)
    documented_only(lib.mixture, query)


ROWS = st.lists(st.dictionaries(st.sampled_from(["id", "title", "text", "x"]),
                                st.one_of(TEXT, st.integers(), st.none(), st.lists(st.integers()))), max_size=3)


@settings(max_examples=40, **SETTINGS)
@given(raw=st.one_of(st.binary(max_size=200),
                     ROWS.map(lambda rows: "\n".join(map(json.dumps, rows)).encode("utf-8", "surrogatepass"))))
def test_corpus_files(raw):
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "corpus.jsonl"
        f.write_bytes(raw)
        docs = documented_only(load_corpus, f)
        assert docs is None or (docs and all(isinstance(d, Document) for d in docs))


FIELDS = ["kind", "rank", "alpha", "m", "files", "format_version", "target_modules", "base_model", "dtype",
          "model_name", "training"]
VALUES = st.one_of(TEXT, st.integers(-1, 3), st.floats(allow_nan=True), st.none(), st.lists(TEXT, max_size=2),
                   st.dictionaries(TEXT, TEXT, max_size=2))


@settings(max_examples=40, **SETTINGS)
@given(raw=st.binary(max_size=120), changes=st.dictionaries(st.sampled_from(FIELDS + ["extra"]), VALUES, max_size=3))
def test_library_folders(setup, raw, changes):
    llm, _, lib = setup
    with tempfile.TemporaryDirectory() as tmp:
        path = lib.save(Path(tmp) / "lib")
        good = json.loads((path / "config.json").read_text())
        (path / "config.json").write_bytes(raw)  # garbage instead of a config
        assert documented_only(AdapterLibrary.load, path, llm) is None
        changed = {**good, **changes}  # a real config with some fields altered
        (path / "config.json").write_bytes(json.dumps(changed).encode("utf-8", "surrogatepass"))
        loaded = documented_only(AdapterLibrary.load, path, llm)
        assert loaded is None or loaded.doc_ids == lib.doc_ids
