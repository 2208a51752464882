"""Fitting a question prompt to the model's context with room for the answer: passages give way first; only a
question too long to fit alone is cut."""
from __future__ import annotations

import logging
from typing import Sequence

from ..generation.llm import LoRAMixingLLM

log = logging.getLogger(__name__)
MIN_PASSAGE_TOKENS = 8  # a passage cut shorter than this is dropped instead: a fragment tells the model little


def fit_prompt(llm: LoRAMixingLLM, question: str, passages: Sequence[str], answer_tokens: int) -> str:
    """The question prompt, fitted to the model's context with room for the answer: passages give way first
    (the lowest ranked is cut, then dropped); only a question too long to fit alone is cut (keeping its end)."""
    prompt = llm.question_prompt(question, passages)
    limit = llm.context_window - answer_tokens
    if len(prompt) <= limit:  # a token spans at least one character: nothing to count
        return prompt
    over = _tokens(llm, prompt) - limit
    if over <= 0:
        return prompt
    if passages and _tokens(llm, llm.question_prompt(question, ())) <= limit:
        return _fit_passages(llm, question, list(passages), limit)
    tok = llm.tokenizer
    q_ids = tok(question, add_special_tokens=False)["input_ids"]
    keep = max(1, len(q_ids) - over)
    log.warning("The question has %d tokens and does not fit the model's context (%d tokens); keeping its "
                "last %d. Ask a shorter question to use all of it.", len(q_ids), llm.context_window, keep)
    return llm.question_prompt(tok.decode(q_ids[-keep:]), passages)


def _fit_passages(llm: LoRAMixingLLM, question: str, passages: list[str], limit: int) -> str:
    """The prompt with the whole question and as much of the passages, in rank order, as fits in ``limit``."""
    given = len(passages)
    while passages:
        prompt = llm.question_prompt(question, passages)
        over = _tokens(llm, prompt) - limit
        if over <= 0:
            break
        keep = _tokens(llm, passages[-1]) - over  # tokens of the lowest-ranked passage that can stay
        cut = _head(llm.tokenizer, passages[-1], keep) if keep >= MIN_PASSAGE_TOKENS else ""
        if cut and len(cut) < len(passages[-1]):
            passages[-1] = cut
        else:  # too little would be left (or cutting does not shorten it): drop it
            passages.pop()
    else:
        prompt = llm.question_prompt(question, ())
    log.warning("The passages do not fit the model's context (%d tokens) beside the question; kept %d of %d "
                "(the last one possibly cut) and the whole question. Retrieve fewer or shorter passages to "
                "use all of them.", llm.context_window, len(passages), given)
    return prompt


def _tokens(llm: LoRAMixingLLM, text: str) -> int:
    return len(llm.tokenizer(text, add_special_tokens=False)["input_ids"])


def _head(tokenizer, text: str, n: int) -> str:
    """The first ``n`` tokens of ``text``, as the original characters where the tokenizer maps tokens to them."""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text[:offsets[n - 1][1]].rstrip()
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:n]).rstrip()
