"""The prompts polyprag sends: one question format for training and for asking, with or without passages."""
from __future__ import annotations

from typing import Sequence

PROMPT_VERSION = "1"
SHORT_ANSWER = "Answer the question with a short answer of a few words."


def question_message(question: str, passages: Sequence[str] = ()) -> str:
    """The user turn for a question; passages (in-context RAG) go before it."""
    if passages:
        ctx = "\n\n".join(f"Passage {i + 1}: {p}" for i, p in enumerate(passages))
        return f"{ctx}\n\n{SHORT_ANSWER}\nQuestion: {question}"
    return f"{SHORT_ANSWER}\nQuestion: {question}"
