"""The mixing engine's arithmetic against the bare model and against peft."""
from __future__ import annotations

import copy
import threading

import pytest
import torch
from conftest import random_bank
from tiny import tiny_model

from polyprag import BankMixture, InvalidInputError, use_mixture


def _ids(llm, texts):
    enc = llm.encode(texts)
    return enc["input_ids"], enc["attention_mask"]


def _peft_model(llm, bank, adapters: dict[str, int]):
    """A peft LoRA model on a clean copy of the base weights, one peft adapter per bank adapter."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model()
    base.load_state_dict(llm.model.state_dict())
    cfg = LoraConfig(r=bank.rank, lora_alpha=bank.alpha, target_modules=list(llm.target_modules),
                     init_lora_weights=False, lora_dropout=0.0)
    pm = None
    for name, j in adapters.items():
        if pm is None:
            pm = get_peft_model(base, copy.deepcopy(cfg), adapter_name=name)
        else:
            pm.add_adapter(name, copy.deepcopy(cfg))
        for mod_name in bank.names:
            layer = pm.base_model.model.get_submodule(mod_name)
            A, B = bank.factors(mod_name)
            layer.lora_A[name].weight.data.copy_(A[j])
            layer.lora_B[name].weight.data.copy_(B[j])
    return pm.eval()


def test_no_mixture_is_exactly_the_bare_model(llm):
    bare = tiny_model()  # same seed, no hooks
    ids, mask = _ids(llm, ["the capital of zorvania", "who built the lighthouse"])
    with torch.no_grad():
        expected = bare(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(llm.logits(ids, mask), expected)
    assert torch.equal(llm.logits(ids, mask, mixture=None), expected)


def test_mixture_changes_output_and_never_writes_base_weights(llm):
    before = {k: v.clone() for k, v in llm.model.state_dict().items()}
    bank = random_bank(llm, 3)
    ids, mask = _ids(llm, ["the capital of zorvania"])
    mixed = llm.logits(ids, mask, BankMixture(bank, torch.tensor([1.0, 0.0, 0.0])))
    assert (mixed - llm.logits(ids, mask)).abs().max() > 1e-3
    for k, v in llm.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_one_adapter_at_weight_one_equals_peft_lora(llm):
    bank = random_bank(llm, 3)
    ids, mask = _ids(llm, ["the capital of zorvania is", "who built the krell lighthouse"])
    ours = llm.logits(ids, mask, BankMixture(bank, torch.tensor([0.0, 1.0, 0.0])))
    pm = _peft_model(llm, bank, {"a1": 1})
    with torch.no_grad():
        theirs = pm(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_sum_of_deltas_equals_peft_cat_combination(llm):
    bank = random_bank(llm, 4)
    ids, mask = _ids(llm, ["the velt is the currency of"])
    onehots = torch.eye(4)[[0, 2, 3]]  # three documents' adapters, summed (PRAG)
    ours = llm.logits(ids, mask, BankMixture(bank, onehots[None]))
    pm = _peft_model(llm, bank, {"a0": 0, "a2": 2, "a3": 3})
    pm.add_weighted_adapter(["a0", "a2", "a3"], [1.0, 1.0, 1.0], "sum", combination_type="cat")
    pm.set_adapter("sum")
    with torch.no_grad():
        theirs = pm(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_polytropon_mixture_mixes_A_and_B_separately(llm):
    bank = random_bank(llm, 3)
    w = torch.tensor([0.2, 0.5, 0.3])
    name = bank.names[0]
    A, B = bank.factors(name)
    x = torch.randn(1, 4, A.shape[2])
    A_w = torch.einsum("j,jri->ri", w, A)
    B_w = torch.einsum("j,jor->or", w, B)
    expected = bank.scale * x @ (B_w @ A_w).T  # ΔW(d) = s·B(d)A(d)
    with torch.no_grad():
        got = BankMixture(bank, w).delta(name, x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rows_with_different_mixtures_equal_each_row_alone(llm):
    bank = random_bank(llm, 4)
    texts = ["the capital of zorvania is", "who built the krell lighthouse", "the velt"]
    mixtures = [BankMixture(bank, torch.tensor([1.0, 0, 0, 0])), None,
                BankMixture(bank, torch.tensor([[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 1.0]])[None])]
    batch = llm._batch_mixture(mixtures, 3)
    ids, mask = _ids(llm, texts)
    together = llm.logits(ids, mask, batch)
    for i, (t, m) in enumerate(zip(texts, mixtures)):
        ids1, mask1 = _ids(llm, [t])
        alone = llm.logits(ids1, mask1, m)[0]
        n = ids1.shape[1]
        torch.testing.assert_close(together[i, -n:], alone, atol=1e-5, rtol=1e-4)


def test_batched_generation_matches_one_by_one(llm):
    bank = random_bank(llm, 3)
    prompts = [llm.question_prompt(q) for q in ["who built the lighthouse", "the capital", "velt"]]
    mixtures = [BankMixture(bank, torch.eye(3)[i]) for i in range(3)]
    together = llm.generate(prompts, mixtures, max_new_tokens=6)
    alone = [llm.generate([p], [m], max_new_tokens=6)[0] for p, m in zip(prompts, mixtures)]
    assert together == alone


def test_mixture_is_per_thread(llm):
    bank = random_bank(llm, 2)
    ids, mask = _ids(llm, ["the capital of zorvania"])
    bare = llm.logits(ids, mask)
    seen = {}
    ready, done = threading.Event(), threading.Event()

    def other_thread():
        ready.wait()
        seen["logits"] = llm.logits(ids, mask)  # no mixture here, whatever the main thread does
        done.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with use_mixture(BankMixture(bank, torch.tensor([1.0, 0.0]))):
        ready.set()
        done.wait(10)
    t.join()
    assert torch.equal(seen["logits"], bare)


def test_bad_mixture_shapes_are_refused(llm):
    bank = random_bank(llm, 3)
    with pytest.raises(InvalidInputError, match="adapters that exist"):
        BankMixture(bank, torch.ones(5))
    with pytest.raises(InvalidInputError, match="NaN"):
        BankMixture(bank, torch.tensor([float("nan"), 0, 0]))
    with pytest.raises(InvalidInputError, match="one per prompt"):
        llm.generate(["a", "b"], [None])
