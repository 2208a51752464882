"""Captured decoding (static KV cache, compiled decode step): the same answers as eager decoding, a mixture
per row, and new mixtures reuse the compiled step instead of compiling again."""
from __future__ import annotations

import pytest
import torch
from conftest import random_bank

from polyprag import BankMixture
from polyprag.engine.captured import MixtureSlot
from tiny import tiny_llm

pytestmark = pytest.mark.usefixtures("one_thread")


def _mixtures(llm, seed: int):
    bank = random_bank(llm, 4, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    rows = [BankMixture(bank, torch.softmax(torch.randn(2, 4, generator=gen), -1)) for _ in range(2)]
    return [rows[0], None, rows[1]]  # the middle row runs the bare model


def test_a_slot_adds_what_the_mixture_adds(llm):
    prompts = ["the capital of zorvania is", "who built the krell lighthouse", "the velt is", "marisol invented"]
    stacked = BankMixture.stack(_mixtures(llm, 0) + [None])
    enc = llm.encode(prompts)
    slot = MixtureSlot(llm.module_shapes, rows=4, rank=8, dtype=torch.float32, device=llm.device).load(stacked)
    got = llm.logits(**enc, mixture=slot)
    torch.testing.assert_close(got, llm.logits(**enc, mixture=stacked), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, llm.logits(**enc))  # the mixtures do change the output
    slot.load(BankMixture.stack(_mixtures(llm, 1)))  # 3 rows into a 4-row slot: the 4th adds exactly nothing
    assert all(float(t[3].abs().sum()) == 0 for t in (*slot.A.values(), *slot.B.values()))
    with pytest.raises(ValueError, match="rank"):
        MixtureSlot(llm.module_shapes, rows=4, rank=2, dtype=torch.float32, device=llm.device).load(stacked)


@pytest.mark.compile
def test_captured_generation_answers_as_eager_generation():
    eager = tiny_llm()
    captured = tiny_llm(captured=True)
    prompts = ["the capital of zorvania is", "who built the krell lighthouse", "the velt is"]
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for seed in (0, 1):  # the second request's new mixtures reuse the compiled step
        mixtures = _mixtures(eager, seed)
        want = eager.generate(prompts, mixtures=mixtures, max_new_tokens=6, short=False)
        got = captured.generate(prompts, mixtures=mixtures, max_new_tokens=6, short=False)
        assert got == want  # request 2 too: the compiled step reads the slot's new values, not request 1's
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0, "the decode step was not compiled"
    assert graphs[1] == graphs[0], "new mixtures of the same shape compiled the step again"
    assert list(captured._slots) == [(4, 8)]  # 3 rows in a 4-row slot of rank 8 (2 terms × rank 2, bucketed)
    assert captured.generate(prompts, max_new_tokens=6, short=False) == \
        eager.generate(prompts, max_new_tokens=6, short=False)  # no mixture at all: the bare model
