"""Training recipes: which texts each document is trained on, and how long and how fast.

``default`` is the recipe measured to inject knowledge into the default model (see the README's
recipe table and ``bench/results/recipes``); ``prag-paper`` is PRAG's published setting (Su et al.
2025, oneal2000/PRAG: passage, rewrite and 3 generated QA pairs shown with the passage, with the rewrite
and without context; rank 2, alpha 32, lr 3e-4, 1 epoch), which a 1B–8B model learns from in one pass
and a 135M model does not.

Training texts (``texts``): ``passage`` (the document itself), ``recall`` ("What do you know about
<title>?" answered with the passage: no generation needed), ``sentences`` (the recall question answered by
each sentence of the passage on its own, so that any one fact can start an answer), ``rewrite`` (the model's rewrite of it),
``qa`` (each generated question answered with no context: what parametric answering asks of the
adapter), ``qa_context`` (each generated QA with the passage, and with the rewrite, in the prompt).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidInputError

TEXT_KINDS = ("passage", "recall", "sentences", "rewrite", "qa", "qa_context")
FREE_TEXTS = frozenset({"passage", "recall", "sentences"})  # made from the passage alone, no generation
PRAG_TEXTS = ("passage", "rewrite", "qa", "qa_context")  # PRAG's augmentation


@dataclass(frozen=True)
class Recipe:
    """Training texts and optimisation settings for PRAG and Poly-PRAG encoders."""

    texts: tuple[str, ...]
    rank: int
    alpha: float
    prag_lr: float        # PRAG: one LoRA per document
    prag_epochs: int
    lr: float             # Poly-PRAG: the shared bank
    routing_lr: float     # Poly-PRAG: routing logits (mttl trains them ~100× faster than the adapters)
    epochs: int
    num_adapters: int | None  # Poly-PRAG bank size m; None: sized by the corpus (``bank_size``)
    temperature: float = 1.0
    routing_active: int = 0  # Poly-PRAG: adapters each document's routing starts on (0: all, near uniform)
    layers: int | None = None  # Poly-PRAG: LoRA on the last N transformer layers only (None: all)
    lr_decay: bool = False  # Poly-PRAG: the learning rate falls linearly to 0 over the run (else constant)
    prag_layers: int | None = None  # PRAG: LoRA on the last N layers only; the layers below run once per text
    prag_lr_decay: bool = False  # PRAG: the learning rate falls linearly to 0 over the run
    stop_loss: float | None = None  # PRAG: a document stops training once its epoch loss is below this


RECIPES: dict[str, Recipe] = {
    # measured on PopQA dev questions with oracle retrieval (bench/results/recipes/runs.jsonl, python -m
    # bench.recipe_table): the passage alone, no generated text (a 135M model's own questions are mostly about
    # something else: "What is the capital of France?" from a biography), read by recitation (PolyPRAG
    # mode="recite"). Poly-PRAG's bank must tell documents apart by their routing alone: each document starts on
    # 2 of the adapters (routing_active=2): 8/10 recited, shuffled routing 0/10; near-uniform or 1-adapter
    # starts 1/10.
    # The speed (bench/results/encode_speed.jsonl, python -m bench.encode_speed): LoRA on the last 12 of 30
    # layers, whose frozen lower layers then run once per text (training.FrozenPrefix), and 8 epochs at a
    # higher rate falling linearly to 0. On 20 probe passages it recited 40% (recital F1 84.9) where "full"
    # recited 35% (F1 92.6); constant-rate or 10-layer variants recited worse (F1 62-77).
    # Poly-PRAG keeps every layer and 15 epochs at 2e-3: on the same probe, 12 layers with a falling rate took
    # 2.1x less time but recited 15% (F1 51.1) where every layer recited 20% (F1 66.6).
    "default": Recipe(texts=("passage",), rank=2, alpha=32.0, prag_lr=6e-3, prag_epochs=8,
                      lr=2e-3, routing_lr=0.1, epochs=15, num_adapters=None, routing_active=2,
                      prag_layers=12, prag_lr_decay=True),
    # the default until 2026-12-03: LoRA on every layer, 15 epochs at a constant 2e-3. 8 epochs at a constant
    # 4e-3 recited 10/10 on a 20-passage probe but, over the 217 passages of the PopQA-100 evaluation, 4 of 24
    # sampled adapters wrote garbage from the first token ("HonHonHon…"); at 15 / 2e-3 they all recite.
    "full": Recipe(texts=("passage",), rank=2, alpha=32.0, prag_lr=2e-3, prag_epochs=15,
                   lr=2e-3, routing_lr=0.1, epochs=15, num_adapters=None, routing_active=2),
    "prag-paper": Recipe(texts=PRAG_TEXTS, rank=2, alpha=32.0, prag_lr=3e-4,
                         prag_epochs=1, lr=3e-4, routing_lr=3e-4, epochs=1, num_adapters=8),
}


MIN_BANK, MAX_BANK, DOCS_PER_ADAPTER = 8, 256, 4


def bank_size(documents: int) -> int:
    """The default Poly-PRAG bank size for a corpus: about one adapter per 4 documents, as a power of two between
    8 and 256 (measured: 20 passages on 8 adapters recite 8/10; 217 on 64 recite 76%, on 8 only 15%)."""
    want = max(1, math.ceil(documents / DOCS_PER_ADAPTER))
    return max(MIN_BANK, min(MAX_BANK, 2 ** math.ceil(math.log2(want))))


def check_texts(texts: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The training-text kinds, refused unless each is one of ``TEXT_KINDS``."""
    kinds = tuple(t.strip() for t in texts.split(",")) if isinstance(texts, str) else tuple(texts)
    bad = [t for t in kinds if t not in TEXT_KINDS]
    if bad or not kinds:
        raise InvalidInputError(f"Unknown training text kind(s) {bad or list(kinds)}; choose from {list(TEXT_KINDS)}.")
    return kinds


def get_recipe(name: str) -> Recipe:
    """The named recipe, or a clear error listing the known ones."""
    if name not in RECIPES:
        raise InvalidInputError(f"Unknown recipe {name!r}; choose from {list(RECIPES)}.")
    return RECIPES[name]
