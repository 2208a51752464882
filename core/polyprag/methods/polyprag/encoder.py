"""PolyPRAGEncoder: documents in, a Poly-PRAG library out (a bank of LoRAs and routing per document, trained jointly)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ...encoding.augment import Augmenter, TrainingExample
from ...encoding.checkpoint import Checkpoint
from ...documents import Document
from ...encoding.encoder import Encoder
from ...engine import LoRABank
from ...errors import InvalidInputError
from ...library.adapters import AdapterLibrary
from ...encoding.recipes import MIN_BANK, bank_size, get_recipe
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

    Settings left at None come from ``recipe`` (``polyprag.encoding.recipes``): training texts, rank, alpha,
    learning rates, epochs and bank size (the default recipe sizes the bank by the corpus: ``recipes.bank_size``). PRAG (one adapter per document, summed at query time) is
    ``PRAGEncoder``."""

    kind = PolyPRAGKind.name
    phase = "poly-fit"

    def __init__(self, llm: "LoRAMixingLLM", num_adapters: int | None = None, rank: int | None = None,
                 alpha: float | None = None, target_modules: Sequence[str] | None = None,
                 augmenter: Augmenter | str | None = None, lr: float | None = None,
                 routing_lr: float | None = None, epochs: int | None = None, batch_size: int = 8,
                 temperature: float | None = None, max_length: int = 256, seed: int = 0,
                 max_batch_tokens: int = 2048, progress: bool = True, recipe: str = "default",
                 routing_active: int | None = None, layers: int | None = None, lr_decay: bool | None = None):
        r = get_recipe(recipe)
        num_adapters = r.num_adapters if num_adapters is None else num_adapters  # None: sized by the corpus
        if num_adapters is not None and num_adapters < 1:
            raise InvalidInputError(f"num_adapters must be >= 1, got {num_adapters}.")
        smallest = MIN_BANK if num_adapters is None else num_adapters
        routing_active = min(r.routing_active, smallest) if routing_active is None else routing_active
        if not 0 <= routing_active <= smallest:
            raise InvalidInputError(f"routing_active must be between 0 and num_adapters ({smallest}), "
                                    f"got {routing_active}.")
        self.num_adapters = num_adapters
        train = dict(lr=r.lr if lr is None else lr, routing_lr=r.routing_lr if routing_lr is None else routing_lr,
                     epochs=r.epochs if epochs is None else epochs, routing_active=routing_active,
                     temperature=r.temperature if temperature is None else temperature)
        super().__init__(llm, train, rank=rank, alpha=alpha, target_modules=target_modules, augmenter=augmenter,
                         batch_size=batch_size, max_length=max_length, seed=seed, max_batch_tokens=max_batch_tokens,
                         progress=progress, recipe=recipe, layers=r.layers if layers is None else layers,
                         lr_decay=r.lr_decay if lr_decay is None else lr_decay)

    def bank_size(self, n: int) -> int:
        """The bank size m for n documents: ``num_adapters``, or when it is None the recipes' ``bank_size(n)``."""
        return self.num_adapters if self.num_adapters is not None else bank_size(n)

    def initial_poly(self, n: int) -> tuple[LoRABank, "torch.Tensor"]:
        """A fresh Poly-PRAG bank and routing logits [n, m] for n documents, from the training seed."""
        m = self.bank_size(n)
        bank = LoRABank.initialised(self.trained_modules(), m, self.rank, self.alpha,
                                    seed=self.train.seed).to(self.llm.device)
        logits = init_routing_logits(n, m, self.train.seed, self.llm.device,
                                     active=self.train.routing_active)  # [n, m]
        return bank, logits

    def run_identity(self) -> dict:
        return {**super().run_identity(), "m": self.num_adapters}

    def train_library(self, docs: list[Document], data: Sequence[Sequence[TrainingExample]],
                      checkpoint: Checkpoint | None) -> AdapterLibrary:
        """The bank and every document's routing trained jointly (checkpointed every ``checkpoint.every`` steps)."""
        bank, logits = self.initial_poly(len(docs))
        train_poly(self.llm, bank, logits, data, self.train, train_bank=True, checkpoint=checkpoint)
        return AdapterLibrary(self.llm, bank, docs, self.library_config(bank.m), routing_logits=logits)
