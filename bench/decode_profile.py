"""``python -m bench.decode_profile``: per-token decode cost with and without a mixture, and where it goes.

Figure 2's hot path in isolation: one KV-cached decode step, bare vs a one-row Poly-PRAG mixture vs a
16-row batch of different mixtures, then the top operators of the mixture step (torch.profiler).
"""
from __future__ import annotations

import argparse
import statistics

import torch

from polyprag import BankMixture, use_mixture

from . import common


def step_times(llm, rows: int, steps: int, mixture) -> float:
    """Median seconds of one decode step (one new token per row) after a short prompt."""
    enc = llm.encode([llm.question_prompt("Who built the Krell lighthouse on Tamsin Island?")] * rows)
    times = []
    with torch.no_grad(), use_mixture(mixture):
        out = llm.model(**enc, use_cache=True)
        cache, ids, mask = out.past_key_values, out.logits[:, -1:].argmax(-1), enc["attention_mask"]
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
            times.append(common.timed(lambda: llm.model(input_ids=ids, attention_mask=mask,
                                                        past_key_values=cache, use_cache=True), llm.device))
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.decode_profile")
    ap.add_argument("--device")
    ap.add_argument("--model")
    ap.add_argument("--random-llama", choices=sorted(common.RANDOM_LLAMAS))
    ap.add_argument("--tokenizer")
    ap.add_argument("--dtype")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    dtype = args.dtype or ("bfloat16" if (args.device or "").startswith("cuda") else None)
    llm = common.load_llm(args.model, args.random_llama, args.device, dtype, args.tokenizer)
    print(common.machine(llm))
    bank = common.random_bank(llm, 16)
    gen = torch.Generator().manual_seed(0)
    one = BankMixture(bank, torch.softmax(torch.randn(1, 1, 16, generator=gen), -1))
    many = BankMixture(bank, torch.softmax(torch.randn(16, 1, 16, generator=gen), -1))
    step_times(llm, 16, 4, many)  # warm-up: kernels, allocator and clocks, so neither side pays it
    for rows, mix in ((1, one), (16, many)):
        bare = step_times(llm, rows, args.steps, None)
        mixed = step_times(llm, rows, args.steps, mix)
        print(f"rows={rows:2d}: decode step bare {bare * 1e3:.2f} ms, mixture {mixed * 1e3:.2f} ms, "
              f"ratio {mixed / bare:.3f}", flush=True)
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if llm.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step_times(llm, 1, 6, one)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
