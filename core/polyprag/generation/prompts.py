"""The prompts polyprag sends: one question format for training and for asking, with or without passages.

As PRAG's ``prompt_template.py``, the assistant turn of a question is pre-filled with "The answer is",
so the model answers in a few words and the text it adds after the prefix is the answer; training
texts of generated QA use the same prompt and prefix, so training and asking agree.
"""
from __future__ import annotations

import re
from typing import Sequence

PROMPT_VERSION = "2"
SHORT_ANSWER = "Answer the question with a short answer of a few words."
ANSWER_PREFIX = "The answer is"

# a sentence ends at . ! ? followed by white space, unless the word before a period is an abbreviation
# ("St. Louis", "J. Smith", "U.S. Army") or a number ("22 Sept. 1974" is caught by the list)
_ABBREVIATIONS = frozenset("st mt ft dr mr mrs ms jr sr prof gen col lt sgt capt rev vs no co inc ltd corp "
                           "jan feb mar apr jun jul aug sep sept oct nov dec approx ca est".split())
_END = re.compile(r"[.!?](?=\s)|\n")
REPEAT_CHARS = (8, 80)  # an answer that writes a phrase of this many characters twice in a row has ended


def question_message(question: str, passages: Sequence[str] = ()) -> str:
    """The user turn for a question; passages (in-context RAG) go before it."""
    if passages:
        ctx = "\n\n".join(f"Passage {i + 1}: {p}" for i, p in enumerate(passages))
        return f"{ctx}\n\n{SHORT_ANSWER}\nQuestion: {question}"
    return f"{SHORT_ANSWER}\nQuestion: {question}"


def text_start_id(tokenizer) -> int | None:
    """The token a plain training text starts from, and so a recitation too: start-of-text, else end-of-text."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def answer_target(answer: str) -> str:
    """What the model learns to write after the prefix for a short answer: " <answer>." """
    answer = answer.strip()
    if answer.lower().startswith(ANSWER_PREFIX.lower()):
        answer = answer[len(ANSWER_PREFIX):].strip()
    return f" {answer.rstrip(' .')}."


def sentence_end(text: str) -> int | None:
    """Index just past the end of the first sentence or line of ``text``, or None while it has not ended."""
    for m in _END.finditer(text):
        if m.group() == "\n":
            if text[: m.start()].strip(" \t\n:"):
                return m.start()
            continue  # a leading blank line (or a lone colon) is not an answer
        word = re.search(r"([A-Za-z]+)$", text[: m.start()])
        if m.group() == "." and word and (word.group(1).lower() in _ABBREVIATIONS or len(word.group(1)) == 1):
            continue  # "St." / "J." / "U.S." do not end the sentence
        return m.end()
    return None


def repeat_end(text: str, start: int = 0) -> int | None:
    """Where an answer that repeats itself ends: the end of the first copy of the first phrase (8 to 80
    characters, ``is_phrase``) written twice in a row whose repeat ends after ``start``; None if none does
    ("the Krell family of the Krell family of" ends after its first "of")."""
    lo, hi = REPEAT_CHARS
    for end in range(max(start + 1, 2 * lo), len(text) + 1):
        last = text[end - 1]
        at = text.rfind(last, max(0, end - 1 - hi), end - lo)  # a phrase of n characters: text[end-1-n] == last
        while at != -1:
            n = end - 1 - at
            if 2 * n <= end and text[end - 2 * n:end - n] == text[end - n:end] and is_phrase(text[end - n:end]):
                return end - n
            at = text.rfind(last, max(0, end - 1 - hi), at)
    return None


def is_phrase(text: str) -> bool:
    """Whether a repeated text is a phrase (two words or more, or 16 characters), not a doubled name ("Walla Walla")."""
    return len(text) >= 16 or len(text.split()) >= 2


def split_sentences(text: str) -> list[str]:
    """The sentences (and lines) of a passage, in order, each stripped; abbreviations do not split."""
    out, rest = [], text.strip()
    while rest:
        end = sentence_end(rest + " ") or len(rest)
        if rest[:end].strip():
            out.append(rest[:end].strip())
        rest = rest[end:].strip()
    return out


def first_sentence(text: str) -> str:
    """The answer in a decoded continuation: its first sentence or line, without the final period."""
    end = sentence_end(text + " ")
    out = text[:end] if end is not None else text
    return out.strip().lstrip(":").strip().rstrip(".").strip()
