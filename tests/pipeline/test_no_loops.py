"""An answer that starts repeating a phrase ends there, in every mode: the tiny model loops when left to run,
its answers do not (the demo's loop, "The answer is: The answer to the question is: …", is cut the same way)."""
from __future__ import annotations

import pytest
from conftest import random_poly_library
from tiny import tiny_llm

from polyprag import MODES, BM25Retriever, ParametricRetriever, PolyPRAG
from polyprag.generation.prompts import repeat_end
from polyprag.generation.stopping import finish_answer

QUESTIONS = ["what is the capital of zorvania", "who built the krell lighthouse", "what is the currency of zorvania",
             "who invented the vase", "which island has a purple lighthouse"]


def loops(text: str) -> bool:
    """Whether some phrase of the text is followed at once by itself (the rule answers end by)."""
    return repeat_end(text) is not None


@pytest.mark.parametrize("text, answer", [
    (" The Krell Lighthouse was built by the Krell family of the Krell family of the Krell family",
     "The Krell Lighthouse was built by the Krell family of"),
    (" The Dunmarch range's highest peak is Mount Ferrow: Mount Ferrow: Mount Ferrow is first",
     "The Dunmarch range's highest peak is Mount Ferrow"),
    (": The answer to the question is: The answer to the question is: The answer",
     "The answer to the question is"),
    (" Walla Walla", "Walla Walla"), (" New York, New York.", "New York, New York"), (" Odo Farrant.", "Odo Farrant"),
])
def test_a_phrase_written_twice_in_a_row_ends_the_answer_a_doubled_name_does_not(text, answer):
    assert finish_answer(text, (), short=True) == answer


def test_no_answer_loops_in_any_mode_on_the_tiny_model(docs, one_thread):
    llm = tiny_llm(seed=1, spaced=True)  # spaced: the random model's loops are phrases of words
    library = random_poly_library(llm, docs, m=4)
    retriever = ParametricRetriever(BM25Retriever(docs, k=2), library)
    lag = library.mixture([docs[0].id])  # any mixture serves as the lag modes' router here
    free = llm.generate([llm.question_prompt(q) for q in QUESTIONS], max_new_tokens=48, short=False)
    assert sum(map(loops, free)) >= 3, free  # left to run, the model loops: the check below can fail
    for mode in MODES:
        rag = PolyPRAG(llm, retriever, mode=mode, lag=lag, max_new_tokens=48, recite_tokens=24)
        answers = [a.text for a in rag.answer_batch(QUESTIONS)]
        assert not any(map(loops, answers)), (mode, answers)
        if not MODES[mode].ensemble:  # the streamed pieces still add up to the batched answer
            assert "".join(rag.stream(QUESTIONS[1])) == answers[1], mode
