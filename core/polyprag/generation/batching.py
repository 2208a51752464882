"""Generation batches: rows of similar prompt length together, each batch as large as memory allows.

A batch of ``rows`` prompts left-padded to ``width`` tokens costs about ``rows · width`` prefill tokens plus
a fixed cost per decode step (reading every weight, launching every kernel) that does not grow with its
rows. ``plan`` splits the length-sorted rows into contiguous batches minimising

    Σ_batches rows · width + overhead          (overhead = that fixed decode cost in prefill tokens)

exactly, by dynamic programming, with every batch within ``capacity(width)`` rows (what fits in memory).
A GPU, whose decode steps are launch-bound, pays a large overhead and so takes hundreds of rows at once; a
CPU, whose prefill is dear, splits a batch rather than pad short prompts to a long one.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

# One decode step costs as much as prefilling this many prompt tokens (per batch, whatever its rows).
# Measured with SmolLM2-135M on one CPU thread: 58 ms per step against 2.8 ms per prefilled token;
# a GPU's eager decode step is bound by kernel launches, thousands of tokens' worth of prefill.
STEP_TOKENS = {"cpu": 20.0, "cuda": 2000.0}
MEMORY_SHARE = {"cpu": 0.25, "cuda": 0.6}  # share of the free memory one generation batch may take


def plan(lengths: Sequence[int], capacity: Callable[[int], int], overhead: float) -> list[list[int]]:
    """Row indices in batches: ascending prompt length, each batch at most ``capacity(its width)`` rows.

    Rows of equal length keep their order; the batches together hold every row once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    widths = np.array([lengths[i] for i in order], dtype=np.float64)
    n = len(order)
    best = np.zeros(n + 1)  # best[j]: cheapest cost of the first j sorted rows
    start = np.zeros(n + 1, dtype=np.int64)  # start[j]: where the last batch of that plan begins
    for j in range(1, n + 1):
        first = max(0, j - max(1, int(capacity(int(widths[j - 1])))))
        begins = np.arange(first, j)
        cost = best[first:j] + (j - begins) * widths[j - 1] + overhead  # the batch's width is its last row's
        k = int(np.argmin(cost))  # ties: the earliest start, i.e. the larger batch
        best[j], start[j] = cost[k], first + k
    batches, j = [], n
    while j > 0:
        batches.append(order[start[j]: j])
        j = int(start[j])
    return batches[::-1]


def free_memory(device: torch.device) -> int:
    """Bytes free for a generation batch on ``device`` now (a CPU: the memory the OS reports available)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30  # no /proc: assume a small machine


def row_bytes(config, width: int, new_tokens: int, cache_bytes: int) -> int:
    """Memory one row of ``width`` prompt tokens holds while it generates ``new_tokens``: its KV cache,
    one layer's activations during the prefill (attention scores included) and its logits."""
    hidden = int(getattr(config, "hidden_size", 1024))
    layers = int(getattr(config, "num_hidden_layers", 24))
    heads = int(getattr(config, "num_attention_heads", 16))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    inner = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    vocab = int(getattr(config, "vocab_size", 32000))
    kv = 2 * layers * kv_heads * head_dim * cache_bytes * (width + new_tokens)  # [2, layers, kv_heads, T, d]
    activations = 4 * width * (4 * hidden + 3 * inner + heads * width)  # float32 worst case, one layer
    return kv + activations + 8 * vocab  # + the last position's logits and their float32 scores
