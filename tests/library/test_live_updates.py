"""Live updates: 8 threads answer questions while another adds, replaces and deletes documents; every answer
equals the answer of one whole library state that was current while it was being answered."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import random_poly_library
from tiny import tiny_llm

from polyprag import AdapterLibrary, BM25Retriever, Document, ParametricRetriever, PolyPRAG

pytestmark = pytest.mark.usefixtures("one_thread")  # generation-heavy: one torch thread

WORDS = ["zorvania", "krell", "marisol", "velt", "tamsin", "quellport", "farrant", "moon", "lake", "river",
         "mountain", "island"]
COLOURS = ["red", "blue", "green", "purple"]
DOCS = [Document(id=f"d{i}", text=f"the {w} {WORDS[(i + 5) % 12]} is {COLOURS[i % 4]}") for i, w in enumerate(WORDS)]
QUESTIONS = [f"what is the {w} {x}" for w in WORDS[:8] for x in ("city", "vase")]
READERS = 8
ROUNDS = 4
ADD = dict(augmenter="passage", epochs=1, lr=0.05, new_adapters=1, progress=False)


def _writer(library: AdapterLibrary, states: dict, done: threading.Event) -> None:
    """Each round adds two absent documents, deletes two others and replaces a third's text, keeping every
    state it published by version."""
    by_id = {d.id: d for d in DOCS}
    try:
        for r in range(ROUNDS):
            held = library.doc_ids
            absent = [i for i in by_id if i not in held][:2]
            victims = [i for i in held if i not in absent][r % 3::3][:2]
            kept = [i for i in held if i not in victims]
            changed = Document(id=kept[(r * 5) % len(kept)], text=f"the {WORDS[r]} {WORDS[r + 3]} is {COLOURS[r]}")
            for step in (lambda: library.add_documents([by_id[i] for i in absent], **ADD),
                         lambda: library.delete_documents(victims),
                         lambda: library.update_documents([changed], **ADD)):
                time.sleep(0.05)  # let the readers run on this state
                step()
                states[library.version] = library.snapshot()
    finally:
        done.set()


def _weights(answer) -> torch.Tensor | None:
    return None if answer.mixture is None else answer.mixture.weights


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def _frozen(llm, state) -> AdapterLibrary:
    """A library that holds one state and is never updated."""
    return AdapterLibrary(llm, state.bank, state.documents, state.config, routing_logits=state.routing_logits)


def test_answers_during_updates_each_come_from_one_whole_state():
    llm = tiny_llm()
    library = random_poly_library(llm, DOCS[:8], m=4, logit_seed=2, logit_scale=3.0, bank_seed=5)
    retriever = BM25Retriever(DOCS, k=2)  # indexes documents before they are added and after they are deleted
    rag = PolyPRAG(llm, ParametricRetriever(retriever, library, on_unknown="skip"), max_new_tokens=4)
    states = {0: library.snapshot()}
    done = threading.Event()
    records: list[tuple] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(READERS + 1)

    def reader(r: int) -> None:
        gate.wait()
        i = r
        while not done.is_set() or i < len(QUESTIONS):  # until the updates end, and every question once
            q = QUESTIONS[i % len(QUESTIONS)]
            try:
                v0 = library.version
                answer = rag.answer(q)
                records.append((q, v0, library.version, answer))
            except BaseException as e:  # noqa: BLE001  (reported below)
                errors.append(e)
                return
            i += READERS

    threads = [threading.Thread(target=reader, args=(r,)) for r in range(READERS)]
    for t in threads:
        t.start()
    gate.wait()
    _writer(library, states, done)
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors[:3]
    assert sorted(states) == list(range(3 * ROUNDS + 1))

    expected: dict[tuple[str, int], tuple] = {}  # (question, version) -> (text, bank, weights), answered alone

    def alone(q: str, v: int) -> tuple:
        if (q, v) not in expected:
            lib = _frozen(llm, states[v])
            a = PolyPRAG(llm, ParametricRetriever(retriever, lib, on_unknown="skip"), max_new_tokens=4).answer(q)
            expected[q, v] = (a.text, [s.document.id for s in a.documents], _weights(a))
        return expected[q, v]

    spans = set()
    for q, v0, v1, answer in records:
        got = (answer.text, [s.document.id for s in answer.documents])
        owners = [v for v in range(v0, v1 + 1) if alone(q, v)[:2] == got and _same(alone(q, v)[2], _weights(answer))
                  and (answer.mixture is None or answer.mixture.bank is states[v].bank)]
        assert owners, (q, v0, v1, got, [alone(q, v)[:2] for v in range(v0, v1 + 1)])
        spans.add(v0)
    assert len(spans) >= 6  # answers started in at least 6 different states
    changed = [q for q in QUESTIONS if len({alone(q, v)[:2] == alone(q, 0)[:2] for v in states}) > 1]
    assert len(changed) >= 4  # the updates change answers: an answer from a half-applied state would show
