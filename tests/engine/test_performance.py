"""The inference fast path (fused in-place GEMM) against the plain delta path, and fixed-length decoding."""
from __future__ import annotations

import torch
from conftest import random_bank

from polyprag import BankMixture, GenerationConfig, Mixture, use_mixture


def _batch(llm, texts):
    return llm.encode(texts)


def test_fused_apply_equals_output_plus_delta_for_one_and_many_rows(llm):
    bank = random_bank(llm, 4)
    name = bank.names[0]
    fan_in, fan_out = bank.shapes[name]
    gen = torch.Generator().manual_seed(1)
    for rows in (1, 3):
        mix = BankMixture(bank, torch.rand(rows, 2, 4, generator=gen))
        x = torch.randn(rows, 5, fan_in, generator=gen)
        out = torch.randn(rows, 5, fan_out, generator=gen)
        with torch.no_grad():
            expected = out + mix.delta(name, x)
            got = mix.apply(name, x, out.clone())
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    one = BankMixture(bank, torch.rand(4, generator=gen))  # one row broadcast over a batch of 3
    x = torch.randn(3, 5, fan_in, generator=gen)
    out = torch.randn(3, 5, fan_out, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(one.apply(name, x, out.clone()), out + one.delta(name, x),
                                   atol=1e-5, rtol=1e-5)


def test_fast_path_logits_equal_the_generic_mixture_path(llm):
    bank = random_bank(llm, 5)
    enc = _batch(llm, ["the capital of zorvania is", "who built the krell lighthouse"])
    mix = BankMixture(bank, torch.softmax(torch.randn(2, 1, 5), -1))

    class Plain(Mixture):  # the generic Mixture.apply: output + delta, no fused GEMM
        rows = 2

        def delta(self, name, x):
            return mix.delta(name, x)

    fast = llm.logits(enc["input_ids"], enc["attention_mask"], mix)
    plain = llm.logits(enc["input_ids"], enc["attention_mask"], Plain())
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert (fast - llm.logits(enc["input_ids"], enc["attention_mask"])).abs().max() > 1e-3


def test_training_still_gets_gradients_through_the_mixture(llm):
    bank = random_bank(llm, 3)
    for p in bank.parameters():
        p.requires_grad_(True)
    logits = torch.zeros(1, 3, requires_grad=True)
    enc = _batch(llm, ["the velt is the currency of zorvania"])
    with use_mixture(BankMixture(bank, torch.softmax(logits, -1)[:, None])):
        llm.model(**enc).logits.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert all(p.grad is not None for p in bank.parameters())


def test_prepare_mixes_every_module_once_and_generation_reuses_it(llm):
    bank = random_bank(llm, 4)
    mix = BankMixture(bank, torch.rand(1, 3, 4)).prepare()
    cached = {n: mix._cache[n][0] for n in bank.names}
    llm.generate(["the capital of zorvania is"], [mix], max_new_tokens=4)
    assert all(mix._cache[n][0] is cached[n] for n in bank.names)  # nothing re-mixed per token


def test_min_new_tokens_fixes_the_answer_length(llm):
    enc = llm.encode(["the capital of"])
    width = enc["input_ids"].shape[1]
    first = llm.model.generate(**enc, **llm._generate_kwargs(GenerationConfig(max_new_tokens=1)))[0, width:]
    text = llm.tokenizer.decode(first)
    for min_new in (0, 6):  # the model's first token ends the answer: at once, unless 6 tokens are asked for
        kwargs = llm._generate_kwargs(GenerationConfig(max_new_tokens=6, min_new_tokens=min_new))
        kwargs["eos_token_id"] = [int(first[0])]  # as an end-of-turn token
        out = llm.model.generate(**enc, **kwargs)
        assert out.shape[1] - width == (min_new or 1)
        cfg = GenerationConfig(max_new_tokens=8, min_new_tokens=min_new, stop=(text,))  # as a stop string
        out = llm.model.generate(**enc, **llm._generate_kwargs(cfg, width, [True], every_row=True))
        assert out.shape[1] - width == (min_new or 1)
