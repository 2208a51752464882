"""PRAG's training (Su et al., SIGIR 2025): one LoRA per document from one shared random init, each adapter
learning its own document's texts alone, many documents batched together."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Sequence

import torch

from ...encoding.augment import TrainingExample
from ...engine import LoRABank
from ...errors import InvalidInputError
from ...progress import progress_bar
from ...encoding.training import FrozenPrefix, TrainConfig, accumulate, set_lr, windows

if TYPE_CHECKING:
    from ...encoding.checkpoint import Checkpoint
    from ...generation.llm import LoRAMixingLLM


def train_prag_bank(llm: "LoRAMixingLLM", modules: dict[str, tuple[int, int]],
                    data: Sequence[Sequence[TrainingExample]], rank: int, alpha: float, cfg: TrainConfig,
                    group_size: int, checkpoint: Checkpoint | None = None) -> LoRABank:
    """One adapter per document from PRAG's shared random init, trained in groups of similar length.

    With a ``checkpoint``, each finished group's adapters are saved at once and a rerun reuses them:
    no document is trained twice."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise InvalidInputError(f"group_size must be a positive integer, got {group_size!r}.")
    order = sorted(range(len(data)), key=lambda i: len(data[i]))  # similar lengths share a group
    init = LoRABank.initialised(modules, 1, rank, alpha, seed=cfg.seed)
    parts: dict[int, LoRABank] = {}
    for s in range(0, len(order), group_size):
        idx = order[s: s + group_size]
        saved = checkpoint.read(f"group-{s}") if checkpoint is not None else None
        if saved is not None and saved[1].get("documents") == idx:
            t = saved[0]
            group = LoRABank(modules, len(idx), rank, alpha, A=[t[f"{n}.lora_A"] for n in modules],
                             B=[t[f"{n}.lora_B"] for n in modules]).to(llm.device)
        else:
            A = [a.expand(len(idx), -1, -1).clone() for a in init.A]
            group = LoRABank(modules, len(idx), rank, alpha, A=A).to(llm.device)
            train_per_document(llm, group, [data[i] for i in idx], cfg)
            if checkpoint is not None:
                checkpoint.write(group.tensors(), {"documents": idx}, name=f"group-{s}")
        for j, i in enumerate(idx):
            parts[i] = group.select([j])
    docs = [parts[i] for i in range(len(data))]  # one concatenation per module, in document order
    return LoRABank(modules, len(docs), rank, alpha,
                    A=[torch.cat([p.A[k] for p in docs]) for k in range(len(modules))],
                    B=[torch.cat([p.B[k] for p in docs]) for k in range(len(modules))])


def train_per_document(llm: "LoRAMixingLLM", bank: LoRABank, data: Sequence[Sequence[TrainingExample]],
                       cfg: TrainConfig) -> list[float]:
    """PRAG: adapter g of ``bank`` learns document g's texts alone, all documents in one batch.

    Step t feeds example t of every document (batch size 1 each) and sums the per-document
    losses, so each adapter gets exactly the gradient of its own document; AdamW is elementwise,
    so this equals training the adapters one by one, only batched."""
    rng = random.Random(cfg.seed)
    toks = [[t for ex in exs for t in windows(llm, ex, cfg.max_length)] for exs in data]
    for p in bank.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(bank.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    eye = torch.eye(bank.m, device=llm.device)
    losses: list[float] = []
    n_steps = max(len(t) for t in toks)
    base_lr = [g["lr"] for g in opt.param_groups]
    prefix = FrozenPrefix.of(llm, bank)  # the layers below the adapters: run once per text, not every epoch
    done: dict[int, list[torch.Tensor]] = {}  # early-stopped documents: their adapter slices, kept as they were
    bar = progress_bar(cfg.epochs * n_steps, "encode (PRAG)", cfg.progress)
    try:
        for _ in range(cfg.epochs):
            orders = [rng.sample(range(len(t)), len(t)) for t in toks]
            epoch_loss = [0.0] * len(toks)
            for step in range(n_steps):
                docs = [g for g in range(len(toks)) if step < len(toks[g]) and g not in done]
                if not docs:
                    continue
                rows = [toks[g][orders[g][step]] for g in docs]
                opt.zero_grad(set_to_none=True)
                set_lr(opt, base_lr, cfg, len(losses), cfg.epochs * n_steps)
                per_row = [0.0] * len(rows)
                # one-hot weights: each adapter's gradient comes from its own document only
                loss = accumulate(llm, bank, rows, lambda mb: eye[[docs[i] for i in mb]], 1.0,
                                   cfg.max_batch_tokens, len(losses) + 1, per_row, prefix)
                opt.step()
                _keep_stopped(bank, done)
                for g, v in zip(docs, per_row):
                    epoch_loss[g] += v / len(toks[g])
                losses.append(float(loss.detach()) / len(docs))
                bar.update(1)
            if cfg.stop_loss is not None:  # a document that recites its texts well enough trains no more
                for g in range(len(toks)):
                    if g not in done and epoch_loss[g] < cfg.stop_loss:
                        done[g] = [t[g].detach().clone() for t in bank.parameters()]
            if len(done) == len(toks):
                break
    finally:
        bar.close()
        for p in bank.parameters():
            p.requires_grad_(False)
    return losses


def _keep_stopped(bank: LoRABank, done: dict[int, list[torch.Tensor]]) -> None:
    """Put the early-stopped documents' adapters back as they were: AdamW's moments would still move them."""
    if not done:
        return
    with torch.no_grad():
        for g, saved in done.items():
            for t, v in zip(bank.parameters(), saved):
                t[g].copy_(v)
