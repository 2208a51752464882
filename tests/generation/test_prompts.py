"""Prompts: the short-answer prefix ends a question prompt, and an answer is its first sentence."""
from __future__ import annotations

import pytest

from polyprag.generation.prompts import ANSWER_PREFIX, answer_target, first_sentence, sentence_end

pytestmark = pytest.mark.usefixtures("one_thread")  # generation-heavy: one torch thread


@pytest.mark.parametrize("text, answer", [
    (" Lubango. He was born", "Lubango"), (": St. Louis, Missouri. Later", "St. Louis, Missouri"),
    (" John F. Kennedy.", "John F. Kennedy"), (" politician\nQuestion: next", "politician"),
    (":\n\nactor.", "actor"), (" 3.5 million people.", "3.5 million people"), (" U.S. Army", "U.S. Army"),
])
def test_first_sentence_is_the_answer(text, answer):
    assert first_sentence(text) == answer


def test_sentence_end_waits_for_the_sentence():
    assert sentence_end(" Lubango") is None and sentence_end(" St.") is None
    assert sentence_end(" Lubango. ") == len(" Lubango.")
    assert answer_target("Lubango") == " Lubango." and answer_target("The answer is Paris.") == " Paris."


def test_question_prompt_ends_with_the_prefix_and_answers_are_short(llm):
    prompt = llm.question_prompt("who built the krell lighthouse")
    assert prompt.endswith(ANSWER_PREFIX)
    out = llm.generate([prompt, llm.chat("say something")], max_new_tokens=12)
    assert "\n" not in out[0] and not out[0].startswith(" ")
    # streaming a short answer yields exactly what generate returns
    assert "".join(llm.stream(prompt, max_new_tokens=12)) == out[0]
