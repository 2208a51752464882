"""PRAGEncoder: documents in, a PRAG library out (one LoRA per document)."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from ...encoding.augment import TrainingExample
from ...encoding.checkpoint import Checkpoint
from ...documents import Document
from ...encoding.encoder import Encoder, Shard
from ...library.adapters import AdapterLibrary
from ...encoding.recipes import get_recipe
from .kind import PRAGKind
from .training import train_prag_bank

if TYPE_CHECKING:
    from ...generation.llm import LoRAMixingLLM


class PRAGEncoder(Encoder):
    """PRAG (Su et al. 2025): one LoRA per document from one shared random init, summed at query time.

    Settings left at None come from ``recipe``'s shared fields and ``recipe.prag`` (``PRAGConfig``): "default"
    (measured to inject on the default model) or "prag-paper" (rank 2, alpha 32, lr 3e-4, 1 epoch, passage +
    rewrite + generated QA in PRAG's three forms).
    ``group_size`` documents train together, in one batch; other options as ``PolyPRAGEncoder``."""

    kind = PRAGKind.name
    phase = "prag-fit"
    data_parallel = True  # its documents are independent: each process trains its share of the groups
    checkpoint_parallel = True  # each process checkpoints its own groups; any world size resumes them

    def __init__(self, llm: "LoRAMixingLLM", rank: int | None = None, alpha: float | None = None,
                 lr: float | None = None, epochs: int | None = None, group_size: int = 32,
                 stop_loss: float | None = None, **options):
        r = get_recipe(options.get("recipe", "default"))
        given = dict(lr=lr, epochs=epochs, stop_loss=stop_loss, layers=options.get("layers"),
                     lr_decay=options.get("lr_decay"))
        cfg = replace(r.prag, **{k: v for k, v in given.items() if v is not None})  # checked by PRAGConfig
        options.update(layers=cfg.layers, lr_decay=cfg.lr_decay)
        self.group_size = group_size
        train = dict(lr=cfg.lr, epochs=cfg.epochs, routing_lr=None, routing_active=0,  # no routing to train
                     stop_loss=cfg.stop_loss)
        super().__init__(llm, train, rank=rank, alpha=alpha, **options)

    def run_identity(self) -> dict:
        return {**super().run_identity(), "group_size": self.group_size}

    def train_library(self, docs: list[Document], data: Sequence[Sequence[TrainingExample]],
                      checkpoint: Checkpoint | None, shard: Shard) -> AdapterLibrary | None:
        """Every document's adapter, trained in groups (each finished group saved in ``checkpoint``); in a
        ``shard`` of several processes this one trains every world-th group and rank 0 assembles the library."""
        cfg = replace(self.train, progress=self.train.progress and shard.rank == 0)  # one bar, not one per process
        bank = train_prag_bank(self.llm, self.trained_modules(), data, self.rank, self.alpha, cfg,
                               self.group_size, checkpoint=checkpoint, shard=(shard.rank, shard.world),
                               collect=shard.collect)
        if bank is None:  # not rank 0: its adapters went there
            return None
        # no world size recorded: it changes nothing in a PRAG library, whose folder is a one-process run's
        return AdapterLibrary(self.llm, bank, docs, self.library_config(bank.m, group_size=self.group_size))
