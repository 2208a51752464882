"""Corpus/question files and BM25 retrieval."""
from __future__ import annotations

import pytest

from polyprag import (BM25Retriever, CorpusFormatError, Document, DuplicateDocumentError, InvalidInputError,
                      load_corpus, load_questions)
from polyprag.documents import passage_id

SHARED = "/work/shared/data"


def test_load_corpus_and_questions(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"id": "a", "title": "T", "text": "x y"}\n\n{"title": "U", "text": "z"}\n')
    docs = load_corpus(tmp_path / "c.jsonl")
    assert [d.id for d in docs] == ["a", passage_id("U", "z")]
    (tmp_path / "q.jsonl").write_text('{"id": "q", "question": "who?", "answers": ["x"], "gold": ["a"]}\n')
    q = load_questions(tmp_path / "q.jsonl")[0]
    assert q.answers == ("x",) and q.gold == ("a",)


def test_non_utf8_corpus_names_the_line(tmp_path):
    (tmp_path / "c.jsonl").write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "\xff\xfe"}\n')
    with pytest.raises(CorpusFormatError, match=r"line 2: not valid UTF-8 .*re-encode the file as UTF-8"):
        load_corpus(tmp_path / "c.jsonl")


def test_bad_corpus_rows_are_refused(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(DuplicateDocumentError, match="'a' appears twice"):
        load_corpus(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(CorpusFormatError, match="line 1: missing or empty"):
        load_corpus(tmp_path / "d.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(CorpusFormatError, match="empty"):
        load_corpus(tmp_path / "e.jsonl")


def test_bm25_ranks_the_matching_document_first(docs):
    r = BM25Retriever(docs, k=2)
    hits = r.retrieve("Who built the Krell lighthouse?")
    assert len(hits) == 2 and hits[0].document.id == "d1"
    assert hits[0].score >= hits[1].score
    with pytest.raises(InvalidInputError, match="k=50 is larger than the corpus"):  # refused, not clamped
        r.retrieve("zorvania", k=50)
    assert len(BM25Retriever(docs[:2]).retrieve("zorvania")) == 2  # left unset: 3, or all of a smaller corpus


def test_bm25_refuses_bad_queries_and_k(docs):
    r = BM25Retriever(docs)
    for q in ("", "   \n"):
        with pytest.raises(InvalidInputError, match="empty"):
            r.retrieve(q)
    with pytest.raises(InvalidInputError, match="positive integer"):
        r.retrieve("x", k=0)
    with pytest.raises(InvalidInputError, match="empty"):
        BM25Retriever([])


@pytest.mark.skipif(not __import__("os").path.isdir(SHARED), reason="shared data not present")
def test_bm25_finds_gold_passages_on_popqa():
    docs = load_corpus(f"{SHARED}/popqa/corpus.jsonl")
    qs = load_questions(f"{SHARED}/popqa/questions.jsonl")[:50]
    r = BM25Retriever(docs, k=3)
    recall = sum(any(h.document.id in q.gold for h in r.retrieve(q.question)) for q in qs) / len(qs)
    assert recall > 0.5


def test_document_validation():
    with pytest.raises(InvalidInputError):
        Document(id="", text="x")
    with pytest.raises(InvalidInputError):
        Document(id="a", text="  ")
