"""The pipeline's prompt: passages that overflow the context give way to the question; a prompt that fits is left
alone."""
from __future__ import annotations

import logging

import pytest

from conftest import random_poly_library
from polyprag import BM25Retriever, Document, ParametricRetriever, PolyPRAG

QUESTION = "who built the krell lighthouse"


def fixed(*documents):
    """A plain callable retriever that returns these documents whatever the query."""
    return lambda query: list(documents)


def long_passage(i: int, words: int = 400) -> Document:
    return Document(id=f"long{i}", text=" ".join(["the lighthouse was painted purple"] * (words // 5)), title=f"p{i}")


@pytest.mark.parametrize("mode", ["in_context", "combine"])
def test_passages_over_the_context_are_cut_and_the_question_survives_whole(llm, docs, caplog, mode):
    library = random_poly_library(llm, docs + [long_passage(i) for i in range(3)], m=3)
    question = "who built the krell lighthouse on tamsin island in 1911 and what is the capital of zorvania"
    rag = PolyPRAG(llm, ParametricRetriever(fixed(*[long_passage(i) for i in range(3)]), library), mode=mode,
                   max_new_tokens=5)
    with caplog.at_level(logging.WARNING, logger="polyprag"):
        answer = rag.answer(question)
    prompt_tokens = len(llm.tokenizer(answer.prompt, add_special_tokens=False)["input_ids"])
    assert prompt_tokens <= llm.context_window - 5  # room for the answer
    assert f"Question: {question}" in answer.prompt  # every token of the question
    assert "Passage 1: p0:" in answer.prompt and "Passage 3:" not in answer.prompt  # the lowest ranked went first
    assert any("kept 1 of 3" in r.getMessage() and "whole question" in r.getMessage() for r in caplog.records)
    assert isinstance(answer.text, str)


def test_a_prompt_that_fits_is_left_alone(llm, docs, caplog):
    library = random_poly_library(llm, docs, m=3)
    rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs, k=3), library), mode="combine", max_new_tokens=5)
    with caplog.at_level(logging.WARNING, logger="polyprag"):
        answer = rag.answer(QUESTION)
    assert answer.prompt == llm.question_prompt(QUESTION, [s.document.full_text for s in answer.documents])
    assert not caplog.records
