"""PolyPRAGEncoder: documents in, a Poly-PRAG library out (a bank of LoRAs and routing per document, trained jointly)."""
from __future__ import annotations

import warnings

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from ...encoding.augment import Augmenter, TrainingExample
from ...encoding.checkpoint import Checkpoint
from ...documents import Document
from ...encoding.encoder import Encoder, Shard
from ...engine import LoRABank
from ...library.adapters import AdapterLibrary
from ...encoding.recipes import DOCS_PER_ADAPTER, bank_size, get_recipe
from .kind import PolyPRAGKind
from .routing import init_routing_logits
from .training import train_poly

if TYPE_CHECKING:
    import torch

    from ...generation.llm import LoRAMixingLLM


class PolyPRAGEncoder(Encoder):
    """Encode documents into a Poly-PRAG library: a bank of ``num_adapters`` LoRAs + routing per document.

    Example:
        library = PolyPRAGEncoder(llm).fit(docs)                      # the default recipe
        library = PolyPRAGEncoder(llm, recipe="prag-paper").fit(docs)  # PRAG's published settings

    Settings left at None come from ``recipe`` (``polyprag.encoding.recipes``): training texts, rank and alpha
    from its shared fields, learning rates, epochs, bank size and routing start from ``recipe.poly``
    (``PolyPRAGConfig``; the default recipe sizes the bank by the corpus: ``recipes.bank_size``). PRAG (one
    adapter per document, summed at query time) is ``PRAGEncoder``."""

    kind = PolyPRAGKind.name
    phase = "poly-fit"
    data_parallel = True

    def __init__(self, llm: "LoRAMixingLLM", num_adapters: int | None = None, rank: int | None = None,
                 alpha: float | None = None, target_modules: Sequence[str] | None = None,
                 augmenter: Augmenter | str | None = None, lr: float | None = None,
                 routing_lr: float | None = None, epochs: int | None = None, batch_size: int = 8,
                 temperature: float | None = None, max_length: int = 256, seed: int = 0,
                 max_batch_tokens: int = 2048, progress: bool = True, recipe: str = "default",
                 routing_active: int | None = None, layers: int | None = None, lr_decay: bool | None = None):
        r = get_recipe(recipe)
        if routing_active is None and num_adapters is not None:  # the recipe's start, on a bank this small
            routing_active = min(r.poly.routing_active, num_adapters)
        given = dict(num_adapters=num_adapters, lr=lr, routing_lr=routing_lr, epochs=epochs, temperature=temperature,
                     routing_active=routing_active, layers=layers, lr_decay=lr_decay)
        cfg = replace(r.poly, **{k: v for k, v in given.items() if v is not None})  # checked by PolyPRAGConfig
        self.num_adapters = cfg.num_adapters  # None: sized by the corpus
        train = dict(lr=cfg.lr, routing_lr=cfg.routing_lr, epochs=cfg.epochs, routing_active=cfg.routing_active,
                     temperature=cfg.temperature)
        super().__init__(llm, train, rank=rank, alpha=alpha, target_modules=target_modules, augmenter=augmenter,
                         batch_size=batch_size, max_length=max_length, seed=seed, max_batch_tokens=max_batch_tokens,
                         progress=progress, recipe=recipe, layers=cfg.layers, lr_decay=cfg.lr_decay)

    def bank_size(self, n: int) -> int:
        """The bank size m for n documents: ``num_adapters``, or when it is None the recipes' ``bank_size(n)``."""
        return self.num_adapters if self.num_adapters is not None else bank_size(n)

    def initial_poly(self, n: int) -> tuple[LoRABank, "torch.Tensor"]:
        """A fresh Poly-PRAG bank and routing logits [n, m] for n documents, from the training seed."""
        m = self.bank_size(n)
        if n > DOCS_PER_ADAPTER * m:
            warnings.warn(f"A bank of {m} adapters for {n} documents holds {n / m:.1f} documents per adapter; "
                          f"recitation fell from 42% to 15% between 2.4 and 9.6 per adapter (617 PopQA passages, "
                          f"README 'Libraries that hold a whole corpus'). Give num_adapters >= "
                          f"{-(-n // DOCS_PER_ADAPTER)} or use PRAGEncoder, whose adapters are each one document's.",
                          stacklevel=3)
        bank = LoRABank.initialised(self.trained_modules(), m, self.rank, self.alpha,
                                    seed=self.train.seed).to(self.llm.device)
        logits = init_routing_logits(n, m, self.train.seed, self.llm.device,
                                     active=self.train.routing_active)  # [n, m]
        return bank, logits

    def run_identity(self) -> dict:
        return {**super().run_identity(), "m": self.num_adapters}

    def train_library(self, docs: list[Document], data: Sequence[Sequence[TrainingExample]],
                      checkpoint: Checkpoint | None, shard: Shard) -> AdapterLibrary:
        """The bank and every document's routing trained jointly (checkpointed every ``checkpoint.every`` steps);
        in a data-parallel ``shard`` every process starts from rank 0's values and trains its mini-batches."""
        bank, logits = self.initial_poly(len(docs))  # [N, m] logits
        shard.broadcast(list(bank.parameters()) + [logits])
        cfg = replace(self.train, progress=self.train.progress and shard.rank == 0)  # one bar, not one per process
        train_poly(self.llm, bank, logits, data, cfg, train_bank=True, shard=(shard.rank, shard.world),
                   sync=shard.sync, checkpoint=checkpoint)
        config = self.library_config(bank.m, **shard.recorded())
        return AdapterLibrary(self.llm, bank, docs, config, routing_logits=logits)
