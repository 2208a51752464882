"""Stopping checks follow each row's text from its newest tokens (O(new tokens) a step), and decide exactly
what checking the whole decoded continuation at every step decided."""
from __future__ import annotations

import random
import re

import pytest
import torch
from tiny import tiny_llm, tiny_tokenizer

import polyprag.generation.llm as llm_module
import polyprag.generation.stopping as stopping
from polyprag.generation.stopping import cut_at_stop
from polyprag.generation.prompts import repeat_end, sentence_end


class WholeTextStop:
    """The reference: decodes every row's whole continuation at every step (O(T) a step, O(T²) an answer)."""

    def __init__(self, tokenizer, prompt_len, rows, stop, every_row=False, min_tokens=0):
        self.tokenizer, self.prompt_len, self.stop, self.min_tokens = tokenizer, prompt_len, tuple(stop), min_tokens
        self.short = list(rows)
        self.check = [i for i, s in enumerate(self.short) if s or every_row]
        self.done = torch.zeros(len(self.short), dtype=torch.bool)

    def __call__(self, input_ids, scores, **kwargs):
        if input_ids.shape[1] - self.prompt_len < self.min_tokens:
            return self.done.to(input_ids.device)
        for i in self.check:
            if self.done[i]:
                continue
            text = self.tokenizer.decode(input_ids[i, self.prompt_len:], skip_special_tokens=True)
            self.done[i] = cut_at_stop(text, self.stop) != text or (self.short[i] and (
                sentence_end(text) is not None or repeat_end(text) is not None))
        return self.done.to(input_ids.device)


class WholeTextNoEmpty:
    """The reference for ``_NoEmptyAnswer``: decodes a waiting row's whole continuation at every step."""

    def __init__(self, tokenizer, prompt_len, rows, stop_ids):
        self.tokenizer, self.prompt_len, self.stop_ids = tokenizer, prompt_len, list(stop_ids)
        self.waiting = [i for i, s in enumerate(rows) if s]

    def __call__(self, input_ids, scores):
        still = []
        for i in self.waiting:
            text = self.tokenizer.decode(input_ids[i, self.prompt_len:], skip_special_tokens=True)
            if not any(c.isalnum() for c in text):
                scores[i, self.stop_ids] = float("-inf")
                still.append(i)
        self.waiting = still
        return scores


# Text that does not end a sentence (abbreviations, single letters, a period inside a number), text that
# may, and a start of blank lines and colons (which a line end after does not make an answer).
SAFE = [" the", " capital", " of", " zorvania", " st. ", " mr. ", " j. ", " approx. ", " sept. ", " 3.5", " a.b",
        "theaofis", " quellport", " x", ",", " ", "  ", " é", " 中", " 😀"]
ENDING = [". ", "!", "? ", "\n", " zz", " ab c", "\n\n", "x. ", "capital. ", "pprox. ", "t. ",
          " " * 90 + "\n", ":" * 80 + "\n"]
BLANK = [" ", ":", "\n", "\t", " :", "\n\n"]


def random_text(rng: random.Random, size: int = 600) -> str:
    """A blank start of 0-120 characters, safe text and now and then an ending piece; a long letter run."""
    out = "".join(rng.choice(BLANK) for _ in range(rng.choice([0, 0, 3, 40, 120])))
    while len(out) < size:
        r = rng.random()
        if r < 0.04:
            out += rng.choice(ENDING)
        elif r < 0.06:
            out += "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(50, 90))) + ". "
        else:
            out += rng.choice(SAFE)
    return out


def encode(tokenizer, text: str) -> list[int]:
    """The text's tokens; a word that the tiny tokenizer does not know goes letter by letter."""
    if len(tokenizer) > 1000:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    vocab = tokenizer.get_vocab()
    pieces = re.findall(r"[A-Za-z0-9]+|\s|[^A-Za-z0-9\s]", text)
    return [vocab.get(t, tokenizer.unk_token_id) for p in pieces for t in ([p] if p in vocab else list(p))]


def token_rows(tokenizer, rng: random.Random, rows: int, length: int) -> list[list[int]]:
    """``rows`` rows of ``length`` tokens: a random text's tokens, special tokens (which decoding skips) here
    and there."""
    specials = [i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None]
    out = []
    for _ in range(rows):
        ids: list[int] = []
        while len(ids) < length:
            ids += encode(tokenizer, random_text(rng))
        ids = ids[:length]
        ends = [at for at, t in enumerate(ids) if tokenizer.decode([t]).endswith((".", "?"))]
        for _ in range(rng.randint(0, 4)):  # some alone, some a run longer than the checks' window
            at = rng.choice(ends) + 1 if ends and rng.random() < 0.5 else rng.randrange(length)
            run = rng.choice([1, 1, 20])
            ids[at:at + run] = [rng.choice(specials) for _ in ids[at:at + run]]
        out.append(ids)
    return out


# Rows that end where the check's kept text is thin: a line end long after the only word, an abbreviation
# across the checked text's start, a stop string longer than it, a sentence end after a run of skipped tokens.
SKIPPED = None  # a run of 20 special tokens
EDGES = [["x" + " " * 90 + "\n"], ["x" + ":" * 90 + "\n"], [":" * 100 + "\nthe capital\n"], ["\n" * 80 + "the. "],
         *[[" " * k + "the approx. " + "of the st. x. " * 7 + "capital. "] for k in range(0, 12)],
         ["q" * 69 + " " + "q" * 75 + ". "], ["a" * 100 + ". "], ["the x.", SKIPPED, "b the capital. "],
         ["the capital", SKIPPED, SKIPPED, "\nthe"], ["\n", SKIPPED, "the: a\n"],
         # answers that loop: a phrase twice in a row ends them, wherever the window stands
         ["the krell was built by" + " the krell family of" * 6], ["x" + " " * 70 + " mount ferrow:" * 5],
         ["the answer is:" + " the answer to the question is:" * 4], [":" * 90 + "city" + "*purple&&&sP[" * 4],
         ["the capital", SKIPPED, " of the capital", SKIPPED, " of the capital of"], ["walla walla " + "x " * 60]]


def edge_rows(tokenizer, rng: random.Random, length: int) -> list[list[int]]:
    specials = [i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None]
    out = []
    for pieces in EDGES:
        ids: list[int] = []
        for piece in pieces:
            ids += [rng.choice(specials) for _ in range(20)] if piece is SKIPPED else encode(tokenizer, piece)
        while len(ids) < length:
            ids += encode(tokenizer, random_text(rng))
        out.append(ids[:length])
    return out


def real_tokenizer():
    """SmolLM2's byte-level BPE tokenizer (merges bytes across tokens), where the model cache holds it."""
    from polyprag.generation.models import DEFAULT_MODEL, cache_dir

    folder = cache_dir() / "models" / DEFAULT_MODEL
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the default model's tokenizer is not in the model cache")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


class NotLocal:
    """The tiny tokenizer with a decoding that is not local: every text starts with a line break (as a
    WordPiece decoder keeps the "##" of a text's first token), so a window's text is not how the text ends."""

    def __init__(self, tokenizer):
        self.tokenizer, self.unk_token_id = tokenizer, tokenizer.unk_token_id
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    def __len__(self):
        return len(self.tokenizer)

    def get_vocab(self):
        return self.tokenizer.get_vocab()

    def decode(self, ids, skip_special_tokens=False):
        return "\n" + self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


TOKENIZERS = {"words": lambda: tiny_tokenizer(), "spaced": lambda: tiny_tokenizer(spaced=True),
              "byte_bpe": real_tokenizer, "not_local": lambda: NotLocal(tiny_tokenizer())}
CASES = [  # (stop strings, min_tokens, every_row)
    ((), 0, False), (("zz",), 0, True), (("ab c", "\n\n"), 5, True), (("q" * 70,), 0, False),
    ((), 30, False), (("zz", "é 中"), 0, False),
]


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_each_step_decides_what_decoding_the_whole_text_decides(name):
    tokenizer = TOKENIZERS[name]()
    rng = random.Random(7)
    prompt_len, length = 5, 240
    short = [True, True, True, False, True, False, True, True] + [True] * len(EDGES)
    lengths: set[int] = set()
    for seed, (stop, min_tokens, every_row) in enumerate(CASES):
        draw = random.Random(seed)
        ids = torch.tensor(token_rows(tokenizer, draw, len(short) - len(EDGES), prompt_len + length)
                           + [[0] * prompt_len + r for r in edge_rows(tokenizer, draw, length)])
        ids[:, :prompt_len] = torch.tensor([rng.randrange(len(tokenizer)) for _ in range(prompt_len)])
        new = stopping.SentenceStop(tokenizer, prompt_len, short, stop, every_row, min_tokens)
        ref = WholeTextStop(tokenizer, prompt_len, short, stop, every_row, min_tokens)
        new_empty = stopping.NoEmptyAnswer(tokenizer, prompt_len, short, [0, 3])
        ref_empty = WholeTextNoEmpty(tokenizer, prompt_len, short, [0, 3])
        stopped_at = {}
        for n in range(length + 1):
            seen = ids[:, :prompt_len + n]
            scores = torch.zeros(len(short), 8)
            assert torch.equal(new_empty(seen, scores.clone()), ref_empty(seen, scores.clone())), (name, seed, n)
            if n:
                done = ref(seen, None)
                assert torch.equal(new(seen, None), done), (name, seed, stop, n)
                stopped_at.update({i: n for i in map(int, done.nonzero().flatten()) if i not in stopped_at})
        lengths |= set(stopped_at.values())
    # not trivial: rows stop at many lengths, some after the checked text's window has moved far on
    assert len(lengths) >= 10 and max(lengths) > 100, sorted(lengths)


def decoded_sizes(tokenizer, monkeypatch) -> list[int]:
    """Spy: the number of tokens in each single ``tokenizer.decode`` call (a batch decode is left out)."""
    sizes: list[int] = []
    decode = tokenizer.decode

    def spy(ids, *args, **kwargs):
        flat = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if not flat or not isinstance(flat[0], list):
            sizes.append(len(flat))
        return decode(ids, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "decode", spy)
    return sizes


def test_a_step_decodes_the_new_tokens_window_not_the_whole_answer(monkeypatch):
    tokenizer = tiny_tokenizer()
    from tiny import WORDS

    text = tokenizer(" ".join(WORDS * 5), add_special_tokens=False)["input_ids"]  # no phrase twice in a row
    colons = tokenizer(":", add_special_tokens=False)["input_ids"]
    rows = torch.tensor([text[:300], (colons * 300)])  # no sentence end, no stop string
    waiting = torch.tensor([colons * 300] * 2)  # no word yet
    for name, make_stop, make_empty in (("incremental", stopping.SentenceStop, stopping.NoEmptyAnswer),
                                        ("whole text", WholeTextStop, WholeTextNoEmpty)):
        sizes = decoded_sizes(tokenizer, monkeypatch)
        stop = make_stop(tokenizer, 0, [True, False], ("never",), every_row=True)
        empty = make_empty(tokenizer, 0, [True, True], [0])
        per_step = []  # tokens decoded at each step, both checks and all rows together
        for n in range(1, 301):
            before = len(sizes)
            assert torch.isinf(empty(waiting[:, :n], torch.zeros(2, 4))[:, 0]).all()
            assert not stop(rows[:, :n], None).any()
            per_step.append(sum(sizes[before:]))
        monkeypatch.undo()
        if name == "incremental":  # a window of a few tokens per row and step, however long the answer
            assert max(per_step[20:]) <= 4 * (2 * stopping._WINDOW + 1), per_step  # after meeting each token once
            assert max(per_step[-50:]) <= max(per_step[:50]), per_step
        else:  # the measure sees the whole-text check grow with the answer: O(T) a step
            assert per_step[-1] == 4 * 300 and per_step[-1] > 10 * per_step[9], per_step


def prompts_of(llm):
    return [llm.question_prompt("what is the capital of zorvania"), llm.question_prompt("who built the krell"),
            "the lighthouse on tamsin island is", llm.question_prompt("when was the vase invented", ["marisol"])]


@pytest.mark.parametrize("model, options", [
    ((0, False), dict()), ((0, False), dict(stop=("purple",))), ((0, False), dict(stop=("\n", "a"))),
    ((2, True), dict()), ((2, True), dict(short=False, stop=("currency",))), ((3, True), dict(stop=("m m",))),
    ((3, True), dict(short=True, stop=("is",))), ((3, True), dict(min_new_tokens=12, short=True)),
])
def test_answers_and_tokens_equal_those_of_the_whole_text_check(one_thread, monkeypatch, model, options):
    llm = tiny_llm(seed=model[0], spaced=model[1])  # seeds 2 and 3 end sentences ("... i ? s ...")
    prompts = prompts_of(llm)
    cfg = llm_module._config(None, dict(max_new_tokens=40, **options))
    enc = llm.encode(prompts)
    short = [llm_module._is_short(p, cfg) for p in prompts]

    def decoded():
        kwargs = llm._generate_kwargs(cfg, enc["input_ids"].shape[1], short, every_row=bool(cfg.stop))
        with torch.no_grad():
            tokens = llm.model.generate(**enc, **kwargs)
        return tokens, llm.generate(prompts, config=cfg), "".join(llm.stream(prompts[-1], config=cfg))

    tokens, answers, streamed = decoded()
    monkeypatch.setattr(llm_module, "SentenceStop", WholeTextStop)
    monkeypatch.setattr(llm_module, "NoEmptyAnswer", WholeTextNoEmpty)
    whole_tokens, whole_answers, whole_streamed = decoded()
    assert tokens.shape == whole_tokens.shape and torch.equal(tokens, whole_tokens)  # the same stopping step
    assert (answers, streamed) == (whole_answers, whole_streamed)


def test_generation_decodes_windows_while_its_answers_grow(llm, one_thread, monkeypatch):
    prompts = prompts_of(llm)
    enc = llm.encode(prompts)
    kwargs = llm._generate_kwargs(llm_module.GenerationConfig(max_new_tokens=60, stop=("never",)),
                                  enc["input_ids"].shape[1], [False] * len(prompts), every_row=True)
    kwargs["eos_token_id"] = kwargs["pad_token_id"] = llm.tokenizer.pad_token_id  # rows run to 60 tokens
    sizes = decoded_sizes(llm.tokenizer, monkeypatch)
    with torch.no_grad():
        out = llm.model.generate(**enc, **kwargs)
    assert out.shape[1] - enc["input_ids"].shape[1] == 60
    assert len(sizes) >= 60 * len(prompts) and max(sizes) <= 2 * stopping._WINDOW + 1, sizes


def test_a_short_answer_cannot_end_before_it_holds_a_word():
    """After "The answer is", ":" then end-of-turn is refused (the stop ids get -inf) until a word appears."""
    from polyprag.generation.stopping import NoEmptyAnswer

    class Tok:
        words = {5: ":", 6: "Paris", 7: "\n"}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.words.get(int(i), "") for i in ids)

    proc = NoEmptyAnswer(Tok(), prompt_len=2, rows=[True, True, False], stop_ids=[0])
    ids = torch.tensor([[1, 1, 5, 7], [1, 1, 5, 6], [1, 1, 5, 7]])
    scores = proc(ids, torch.zeros(3, 8))
    assert scores[0, 0] == float("-inf") and scores[0, 1:].eq(0).all()  # ":\n" is no answer yet
    assert scores[1:].eq(0).all()  # "Paris" may end; a free-text row is never held
    assert proc.waiting == [0]
