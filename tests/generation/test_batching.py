"""Generation batches: rows of similar length together, sized by memory, the same greedy answers as one by one."""
from __future__ import annotations

import pytest
import torch
from conftest import random_poly_library
from tiny import tiny_llm

from polyprag import LoRAMixingLLM
from polyprag.generation.batching import plan, row_bytes

QUESTIONS = ["who built the krell lighthouse", "what is the capital of zorvania",
             "who invented the vase", "what is the velt", "which island is the lighthouse on",
             "who is the king of the island and what is the currency of the country", "when was the vase painted"]

pytestmark = pytest.mark.usefixtures("one_thread")  # generation-heavy: one torch thread


def _prompts(llm, docs) -> list[str]:
    """Question prompts of very different lengths: some bare, some with one to three passages in context."""
    return [llm.question_prompt(q, [d.text for d in docs[: i % 4]]) for i, q in enumerate(QUESTIONS)]


@pytest.mark.parametrize("rows, memory, least_batches", [(512, None, 1), (2, None, 4), (512, 200_000, 3)],
                         ids=["default", "two-rows", "small-memory"])
def test_batched_greedy_answers_equal_one_by_one_in_order(docs, rows, memory, least_batches):
    llm = tiny_llm(max_batch_rows=rows, batch_memory=memory)
    library = random_poly_library(llm, docs, m=4)
    prompts = _prompts(llm, docs)
    mixtures = [library.mixture([docs[i % len(docs)].id]) for i in range(len(prompts))]
    mixtures[3] = None  # a bare row among mixed ones
    alone = [llm.generate([p], [m], max_new_tokens=8)[0] for p, m in zip(prompts, mixtures)]
    lengths = [len(llm.encode([p])["input_ids"][0]) for p in prompts]
    assert len(llm.plan_batches(lengths, 8)) >= least_batches
    assert llm.generate(prompts, mixtures, max_new_tokens=8) == alone
    assert len(set(alone)) > 1  # the rows differ, so a reordering would show


def test_one_mixture_object_for_all_rows_answers_like_one_by_one(docs):
    llm = tiny_llm(max_batch_rows=2)
    mix = random_poly_library(llm, docs, m=4).mixture([docs[0].id, docs[1].id])
    prompts = _prompts(llm, docs)
    assert llm.generate(prompts, mix, max_new_tokens=6) == [llm.generate([p], mix, max_new_tokens=6)[0]
                                                            for p in prompts]


def test_plan_holds_every_row_once_sorted_by_length_within_capacity():
    lengths = [30, 500, 31, 29, 480, 32, 30, 510, 28]
    batches = plan(lengths, capacity=lambda width: 4, overhead=50)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 4 for b in batches)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)


def test_plan_keeps_short_prompts_apart_from_long_ones_unless_a_batch_costs_more():
    lengths = [20] * 6 + [400]
    cheap_batches = plan(lengths, capacity=lambda width: 512, overhead=100)  # a CPU: prefill is dear
    assert [len(b) for b in cheap_batches] == [6, 1]
    dear_batches = plan(lengths, capacity=lambda width: 512, overhead=10_000)  # a GPU: decode steps are dear
    assert [len(b) for b in dear_batches] == [7]


def test_a_large_gpu_takes_hundreds_of_question_rows_at_once():
    from transformers import LlamaConfig

    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, vocab_size=49152)
    budget = int(0.6 * 100 * 2**30)  # an H200's free memory, share taken by one batch
    per_row = row_bytes(smollm2, width=60, new_tokens=32, cache_bytes=2)
    assert budget // per_row >= 512
    batches = plan([60] * 1000, capacity=lambda width: min(512, budget // per_row), overhead=2000 * 32)
    assert sorted(len(b) for b in batches) == [488, 512]


def test_batch_memory_bounds_each_batch():
    llm = tiny_llm(batch_memory=150_000)
    batches = llm.plan_batches([40] * 30, new_tokens=8)
    assert len(batches) > 1
    assert all(len(b) * row_bytes(llm.model.config, 40, 8, 4) <= 150_000 for b in batches)


def test_batch_limits_are_checked():
    with pytest.raises(Exception, match="max_batch_rows"):
        tiny_llm(max_batch_rows=0)
    assert isinstance(tiny_llm(batch_memory=10**9), LoRAMixingLLM)


def test_min_new_tokens_fixes_the_length_of_a_question_answer_that_ends_early():
    from polyprag.generation.llm import GenerationConfig

    llm = tiny_llm(spaced=True)
    with torch.no_grad():  # every token is "." (decoded ". . ."): the answer's sentence ends at its second token
        llm.model.lm_head.weight.zero_()
        llm.model.lm_head.bias = torch.nn.Parameter(torch.zeros(llm.model.lm_head.out_features))
        llm.model.lm_head.bias[llm.tokenizer.convert_tokens_to_ids(".")] = 10.0
    enc = llm.encode([llm.question_prompt("who built the krell lighthouse")])
    width = enc["input_ids"].shape[1]
    for least, expected in ((0, 2), (6, 6)):
        cfg = GenerationConfig(max_new_tokens=8, min_new_tokens=least)
        out = llm.model.generate(**enc, **llm._generate_kwargs(cfg, width, [True]))
        assert out.shape[1] - width == expected


def test_a_stream_cut_at_a_stop_string_joins_to_the_generated_answer():
    llm = tiny_llm(spaced=True)  # decodes with spaces between tokens
    prompt = llm.chat("say something")
    assert " purple" in llm.generate([prompt], max_new_tokens=12)[0]  # the cut leaves a space to hold back
    answer = llm.generate([prompt], max_new_tokens=12, stop=["purple"])[0]
    assert "".join(llm.stream(prompt, max_new_tokens=12, stop=["purple"])) == answer
