"""Stopping: where an answer ends (a stop string, the first sentence or line), checked in O(new tokens) per step."""
from __future__ import annotations

import string
from typing import Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria

from .prompts import REPEAT_CHARS, first_sentence, is_phrase, repeat_end, sentence_end

_WINDOW = 8  # tokens a stopping check re-decodes per step: a token can change the text of the few before it
#              (bytes that join into one character, a space cleaned up before punctuation)
_CONTEXT = 16  # characters before them that the check reads (or a stop string's length, if longer)
_WORD = 8  # letters: a word at least this long is no abbreviation, so cutting it keeps it one
_LETTERS = string.ascii_letters  # what sentence_end reads as a word


class _Continuations:
    """Each row's decoded continuation, followed from its newest tokens: a step costs O(new tokens), not O(T).

    Decoding is local: a token changes the text of at most the few tokens before it. So a step decodes
    the row's last ``_WINDOW`` tokens without and with its new ones, and swaps the one text for the other at
    the end of the row's text, of which only the last ``keep`` characters before them are kept. Special
    tokens that decoding skips are left out of the window (``decode`` leaves them out too), so that it starts
    at a token that is decoded. A row of up to two windows of such tokens is decoded all at once, as is one
    whose kept text does not end with the shorter window's text."""

    def __init__(self, tokenizer, prompt_len: int, keep: int = 0):
        self.tokenizer, self.prompt_len, self.keep = tokenizer, prompt_len, keep
        self.count: dict[int, int] = {}  # row -> how many of its tokens were read
        self.decoded: dict[int, int] = {}  # row -> how many of them decoding does not skip
        self.recent: dict[int, list[int]] = {}  # row -> the last of these (all, up to 2 * _WINDOW)
        self.text: dict[int, str] = {}  # row -> its text's end (all of it while self.whole[row])
        self.whole: dict[int, bool] = {}
        self.specials: set[int] | None = None  # the tokens that decoding might skip (read once)
        self.skips: dict[int, bool] = {}  # special token id -> whether decoding skips it

    def step(self, i: int, input_ids: torch.Tensor) -> tuple[str, str, str, bool] | None:
        """Read row ``i``'s new tokens. None: decoding skips them all, and the row's text is as it was.
        Else ``(dropped, before, new, whole)``: the text now ends with ``before + new``, ``new`` being its last
        tokens' text and ``before`` the ``keep`` or more characters before them (all of them, when fewer);
        ``dropped`` fell off the kept text before ``before``. ``whole``: ``new`` is all of the text."""
        n, m = input_ids.shape[1] - self.prompt_len, self.count.get(i, 0)
        fresh = [t for t in input_ids[i, self.prompt_len + m:].tolist() if not self._skipped(t)]
        self.count[i] = n
        if not fresh:
            return None
        recent, text, decoded = self.recent.get(i, []), self.text.get(i, ""), self.decoded.get(i, 0)
        window, every = recent + fresh, len(recent) == decoded  # every: the window holds all decoded tokens
        self.recent[i] = window if every and len(window) <= 2 * _WINDOW else window[-_WINDOW:]
        self.decoded[i] = decoded + len(fresh)
        new = self._decode(window)
        if every:  # its text is all of the text
            self.text[i], self.whole[i] = new, True
            return "", "", new, True
        old = self._decode(recent)
        if text.endswith(old) and (self.whole[i] or len(text) - len(old) >= self.keep):
            before = text[:len(text) - len(old)]
            cut = max(0, len(before) - self.keep)
            self.text[i], self.whole[i] = before[cut:] + new, self.whole[i] and not cut
            return before[:cut], before[cut:], new, False
        self.text[i], self.whole[i] = self._decode(input_ids[i, self.prompt_len:].tolist()), True
        return "", "", self.text[i], True

    def _skipped(self, token: int) -> bool:
        if self.specials is None:  # a tokenizer skips only its special and added tokens
            self.specials = (set(getattr(self.tokenizer, "all_special_ids", ()))
                             | set(getattr(self.tokenizer, "added_tokens_decoder", {})))
        if token not in self.specials:
            return False
        skips = self.skips.get(token)
        if skips is None:  # skipped: decoded only when special tokens are not skipped
            skips = self.skips[token] = (self._decode([token]) == ""
                                         and self.tokenizer.decode([token], skip_special_tokens=False) != "")
        return skips

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class SentenceStop(StoppingCriteria):
    """Stopping criterion: a short-answer row is done once its first sentence or line (or a stop string)
    has ended, or once it repeats a phrase (``repeat_end``), and not before ``min_tokens`` new tokens; other
    rows run on to their end-of-sequence token.

    A row still running had no stop string and no sentence end one step ago, so only its text's end can
    hold a new one: the check reads the characters from ``_CONTEXT`` before the new tokens' text on (from
    a word's start, or far enough into a long word), and a "#" stands for any earlier character that makes
    a line an answer (``sentence_end``). Its decisions are those of checking the whole text each step."""

    def __init__(self, tokenizer, prompt_len: int, rows: Sequence[bool], stop: Sequence[str],
                 every_row: bool = False, min_tokens: int = 0):
        self.tokenizer, self.prompt_len, self.stop = tokenizer, prompt_len, tuple(stop)
        self.min_tokens = min_tokens
        self.short = list(rows)
        self.check = [i for i, s in enumerate(self.short) if s or every_row]
        self.done = torch.zeros(len(self.short), dtype=torch.bool)
        self.context = max([_CONTEXT] + [len(s) for s in self.stop])  # a new stop string starts in it
        # the kept text's end holds a new stop string or sentence end, and a phrase and its repeat
        self.rows = _Continuations(tokenizer, prompt_len, keep=max(self.context + _WORD, 2 * REPEAT_CHARS[1]))
        self.blank: dict[int, bool] = {}  # row -> whether its text before the kept end is all " \t\n:"

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if input_ids.shape[1] - self.prompt_len < self.min_tokens:  # a fixed-length (timing) run goes on
            return self.done.to(input_ids.device)
        for i in self.check:
            if self.done[i]:  # a finished row only gathers padding
                continue
            step = self.rows.step(i, input_ids)
            if step is None:  # its text is as it was
                continue
            dropped, before, new, whole = step
            self.blank[i] = whole or (self.blank[i] and not dropped.strip(" \t\n:"))
            c = len(before) - self.context  # no new stop string or sentence end starts before this character
            if c <= 0:  # then ``before`` is the text's start
                c = 0
            else:  # start at the word's start, unless the word is too long to be an abbreviation anyway
                word = before[max(0, c - _WORD):c]
                letters = len(word) - len(word.rstrip(_LETTERS))
                c -= letters if letters < _WORD else 0
            head = "" if self.blank[i] and not before[:c].strip(" \t\n:") else "#"
            text = before[c:] + new
            self.done[i] = (cut_at_stop(text, self.stop) != text
                            or (self.short[i] and (sentence_end(head + text) is not None
                                                   or repeat_end(before + new, len(before)) is not None)))
        return self.done.to(input_ids.device)


class NoEmptyAnswer(LogitsProcessor):
    """A short-answer row may not end its turn before its answer holds a letter or digit: after the
    prefix, a small model sometimes writes ":" and stops (2WikiMultihopQA comparisons: 32 of 100).
    A waiting row's text had none one step ago, so only its last tokens' text is read."""

    def __init__(self, tokenizer, prompt_len: int, rows: Sequence[bool], stop_ids: Sequence[int]):
        self.tokenizer, self.prompt_len, self.stop_ids = tokenizer, prompt_len, list(stop_ids)
        self.waiting = [i for i, s in enumerate(rows) if s]  # short rows with no word yet
        self.rows = _Continuations(tokenizer, prompt_len)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        still = []
        for i in self.waiting:
            step = self.rows.step(i, input_ids)
            if step is None or not any(c.isalnum() for c in step[1] + step[2]):
                scores[i, self.stop_ids] = float("-inf")
                still.append(i)
        self.waiting = still
        return scores


def finish_answer(text: str, stop: Sequence[str], short: bool) -> str:
    """The decoded continuation cut at a stop string; a short answer also at its first sentence's end, and
    before the first repeat of a phrase written twice in a row (where ``SentenceStop`` stopped it)."""
    text = cut_at_stop(text, stop)
    if not short:
        return text.strip()
    end = repeat_end(text)
    return first_sentence(text if end is None else text[:end].rstrip(REPEAT_TRIM))


REPEAT_TRIM = " \t\n,;:"  # what an answer cut before a repeated phrase loses at its end


def held_back(text: str) -> int:
    """Where a short answer still being decoded may yet be cut by a repeated phrase (``finish_answer``): the
    first character of an end that could begin the repeat of the phrase before it (``len(text)`` if none)."""
    lo, hi = REPEAT_CHARS
    for start in range(max(lo, len(text) - hi + 1), len(text)):
        tail = text[start:]
        for n in range(max(lo, len(tail)), min(hi, start) + 1):
            phrase = text[start - n:start]
            if phrase.startswith(tail) and is_phrase(phrase):
                return start
    return len(text)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before its first stop string (all of it when none occurs)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if s and i != -1:
            cut = min(cut, i)
    return text[:cut]
