"""PRAG's library kind: one adapter per document (adapter i is document i), routing one-hot, no routing table."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ...documents import Document
from ...engine import LoRABank
from ...errors import LibraryError
from ...encoding.fitting import start_update
from ...library.state import LibraryKind, LibraryState
from .training import train_prag_bank

if TYPE_CHECKING:
    from ...generation.llm import LoRAMixingLLM


class PRAGKind(LibraryKind):
    """A PRAG library: a query's documents' own adapters, their deltas summed."""

    name = "prag"
    default_rule = "sum"
    routing_caption = "routing (PRAG: one-hot)"

    def routing_table(self, logits: torch.Tensor | None, device) -> None:
        return None

    def read_routing(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        return None

    def check(self, state: LibraryState) -> None:
        if state.bank.m != len(state.documents):
            raise LibraryError(f"A per-document library needs one adapter per document "
                               f"({state.bank.m} adapters, {len(state.documents)} documents).")

    def weights(self, state: LibraryState, rows: list[int]) -> torch.Tensor:
        w = torch.zeros(len(rows), state.bank.m, device=state.bank.A[0].device)  # [k, m] one-hot
        w[torch.arange(len(rows)), torch.tensor(rows, dtype=torch.long)] = 1.0
        return w

    def added(self, state: LibraryState, bank: LoRABank, logits: torch.Tensor | None) -> None:
        return None

    def kept(self, state: LibraryState, keep: list[int]) -> tuple[LoRABank, None]:
        return state.bank.select(keep), None  # a deleted document's knowledge goes with its adapter

    def adapter_names(self, state: LibraryState) -> list[str]:
        return list(state.doc_ids)

    def own_bytes(self, bank: int, routing: int) -> int:
        return bank

    def extend(self, llm: "LoRAMixingLLM", state: LibraryState, docs: Sequence[Document], strategy: str = "grow",
               new_adapters: int | None = None, **options) -> LibraryState:
        """One new adapter per document, from the library's shared init (``strategy``: checked, nothing to choose)."""
        cfg, data, checkpoint = start_update(llm, state, docs, strategy=strategy, **options)
        modules = {n: state.bank.shapes[n] for n in state.bank.names}
        group_size = int(state.config.training.get("group_size", 32))
        new = train_prag_bank(llm, modules, data, state.bank.rank, state.bank.alpha, cfg, group_size,
                              checkpoint=checkpoint("prag-add", group_size=group_size))
        return state.with_added(docs, bank=state.bank.extend(new))
