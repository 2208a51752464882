"""What the evaluation knows about a question beyond its text: its evidence, its kind, and the slice's prior.

PopQA's answer pages (the answer entity's own article, e.g. "Christchurch" for a birthplace) name the answer
by their title, so they are never evidence: ``evidence`` drops them from a question's gold passages, and the
oracle methods answer only the questions whose evidence states the answer (``gold_states_answer``).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from ..documents import Question
from .metrics import normalize_answer

# PopQA's question templates (Mallen et al. 2023), one per relation: the kind of a question without a "type"
POPQA_TEMPLATES = {
    "occupation": r"^What is .+'s? occupation\?$",
    "place of birth": r"^In what city was .+ born\?$",
    "genre": r"^What genre is .+\?$",
    "father": r"^Who is the father of .+\?$",
    "mother": r"^Who is the mother of .+\?$",
    "country": r"^In what country is .+\?$",
    "producer": r"^Who was the producer of .+\?$",
    "director": r"^Who was the director of .+\?$",
    "capital of": r"^What is .+ the capital of\?$",
    "capital": r"^What is the capital of .+\?$",
    "screenwriter": r"^Who was the screenwriter for .+\?$",
    "composer": r"^Who was the composer of .+\?$",
    "color": r"^What color is .+\?$",
    "religion": r"^What is the religion of .+\?$",
    "sport": r"^What sport does .+ play\?$",
    "author": r"^Who is the author of .+\?$",
}
_TEMPLATES = [(kind, re.compile(pattern)) for kind, pattern in POPQA_TEMPLATES.items()]


def evidence(question: Question) -> tuple[str, ...]:
    """The question's gold passages that are evidence: never one of its ``answer_pages``."""
    pages = set(question.metadata.get("answer_pages") or ())
    return tuple(g for g in question.gold if g not in pages)


def states_answer(question: Question) -> bool:
    """Whether the question's evidence states its answer (``gold_states_answer``; True when the slice does not say)."""
    return bool(question.metadata.get("gold_states_answer", True))


def question_kind(question: Question) -> str:
    """The question's kind: its ``type`` or ``relation``, else the PopQA relation its template asks, else "other"."""
    for key in ("type", "relation", "prop"):
        value = question.metadata.get(key)
        if isinstance(value, str) and value:
            return value
    text = question.question.strip()
    return next((kind for kind, pattern in _TEMPLATES if pattern.match(text)), "other")


def prior_answers(questions: Sequence[Question]) -> list[str]:
    """The prior control: for every question, the most frequent gold answer among the slice's questions of its
    kind (first aliases, compared normalised). It sees the slice's own answers, so it bounds what a prior alone
    answers from above."""
    counts: dict[str, Counter] = {}
    for q in questions:
        if q.answers:
            counts.setdefault(question_kind(q), Counter())[normalize_answer(q.answers[0])] += 1
    spelled = {normalize_answer(q.answers[0]): q.answers[0] for q in questions if q.answers}
    out = []
    for q in questions:
        top = counts.get(question_kind(q))
        out.append(spelled[min(top.items(), key=lambda kv: (-kv[1], kv[0]))[0]] if top else "")
    return out
