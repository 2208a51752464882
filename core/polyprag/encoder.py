"""Encoders: documents in, AdapterLibrary out (Poly-PRAG joint training, or PRAG's one LoRA per document)."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Sequence

from .augment import Augmenter
from .documents import Document, check_unique
from .errors import InvalidInputError
from .fitting import choose_augmenter, init_routing_logits, run_checkpoint, train_prag_bank
from .library import AdapterLibrary, LibraryConfig
from .engine import LoRABank
from .recipes import get_recipe
from .training import TrainConfig, train_poly

if TYPE_CHECKING:
    import torch

    from .llm import LoRAMixingLLM

log = logging.getLogger(__name__)


class PolyPRAGEncoder:
    """Encode documents into a Poly-PRAG library: a bank of ``num_adapters`` LoRAs + routing per document.

    Example:
        library = PolyPRAGEncoder(llm).fit(docs)                      # the default recipe
        library = PolyPRAGEncoder(llm, recipe="prag-paper").fit(docs)  # PRAG's published settings

    Settings left at None come from ``recipe`` (``polyprag.recipes``): training texts, rank, alpha,
    learning rates, epochs and bank size. ``per_document=True`` gives PRAG instead (one adapter per
    document, summed at query time)."""

    def __init__(self, llm: "LoRAMixingLLM", num_adapters: int | None = None, rank: int | None = None,
                 alpha: float | None = None, target_modules: Sequence[str] | None = None,
                 augmenter: Augmenter | str | None = None, lr: float | None = None,
                 routing_lr: float | None = None, epochs: int | None = None, batch_size: int = 8,
                 temperature: float | None = None, max_length: int = 256, seed: int = 0,
                 per_document: bool = False, group_size: int = 32, max_batch_tokens: int = 2048,
                 progress: bool = True, recipe: str = "default", routing_active: int | None = None):
        r = get_recipe(recipe)
        self.recipe = recipe
        num_adapters = r.num_adapters if num_adapters is None else num_adapters
        rank = r.rank if rank is None else rank
        alpha = r.alpha if alpha is None else alpha
        lr = (r.prag_lr if per_document else r.lr) if lr is None else lr
        routing_lr = (None if per_document else r.routing_lr) if routing_lr is None else routing_lr
        epochs = (r.prag_epochs if per_document else r.epochs) if epochs is None else epochs
        temperature = r.temperature if temperature is None else temperature
        routing_active = min(r.routing_active, max(num_adapters, 0)) if routing_active is None else routing_active
        if not 0 <= routing_active <= max(num_adapters, 0) and not per_document:
            raise InvalidInputError(f"routing_active must be between 0 and num_adapters ({num_adapters}), "
                                    f"got {routing_active}.")
        if num_adapters < 1 and not per_document:
            raise InvalidInputError(f"num_adapters must be >= 1, got {num_adapters}.")
        if rank < 1:
            raise InvalidInputError(f"rank must be >= 1, got {rank}.")
        if epochs < 1 or batch_size < 1 or max_batch_tokens < 1:
            raise InvalidInputError("epochs, batch_size and max_batch_tokens must be >= 1.")
        self.llm = llm
        self.num_adapters = num_adapters
        self.rank = rank
        self.alpha = alpha
        self.per_document = per_document
        self.group_size = group_size
        wanted = tuple(target_modules or llm.target_modules)
        missing = [t for t in wanted if t not in llm.target_modules]
        if missing:
            raise InvalidInputError(f"Target modules {missing} are not hooked in this LLM "
                                    f"(hooked: {list(llm.target_modules)}); create the LLM with them.")
        self.target_modules = wanted
        self.augmenter = choose_augmenter(augmenter, llm, r.texts)
        self.train = TrainConfig(lr=lr, routing_lr=routing_lr, epochs=epochs, batch_size=batch_size,
                                 max_length=max_length, temperature=temperature, seed=seed, progress=progress,
                                 routing_active=0 if per_document else routing_active,
                                 max_batch_tokens=max_batch_tokens)

    def trained_modules(self) -> dict[str, tuple[int, int]]:
        """The hooked modules this encoder trains LoRAs on, each with its (in, out) sizes."""
        return {n: s for n, s in self.llm.module_shapes.items() if n.rsplit(".", 1)[-1] in self.target_modules}

    def initial_poly(self, n: int) -> tuple[LoRABank, "torch.Tensor"]:
        """A fresh Poly-PRAG bank and routing logits [n, m] for n documents, from the training seed."""
        bank = LoRABank.initialised(self.trained_modules(), self.num_adapters, self.rank, self.alpha,
                                    seed=self.train.seed).to(self.llm.device)
        logits = init_routing_logits(n, self.num_adapters, self.train.seed, self.llm.device,
                                     active=self.train.routing_active)  # [n, m]
        return bank, logits

    def library_config(self, m: int) -> LibraryConfig:
        """What a library trained by this encoder records: its kind, shapes, base model and training settings."""
        return LibraryConfig(kind="per_document" if self.per_document else "poly", rank=self.rank,
                             alpha=self.alpha, m=m, target_modules=list(self.target_modules),
                             base_model=self.llm.fingerprint(), model_name=self.llm.name,
                             dtype=str(self.llm.dtype).replace("torch.", ""),
                             training={**asdict(self.train), "augmenter": type(self.augmenter).__name__,
                                       "texts": list(getattr(self.augmenter, "texts", ("passage",))),
                                       "recipe": self.recipe, "group_size": self.group_size})

    def fit(self, documents: Sequence[Document], checkpoint_dir: str | os.PathLike | None = None,
            checkpoint_every: int = 10) -> AdapterLibrary:
        """Train a new library on the documents (augmented first) and return it.

        ``checkpoint_dir``: save progress there (every ``checkpoint_every`` steps for Poly-PRAG, after
        each finished group of documents for PRAG); rerunning the same ``fit`` after a crash resumes
        where it stopped and gives the same library as an uninterrupted run. Delete the folder once
        the library is saved."""
        docs = check_unique(documents)
        if not docs:
            raise InvalidInputError("fit() needs at least one document; the corpus is empty. "
                                    "Pass a non-empty list of Document (e.g. from load_corpus).")
        data = self.augmenter(docs)
        modules = self.trained_modules()
        if self.per_document:
            ck = run_checkpoint(checkpoint_dir, checkpoint_every, "prag-fit", self.llm, docs, data, self.train,
                                {"rank": self.rank, "alpha": self.alpha, "modules": modules,
                                 "group_size": self.group_size})
            bank = train_prag_bank(self.llm, modules, data, self.rank, self.alpha, self.train,
                                   self.group_size, checkpoint=ck)
            return AdapterLibrary(self.llm, bank, docs, self.library_config(bank.m))
        bank, logits = self.initial_poly(len(docs))
        ck = run_checkpoint(checkpoint_dir, checkpoint_every, "poly-fit", self.llm, docs, data, self.train,
                            {"m": self.num_adapters, "rank": self.rank, "alpha": self.alpha, "modules": modules})
        train_poly(self.llm, bank, logits, data, self.train, train_bank=True, checkpoint=ck)
        return AdapterLibrary(self.llm, bank, docs, self.library_config(self.num_adapters), routing_logits=logits)


class PRAGEncoder(PolyPRAGEncoder):
    """PRAG (Su et al. 2025): one LoRA per document from one shared random init, summed at query time.

    Defaults come from ``recipe``: "default" (measured to inject on the default model) or "prag-paper"
    (rank 2, alpha 32, lr 3e-4, 1 epoch, passage + rewrite + generated QA in PRAG's three forms)."""

    def __init__(self, llm: "LoRAMixingLLM", rank: int | None = None, alpha: float | None = None,
                 lr: float | None = None, epochs: int | None = None, **kwargs):
        kwargs.pop("per_document", None)
        kwargs.pop("num_adapters", None)
        super().__init__(llm, num_adapters=1, rank=rank, alpha=alpha, lr=lr, epochs=epochs,
                         per_document=True, **kwargs)
