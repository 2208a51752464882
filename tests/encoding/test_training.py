"""Training batches: length-sorted micro-batches give the same update, bucketed orders cut padding,
and mixed precision (autocast) runs every path."""
from __future__ import annotations

import random

import pytest
import torch

from polyprag import PolyPRAGEncoder, PRAGEncoder
from polyprag.encoding.augment import TrainingExample
from polyprag.errors import InvalidInputError
from polyprag.generation.models import pick_compute_dtype
from polyprag.encoding.training import Tokenized, bucketed_order, micro_batches

from tiny import tiny_llm


def _rows(lengths):
    return [Tokenized(list(range(n)), list(range(n))) for n in lengths]


def test_micro_batches_cover_every_row_once_within_the_budget():
    lengths = [5, 40, 7, 12, 40, 3, 90, 8]
    groups = micro_batches(_rows(lengths), max_tokens=40)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 40
    assert [6] in groups  # a row longer than the budget runs alone
    assert [lengths[i] for g in groups for i in g] == sorted(lengths)  # length-sorted


def test_bucketed_order_is_a_seeded_permutation_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.choice([30, 60, 120, 250]) + rng.randrange(10) for _ in range(203)]
    order = bucketed_order(lengths, 8, random.Random(1))
    assert sorted(order) == list(range(203))
    assert order == bucketed_order(lengths, 8, random.Random(1))
    assert order != bucketed_order(lengths, 8, random.Random(2))
    shuffled = list(range(203))
    random.Random(1).shuffle(shuffled)

    def padded(o):
        return sum(len(o[s:s + 8]) * max(lengths[i] for i in o[s:s + 8]) for s in range(0, len(o), 8))

    assert padded(order) < 0.8 * padded(shuffled)
    assert len(order) % 8 == 3 and set(order[-3:]) <= set(range(203))  # the short batch is the last one


LONG = ["the capital of zorvania is quellport and the velt is the currency of zorvania",
        "the krell lighthouse was built by farrant", "marisol invented the vase in 1998",
        "the lighthouse on tamsin island is painted purple", "the velt"]


def _examples(docs):
    return {d.id: [TrainingExample(target=d.text), TrainingExample(target=LONG[i % len(LONG)]),
                   TrainingExample(target="quellport", question="what is the capital of zorvania",
                                   context=d.text)]
            for i, d in enumerate(docs)}


@pytest.mark.parametrize("kind", ["poly", "prag"])
def test_micro_batched_training_equals_one_batch(docs, kind):
    from polyprag.encoding.augment import FixedAugmenter

    fixed = FixedAugmenter(_examples(docs))
    banks = []
    for budget in (100_000, 24):  # one micro-batch per step vs nearly one row per micro-batch
        llm = tiny_llm()
        if kind == "poly":
            enc = PolyPRAGEncoder(llm, num_adapters=3, epochs=2, batch_size=4, lr=1e-2, augmenter=fixed,
                                  max_batch_tokens=budget, progress=False)
        else:
            enc = PRAGEncoder(llm, lr=1e-2, epochs=2, augmenter=fixed, max_batch_tokens=budget, progress=False)
        banks.append(enc.fit(docs))
    a, b = banks
    changed = False
    for name, t in a.bank.tensors().items():
        torch.testing.assert_close(b.bank.tensors()[name], t, atol=1e-5, rtol=1e-4, msg=name)
        changed |= bool(t.abs().sum() > 0) and "lora_B" in name
    assert changed  # training moved B away from its zero init
    if kind == "poly":
        torch.testing.assert_close(b.routing_logits, a.routing_logits, atol=1e-5, rtol=1e-4)


def test_pick_compute_dtype():
    assert pick_compute_dtype(None, "cpu") is None
    assert pick_compute_dtype("float32", "cpu") is None
    assert pick_compute_dtype("bf16", "cpu") is torch.bfloat16
    assert pick_compute_dtype(torch.float16, "cpu") is torch.float16
    assert pick_compute_dtype("auto", "cpu") in (None, torch.bfloat16)
    with pytest.raises(InvalidInputError, match="not a floating dtype"):
        pick_compute_dtype("int8", "cpu")
    with pytest.raises(InvalidInputError, match="compute_dtype"):
        tiny_llm(compute_dtype="banana")


def test_linear_weights_stored_in_the_compute_dtype_compute_what_autocast_computes():
    """bf16 compute stores the frozen linear weights in bf16: bit for bit what autocast computes from float32."""
    import copy

    from tiny import tiny_model, tiny_tokenizer

    from polyprag import LoRAMixingLLM

    model = tiny_model()
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as in SmolLM2
    reference = copy.deepcopy(model)
    llm = LoRAMixingLLM(model, tiny_tokenizer(), compute_dtype="bfloat16")
    enc = llm.encode(["the capital of zorvania is", "who built the krell lighthouse"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = reference(**enc).logits
    assert torch.equal(llm.logits(**enc), want)
    linears = [m for m in llm.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    embeddings = llm.model.model.embed_tokens.weight
    assert embeddings.dtype == torch.float32 and llm.model.lm_head.weight is not embeddings  # own bf16 head
    assert llm.fingerprint() == LoRAMixingLLM(copy.deepcopy(reference), tiny_tokenizer()).fingerprint()
    assert LoRAMixingLLM(llm.model, llm.tokenizer).fingerprint() == llm.fingerprint()  # a second wrapper


def test_bfloat16_compute_runs_every_path_and_stays_close(docs):
    from conftest import random_poly_library

    exact, mixed = tiny_llm(), tiny_llm(compute_dtype="bfloat16")
    assert mixed.dtype == torch.float32  # embeddings, norms and LoRA factors stay float32
    lib = random_poly_library(exact, docs, m=3)
    mix = lib.mixture(["d0", "d2"])
    enc = exact.encode(["the capital of zorvania is", "who built the krell lighthouse"])
    one = exact.logits(**enc, mixture=mix)
    two = mixed.logits(**enc, mixture=mix)
    assert one.dtype == torch.float32 and two.dtype == torch.bfloat16
    assert (two.float() - one).abs().max() < 0.1 * one.abs().max()
    batched = [lib.mixture(["d0"]), lib.mixture(["d1", "d3"])]
    assert len(mixed.generate(["the capital of zorvania is", "the velt is"], mixtures=batched,
                              max_new_tokens=3)) == 2
    from polyprag.methods.lag import LAGLibrary, LAGRouter

    router = LAGRouter(LAGLibrary.from_adapter_library(lib), k=2)
    routed = mixed.logits(**enc, mixture=router).float()  # discrete routing: a near tie may flip in bf16
    assert torch.isfinite(routed).all()
    assert (routed - exact.logits(**enc, mixture=router)).abs().mean() < 0.02 * one.abs().max()
    assert "".join(mixed.stream("the velt is", mixture=mix, max_new_tokens=3)) is not None
    trained = PolyPRAGEncoder(mixed, num_adapters=2, epochs=1, augmenter="passage", progress=False).fit(docs)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in trained.bank.tensors().values())
