"""Property-based: arbitrary strings, documents, ks and files fed to the retriever, encoder, library and
pipeline; only polyprag's documented exceptions (PolyPRAGError and its subclasses) may ever escape."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from polyprag import (AdapterLibrary, BM25Retriever, Document, ParametricRetriever, PolyPRAG, PolyPRAGEncoder,
                      PolyPRAGError, load_corpus)
from edits import resign
from polyprag import GenerationConfig
from polyprag.documents import check_unique
from polyprag.errors import LibraryFolderError
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


def valid_k(k) -> bool:
    return isinstance(k, int) and not isinstance(k, bool) and k >= 1


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    assume(built is not None)
    retriever = documented_only(BM25Retriever, built, k=1)
    assert (retriever is None) == (not built or len({d.id for d in built}) < len(built))  # empty or a repeated id
    assume(retriever is not None)
    hits = documented_only(retriever.retrieve, query, k)
    if not (k is None or (valid_k(k) and k <= len(built))) or not query.strip():  # a k beyond the corpus: refused
        assert hits is None
        return
    assert len(hits) == (1 if k is None else k)  # the k best
    assert len({h.document.id for h in hits}) == len(hits) and all(h.document in built for h in hits)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))  # best first


@settings(max_examples=15, **SETTINGS)
@given(data=st.data())
def test_encoder(setup, data):
    llm, _, _ = setup
    built = documented_only(lambda: data.draw(documents))
    assume(built is not None)
    lib = documented_only(PolyPRAGEncoder(llm, num_adapters=2, augmenter="passage", epochs=1, batch_size=4,
                                          max_length=64, progress=False).fit, built)
    if not built or len({d.id for d in built}) < len(built):  # nothing to encode, or a repeated id
        assert lib is None
    else:
        assert lib.doc_ids == [d.id for d in built]


@settings(max_examples=40, **SETTINGS)
@given(query=TEXT, k=K, mode=st.sampled_from(["parametric", "combine", "in_context", "closed_book", "lag", "x"]),
       ids=st.lists(st.one_of(TEXT, st.sampled_from(["d0", "d1", "d2"])), max_size=3))  # unknown and known ids
def test_pipeline_and_library(setup, query, k, mode, ids):
    llm, docs, lib = setup
    bm25 = BM25Retriever(docs, k=2)
    rag = PolyPRAG(llm, ParametricRetriever(bm25, lib), max_new_tokens=2)
    answer = documented_only(rag.answer, query, mode=mode, k=k)
    usable = query.strip() and utf8(query) and (k is None or (valid_k(k) and k <= len(docs)))
    if not usable or mode in ("lag", "x"):  # no LAG router was given; "x" is no mode
        assert answer is None
    else:
        assert isinstance(answer.text, str) and answer.mode == mode
        retrieved = [] if mode == "closed_book" else bm25.retrieve(query, k)  # the k best (2 unless k says)
        assert [d.document.id for d in answer.documents] == [h.document.id for h in retrieved]
        assert (answer.mixture is not None) == (mode in ("parametric", "combine"))  # the documents' adapters
    mixture = documented_only(lib.mixture, ids)
    if not ids:
        assert mixture is None  # no documents, no mixture
    else:
        assert (mixture is not None) == all(i in lib.doc_ids for i in ids)  # an unknown id is refused
    assert documented_only(lib.mixture, query) is None  # a string is no list of ids (refused; empty: no mixture)


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
        changed = {**good, **changes}  # a real config with some fields altered, the manifest re-signed
        (path / "config.json").write_bytes(json.dumps(changed).encode("utf-8", "surrogatepass"))
        resign(path)
        loaded = documented_only(AdapterLibrary.load, path, llm)
        assert loaded is None or loaded.doc_ids == lib.doc_ids
        if loaded is not None:  # what loads is in range
            c = loaded.config
            assert c.rank == lib.bank.rank and c.m == lib.bank.m and c.alpha > 0 and set(changed) <= set(good) | {"files"}


NAMES = st.text(st.sampled_from(list("abc.-_ é")), min_size=1, max_size=6).filter(lambda n: n not in (".", ".."))
TREES = st.dictionaries(st.lists(NAMES, min_size=1, max_size=2).map("/".join), st.binary(max_size=20), max_size=4)


@settings(max_examples=40, **SETTINGS)
@given(tree=TREES, as_file=st.booleans())
def test_saving_over_a_users_folder_or_file(setup, tree, as_file):
    """Whatever a user keeps at the path, a save either writes the library (the path was absent or an empty
    folder) or is refused with a LibraryFolderError; the user's files stay as they were, nothing is left beside."""
    _, _, lib = setup
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "target"
        if as_file:
            target.write_bytes(b"mine")
        else:
            target.mkdir()
            for name, data in tree.items():
                f = target / name
                if f.parent.is_file() or f.is_dir():
                    continue  # a name that is both a file and a folder: one is enough
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data)
        before = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()} \
            if target.is_dir() else target.read_bytes()
        empty = target.is_dir() and not any(target.iterdir())
        try:
            lib.save(target)
            saved = True
        except LibraryFolderError:
            saved = False
        assert saved == empty
        if not saved:
            after = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()} \
                if target.is_dir() else target.read_bytes()
            assert after == before
        assert [p.name for p in Path(tmp).iterdir()] == ["target"]


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.none(), st.booleans(),
                    st.text(max_size=3))


@settings(max_examples=80, **SETTINGS)
@given(temperature=NUMBERS, top_p=NUMBERS, max_new_tokens=NUMBERS)
def test_generation_settings(temperature, top_p, max_new_tokens):
    cfg = documented_only(GenerationConfig, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    if cfg is not None:
        assert math.isfinite(cfg.temperature) and cfg.temperature >= 0 and 0 < cfg.top_p <= 1
        assert isinstance(cfg.max_new_tokens, int) and cfg.max_new_tokens >= 1


@settings(max_examples=60, **SETTINGS)
@given(doc_id=st.one_of(TEXT, NUMBERS, st.binary(max_size=4)), text=st.one_of(TEXT, NUMBERS, st.binary(max_size=4)),
       title=st.one_of(TEXT, NUMBERS))
def test_documents_of_any_type(doc_id, text, title):
    doc = documented_only(Document, id=doc_id, text=text, title=title)
    if doc is not None:
        assert isinstance(doc.text, str) and doc.text.strip() and isinstance(doc.id, str)
    assert documented_only(check_unique, doc) is None  # one document (or none) is not a list of them
