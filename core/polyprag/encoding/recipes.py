"""Training recipes: which texts each document is trained on, and how long and how fast.

``default`` is the recipe measured to inject knowledge into the default model (see docs/recipes.md and ``bench/results/recipes``); ``prag-paper`` is PRAG's published setting (Su et al.
2025, oneal2000/PRAG: passage, rewrite and 3 generated QA pairs shown with the passage, with the rewrite
and without context; rank 2, alpha 32, lr 3e-4, 1 epoch), which a 1B–8B model learns from in one pass
and a 135M model does not.

A ``Recipe`` holds what both methods share (texts, rank, alpha) and each method's own settings,
``recipe.prag`` (``PRAGConfig``) and ``recipe.poly`` (``PolyPRAGConfig``); each field's ``metadata["help"]``
is its one help text (the CLI's and the evaluation's options read it).

Training texts (``texts``): ``passage`` (the document itself), ``recall`` ("What do you know about
<title>?" answered with the passage: no generation needed), ``sentences`` (the recall question answered by
each sentence of the passage on its own, so that any one fact can start an answer), ``rewrite`` (the model's rewrite of it),
``qa`` (each generated question answered with no context: what parametric answering asks of the
adapter), ``qa_context`` (each generated QA with the passage, and with the rewrite, in the prompt),
``distill`` (context distillation, ``encoding.distill``: generic questions about the document's subject,
each answered with the token distributions of the model that reads the passage).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..errors import InvalidInputError

TEXT_KINDS = ("passage", "recall", "sentences", "rewrite", "qa", "qa_context", "distill")
FREE_TEXTS = frozenset({"passage", "recall", "sentences"})  # made from the passage alone, no generation
PRAG_TEXTS = ("passage", "rewrite", "qa", "qa_context")  # PRAG's augmentation
# the bank's capacity curve (python -m bench.capacity table; recitation from a question's own documents): 20
# passages on 8 adapters (2.5 per adapter) recite 8/10; 217 on 64 (3.4) 76%; 617 PopQA passages on 256 (2.4)
# 42.3%, on 64 (9.6) 15.4%; 217 on 8 (27) 15%. A rank-2 adapter holds about 2-4 documents of this model, so the
# bank keeps at most 4 documents per adapter up to MAX_BANK adapters (1024 hold 4096 documents: about 0.6-1.5 GB
# of float32 bank and 4x that while training); beyond, PolyPRAGEncoder warns and PRAG is the better library
MIN_BANK, MAX_BANK, DOCS_PER_ADAPTER = 8, 1024, 4


@dataclass(frozen=True)
class PRAGConfig:
    """PRAG's optimisation settings: one LoRA per document, trained on that document's texts alone."""

    lr: float = field(metadata={"help": "PRAG learning rate"})
    epochs: int = field(metadata={"help": "PRAG training epochs"})
    layers: int | None = field(default=None, metadata={
        "help": "PRAG: LoRA on the last N transformer layers only, the layers below run once per text (None: all)"})
    lr_decay: bool = field(default=False, metadata={
        "help": "PRAG: the learning rate falls linearly to 0 over the run (else constant)"})
    stop_loss: float | None = field(default=None, metadata={
        "help": "PRAG: a document stops training once its epoch loss is below this (None: never)"})

    def __post_init__(self) -> None:
        if self.stop_loss is not None and not self.stop_loss > 0:
            raise InvalidInputError(f"stop_loss must be > 0 (a mean token loss), got {self.stop_loss!r}.")


@dataclass(frozen=True)
class PolyPRAGConfig:
    """Poly-PRAG's optimisation settings: the shared bank of LoRAs and each document's routing, trained jointly."""

    lr: float = field(metadata={"help": "Poly-PRAG bank learning rate"})
    routing_lr: float = field(metadata={
        "help": "Poly-PRAG routing-logit learning rate (mttl trains them ~100x faster than the adapters)"})
    epochs: int = field(metadata={"help": "Poly-PRAG training epochs"})
    num_adapters: int | None = field(metadata={
        "help": "Poly-PRAG bank size m (None: sized by the corpus, recipes.bank_size)"})
    temperature: float = field(default=1.0, metadata={"help": "Poly-PRAG relaxed-Bernoulli temperature of the "
                                                              "routing samples"})
    routing_active: int = field(default=0, metadata={
        "help": "Poly-PRAG: adapters each document's routing starts on (0: all, near uniform)"})
    layers: int | None = field(default=None, metadata={
        "help": "Poly-PRAG: LoRA on the last N transformer layers only (None: all)"})
    lr_decay: bool = field(default=False, metadata={
        "help": "Poly-PRAG: the learning rate falls linearly to 0 over the run (else constant)"})

    def __post_init__(self) -> None:
        if self.num_adapters is not None and self.num_adapters < 1:
            raise InvalidInputError(f"num_adapters must be >= 1, got {self.num_adapters}.")
        smallest = MIN_BANK if self.num_adapters is None else self.num_adapters  # bank_size is never below MIN_BANK
        if not 0 <= self.routing_active <= smallest:
            raise InvalidInputError(f"routing_active must be between 0 and num_adapters ({smallest}), "
                                    f"got {self.routing_active}.")


@dataclass(frozen=True)
class Recipe:
    """A named training recipe: the texts and LoRA shape both methods share, and each method's own settings."""

    texts: tuple[str, ...] = field(metadata={"help": "training texts per document, from " + ",".join(TEXT_KINDS)})
    rank: int = field(metadata={"help": "LoRA rank (PRAG and Poly-PRAG)"})
    alpha: float = field(metadata={"help": "LoRA alpha (scale alpha / rank)"})
    prag: PRAGConfig = field(metadata={"help": "PRAG's settings: one LoRA per document"})
    poly: PolyPRAGConfig = field(metadata={"help": "Poly-PRAG's settings: the shared bank and the routing"})


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
    "default": Recipe(texts=("passage",), rank=2, alpha=32.0,
                      prag=PRAGConfig(lr=6e-3, epochs=8, layers=12, lr_decay=True),
                      poly=PolyPRAGConfig(lr=2e-3, routing_lr=0.1, epochs=15, num_adapters=None, routing_active=2)),
    # the default until 2026-12-03: LoRA on every layer, 15 epochs at a constant 2e-3. 8 epochs at a constant
    # 4e-3 recited 10/10 on a 20-passage probe but, over the 217 passages of the PopQA-100 evaluation, 4 of 24
    # sampled adapters wrote garbage from the first token ("HonHonHon…"); at 15 / 2e-3 they all recite.
    "full": Recipe(texts=("passage",), rank=2, alpha=32.0, prag=PRAGConfig(lr=2e-3, epochs=15),
                   poly=PolyPRAGConfig(lr=2e-3, routing_lr=0.1, epochs=15, num_adapters=None, routing_active=2)),
    # a library of a whole corpus (hundreds of documents and more): PRAG as in "default"; Poly-PRAG's bank on the
    # last 12 layers for 8 epochs at a constant 6e-3, about half the time of every layer / 15 epochs. On the
    # 20-passage probe: recital F1 65.4 against 66.6 (bench/results/encode_speed_sweep.jsonl); holding all 617
    # PopQA dev passages (m = 256) it recited 42.3% of the answerable questions from their own documents,
    # shuffled routing 11.5% (bench/results/capacity, python -m bench.capacity table). "default" keeps every
    # layer for Poly-PRAG: its parametric answers on small libraries (the model tests) were measured so
    "corpus": Recipe(texts=("passage",), rank=2, alpha=32.0,
                     prag=PRAGConfig(lr=6e-3, epochs=8, layers=12, lr_decay=True),
                     poly=PolyPRAGConfig(lr=6e-3, routing_lr=0.1, epochs=8, num_adapters=None, routing_active=2,
                                         layers=12)),
    # context distillation (encoding.distill, Knowledge Modules' deep context distillation): the passage, plus
    # the profile questions about its subject answered with the in-context model's top-16 distributions; the
    # adapter learns to answer as the passage reads, not only to recite it. On the popqa-birthplaces dev probe
    # (docs/results.md) it did not beat "default" with the 135M model as its teacher: parametric_ensemble 25.0%
    # against 17.5%, the evidence's own adapter 37.5% against 62.5% (both within noise), at 2.3x the encode time
    "distill": Recipe(texts=("passage", "distill"), rank=2, alpha=32.0,
                      prag=PRAGConfig(lr=6e-3, epochs=8, layers=12, lr_decay=True),
                      poly=PolyPRAGConfig(lr=2e-3, routing_lr=0.1, epochs=15, num_adapters=None, routing_active=2)),
    "prag-paper": Recipe(texts=PRAG_TEXTS, rank=2, alpha=32.0, prag=PRAGConfig(lr=3e-4, epochs=1),
                         poly=PolyPRAGConfig(lr=3e-4, routing_lr=3e-4, epochs=1, num_adapters=8)),
}


def bank_size(documents: int) -> int:
    """The default Poly-PRAG bank size for a corpus: at most 4 documents per adapter, as a power of two between
    MIN_BANK and MAX_BANK (8 and 1024; the measured capacity curve is in the comment above MIN_BANK)."""
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


def setting(recipe: Recipe, path: str):
    """The recipe's value at ``path``: a shared field ("rank") or a method's own ("prag.epochs", "poly.lr")."""
    value = recipe
    for name in path.split("."):
        value = getattr(value, name)
    return value


def setting_help(path: str) -> str:
    """The ``metadata["help"]`` of the recipe field at ``path`` (named as in ``setting``)."""
    *method, name = path.split(".")
    config = {"prag": PRAGConfig, "poly": PolyPRAGConfig}[method[0]] if method else Recipe
    return {f.name: f for f in fields(config)}[name].metadata["help"]
