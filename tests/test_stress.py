"""Isolation under concurrency: 16 threads and 16 asyncio tasks against one PolyPRAG (and each face) give
every question exactly the answer it gets alone, so no mixture leaks between requests or batch rows."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import random_poly_library
from polyprag import BM25Retriever, Document, ParametricRetriever, PolyPRAG
from polyprag.engine import active_mixture
from test_reliability import word_llm

WORDS = ["zorvania", "krell", "marisol", "velt", "tamsin", "quellport", "farrant", "moon"]
DOCS = [Document(id=f"d{i}", text=f"the {w} {WORDS[(i + 3) % 8]} is {['red', 'blue', 'green', 'purple'][i % 4]}")
        for i, w in enumerate(WORDS)]
# 16 different questions; each retrieves its own pair of documents, so each gets its own mixture.
QUESTIONS = [f"what is the {a} {b}" for a in WORDS for b in ("city", "river")]
N_NEW = 4


@pytest.fixture(scope="module")
def rag() -> PolyPRAG:
    llm = word_llm()
    library = random_poly_library(llm, DOCS, m=4, logit_seed=2, logit_scale=3.0, bank_seed=5)
    return PolyPRAG(llm, ParametricRetriever(BM25Retriever(DOCS, k=2), library), mode="combine",
                    max_new_tokens=N_NEW)


@pytest.fixture(scope="module")
def sequential(rag) -> list[str]:
    answers = [rag.answer(q).text for q in QUESTIONS]
    assert len(set(answers)) >= 8, answers  # the mixtures make the answers differ: a leak would show
    return answers


def _threads(ask, n: int = 16) -> list:
    """``ask(i)`` for i < n on n threads released together."""
    gate = threading.Barrier(n)

    def run(i):
        gate.wait()
        return ask(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


async def _tasks(ask) -> list:
    return await asyncio.gather(*(ask(i) for i in range(len(QUESTIONS))))


def test_threads(rag, sequential):
    assert _threads(lambda i: rag.answer(QUESTIONS[i]).text) == sequential
    assert active_mixture() is None  # nothing left behind in the caller's context


async def test_asyncio_tasks(rag, sequential):
    async def ask(i):
        return (await asyncio.to_thread(rag.answer, QUESTIONS[i])).text

    assert await _tasks(ask) == sequential
    assert active_mixture() is None


def test_batch_rows(rag, sequential):
    assert [a.text for a in rag.answer_batch(QUESTIONS)] == sequential


def test_threads_mixing_batches_and_single_questions(rag, sequential):
    def ask(i):
        if i % 2:
            return [a.text for a in rag.answer_batch(QUESTIONS[i - 1: i + 1])]
        return [rag.answer(QUESTIONS[i]).text]

    out = _threads(ask)
    assert [a for i, part in enumerate(out) for a in part if i % 2] == sequential
    assert [part[0] for i, part in enumerate(out) if not i % 2] == sequential[::2]


def test_langchain_runnable(rag):
    from langchain_polyprag import PolyPRAGRunnable

    runnable = PolyPRAGRunnable(rag=rag)
    alone = [runnable.invoke(q) for q in QUESTIONS]
    assert _threads(lambda i: runnable.invoke(QUESTIONS[i])) == alone

    async def ask(i):
        return await runnable.ainvoke(QUESTIONS[i])

    assert asyncio.run(_tasks(ask)) == alone


def test_llamaindex_query_engine(rag):
    from llamaindex_polyprag import PolyPRAGLLM, PolyPRAGQueryEngine

    library = rag.retriever.library
    engine = PolyPRAGQueryEngine.from_library(library, k=2, mode="combine",
                                              llm=PolyPRAGLLM(llm=library.llm, max_new_tokens=N_NEW))
    alone = [engine.query(q).response for q in QUESTIONS]
    assert len(set(alone)) >= 8
    assert _threads(lambda i: engine.query(QUESTIONS[i]).response) == alone

    async def ask(i):
        return (await engine.aquery(QUESTIONS[i])).response

    assert asyncio.run(_tasks(ask)) == alone
