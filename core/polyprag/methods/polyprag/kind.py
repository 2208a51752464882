"""Poly-PRAG's library kind: a bank of m adapters every document shares and a routing table z [N, m]."""
from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

import torch

from ...encoding.augment import Augmenter
from ...encoding.checkpoint import tensor_digest
from ...documents import Document
from ...engine import LoRABank
from ...errors import InvalidInputError, LibraryError
from ...encoding.fitting import run_checkpoint, start_update, update_settings
from ...library.state import LibraryKind, LibraryState
from .routing import CLOSED_LOGIT, init_routing_logits, routing_weights
from .training import train_poly

if TYPE_CHECKING:
    from ...generation.llm import LoRAMixingLLM


class PolyPRAGKind(LibraryKind):
    """A Poly-PRAG library: document d mixes the shared bank with weights w_d = σ(z_d) / Σ_j σ(z_dj)."""

    name = "poly"
    default_rule = "mean"
    files = ("routing.safetensors",)
    routing_caption = "routing weights w_d = σ(z_d)/Σσ(z_d), red: preferred"

    def routing_table(self, logits: torch.Tensor | None, device) -> torch.Tensor | None:
        return None if logits is None else logits.detach().float().to(device)  # [N, m]

    def read_routing(self, tensors: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        return tensors["routing.safetensors"]["routing_logits"]

    def check(self, state: LibraryState) -> None:
        z, n, m = state.routing_logits, len(state.documents), state.bank.m
        if z is None or tuple(z.shape) != (n, m):
            raise LibraryError(f"Routing table shape {None if z is None else tuple(z.shape)} "
                               f"does not match {n} documents × {m} adapters.")
        if not torch.isfinite(z).all():
            raise InvalidInputError("The routing logits contain NaN or inf (training diverged or the table "
                                    "was altered); re-encode the documents, with a lower lr if it diverged.")

    def weights(self, state: LibraryState, rows: list[int]) -> torch.Tensor:
        return routing_weights(state.routing_logits[rows])

    def added(self, state: LibraryState, bank: LoRABank, logits: torch.Tensor | None) -> torch.Tensor:
        z = state.routing_logits
        if bank.m > z.shape[1]:  # old documents: σ(-1e4) = 0 on each new adapter, their mixtures unchanged
            z = torch.cat([z, z.new_full((z.shape[0], bank.m - z.shape[1]), CLOSED_LOGIT)], 1)
        return torch.cat([z, logits.detach().float().to(z.device)])

    def kept(self, state: LibraryState, keep: list[int]) -> tuple[LoRABank, torch.Tensor]:
        z = state.routing_logits[keep]
        used = (torch.sigmoid(z) > 0).any(0).nonzero().flatten().tolist()  # weight exactly 0: never mixed
        if len(used) == state.bank.m:
            return state.bank, z
        return state.bank.select(used), z[:, used]

    def adapter_names(self, state: LibraryState) -> list[str]:
        return [f"adapter-{j}" for j in range(state.bank.m)]

    def own_bytes(self, bank: int, routing: int) -> int:
        return routing  # the bank is shared; a document owns its routing row

    def extend(self, llm: "LoRAMixingLLM", state: LibraryState, docs: Sequence[Document], strategy: str = "grow",
               new_adapters: int | None = None, **options) -> LibraryState:
        """``strategy="grow"`` (default): the bank grows by ``new_adapters`` fresh LoRAs (default: as many as keep
        the library's documents-per-adapter ratio), trained with the new documents' routing over the old *and*
        new adapters while every old adapter stays frozen; old documents get zero weight on the new adapters,
        so their mixtures are bit for bit what they were. ``strategy="routing"``: the bank stays frozen and only
        the new routing logits are fitted ("Poly-z", a few hundred floats each; cheap, but a frozen bank can
        only recombine what it already knows)."""
        cfg, data, checkpoint = start_update(llm, state, docs, strategy=strategy, **options)
        modules = {n: state.bank.shapes[n] for n in state.bank.names}
        m_old = state.bank.m
        grow = 0
        if strategy == "grow":
            ratio = max(1.0, len(state) / m_old)  # documents per adapter in the library as encoded
            grow = new_adapters if new_adapters is not None else max(1, math.ceil(len(docs) / ratio))
            if grow < 1:
                raise InvalidInputError(f"new_adapters must be >= 1, got {new_adapters}.")
        bank = state.bank
        if grow:
            fresh = LoRABank.initialised(modules, grow, bank.rank, bank.alpha, seed=cfg.seed + len(state))
            bank = bank.extend(fresh).to(llm.device)  # a new bank object: readers keep the old one
        # sparse routing starts new documents on new adapters (old ones are frozen and cannot learn them)
        logits = init_routing_logits(len(docs), bank.m, cfg.seed, llm.device,
                                     active=min(cfg.routing_active, grow or bank.m),
                                     among=range(m_old, bank.m) if grow else None)
        train_poly(llm, bank, logits, data, cfg, train_bank=bool(grow), checkpoint=checkpoint(
            f"poly-add-{strategy}", grow=grow), frozen_adapters=m_old)
        return state.with_added(docs, routing_logits=logits, bank=bank if grow else None)

    def refit(self, llm: "LoRAMixingLLM", state: LibraryState, deleted: Sequence[str],
              augmenter: Augmenter | str | None = None, epochs: int | None = None, lr: float | None = None,
              progress: bool | None = None, checkpoint_dir: str | os.PathLike | None = None,
              checkpoint_every: int = 10) -> tuple[LibraryState, dict]:
        """The adapters the deleted documents weight above uniform start afresh and train again.

        Uniform is 1 / (the number of adapters a document can mix). The re-fitted adapters train, with the
        library's own settings and every other adapter frozen, on the remaining documents that weight one of
        them above uniform; those documents' routing trains too (a re-fitted adapter no remaining document
        weights above uniform starts afresh and stays so: B = 0, it adds nothing). Cost: encoding those
        documents again."""
        gone = torch.zeros(len(state), dtype=torch.bool)
        gone[state.rows(deleted)] = True
        w = routing_weights(state.routing_logits).cpu()                 # [N, m]
        above = w > 1.0 / (w > 0).sum(1, keepdim=True)                 # [N, m]: weighted above uniform
        adapters = above[gone].any(0).nonzero().flatten().tolist()
        users = (above[:, adapters].any(1) & ~gone).nonzero().flatten().tolist()
        report = {"adapters": adapters, "documents": [state.doc_ids[i] for i in users], "steps": 0}
        if not adapters:
            return state, report
        cfg, aug = update_settings(llm, state.config.training, augmenter, epochs, lr, progress)
        bank = state.bank.select(range(state.bank.m))  # a copy: readers keep the old bank
        fresh = LoRABank.initialised(bank.shapes, len(adapters), bank.rank, bank.alpha, seed=cfg.seed + len(state))
        with torch.no_grad():
            for k in range(len(bank.names)):
                bank.A[k][adapters] = fresh.A[k].to(bank.A[k].device)
                bank.B[k][adapters] = 0.0
        z = state.routing_logits.clone()
        if users:
            docs = [state.documents[i] for i in users]
            data = aug(docs)
            logits = z[users].clone().requires_grad_(True)
            ck = run_checkpoint(checkpoint_dir, checkpoint_every, "poly-refit", llm, docs, data, cfg,
                                {"library": state.doc_ids, "bank": tensor_digest(state.bank.tensors()),
                                 "deleted": list(deleted), "adapters": adapters})
            report["steps"] = len(train_poly(llm, bank, logits, data, cfg, train_bank=True, checkpoint=ck,
                                             trainable_adapters=adapters))
            z[users] = logits.detach()
        return replace(state, bank=bank, routing_logits=z), report
