"""PRAG's training (Su et al., SIGIR 2025): one LoRA per document from one shared random init, each adapter
learning its own document's texts alone, many documents batched together."""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ...encoding.augment import TrainingExample
from ...engine import LoRABank
from ...errors import InvalidInputError
from ...progress import progress_bar
from ...encoding.training import FrozenPrefix, TrainConfig, accumulate, set_lr, windows

if TYPE_CHECKING:
    from ...encoding.checkpoint import Checkpoint
    from ...generation.llm import LoRAMixingLLM


def prag_groups(data: Sequence[Sequence[TrainingExample]], group_size: int) -> list[list[int]]:
    """The documents' training groups, as indices into ``data``: similar numbers of texts share a group. They
    depend on the documents and ``group_size`` alone, so a run on any number of processes trains the same groups."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise InvalidInputError(f"group_size must be a positive integer, got {group_size!r}.")
    order = sorted(range(len(data)), key=lambda i: len(data[i]))  # similar lengths share a group
    return [order[s: s + group_size] for s in range(0, len(order), group_size)]


def deal_groups(groups: list[list[int]], data: Sequence[Sequence[TrainingExample]], world: int) -> list[int]:
    """The process that trains each group: the costliest groups first, each to the least loaded process (cost:
    the characters of its documents' texts, which a length-sorted micro-batch's time follows). Every process
    computes the same deal; it sets only who trains a group, never what the group learns."""
    cost = [sum(len(ex.target) + len(ex.question or "") + len(ex.context or "") for i in idx for ex in data[i])
            for idx in groups]
    load, owner = [0] * world, [0] * len(groups)
    for g in sorted(range(len(groups)), key=lambda g: (-cost[g], g)):
        owner[g] = min(range(world), key=lambda r: (load[r], r))
        load[owner[g]] += cost[g]
    return owner


def train_prag_bank(llm: "LoRAMixingLLM", modules: dict[str, tuple[int, int]],
                    data: Sequence[Sequence[TrainingExample]], rank: int, alpha: float, cfg: TrainConfig,
                    group_size: int, checkpoint: Checkpoint | None = None, shard: tuple[int, int] = (0, 1),
                    collect: Callable[[dict], list[dict] | None] = lambda part: [part]) -> LoRABank | None:
    """One adapter per document from PRAG's shared random init, trained in groups of similar length.

    With a ``checkpoint``, each finished group's adapters are saved at once and a rerun reuses them:
    no document is trained twice. ``shard`` = (rank, world): this process trains its share of the groups
    (``deal_groups``), and ``collect`` brings every process's groups to the one that assembles the bank (None
    elsewhere). A group trains alike wherever it runs, so the bank equals a single process's bit for bit."""
    groups = prag_groups(data, group_size)
    init = LoRABank.initialised(modules, 1, rank, alpha, seed=cfg.seed)
    mine: dict[int, dict[str, torch.Tensor]] = {}  # group number -> its adapters' tensors, on the CPU
    owner = deal_groups(groups, data, shard[1])
    for g in (g for g in range(len(groups)) if owner[g] == shard[0]):
        idx = groups[g]
        name = f"group-{g * group_size}"  # named by the group's first position, as before sharding
        saved = checkpoint.read(name) if checkpoint is not None else None
        if saved is not None and saved[1].get("documents") == idx:
            mine[g] = saved[0]
            continue
        A = [a.expand(len(idx), -1, -1).clone() for a in init.A]
        group = LoRABank(modules, len(idx), rank, alpha, A=A).to(llm.device)
        train_per_document(llm, group, [data[i] for i in idx], cfg)
        if checkpoint is not None:
            checkpoint.write(group.tensors(), {"documents": idx}, name=name)
        mine[g] = {k: v.detach().cpu() for k, v in group.tensors().items()}
    # sent on in rounds of one group per process, so that rank 0 holds the library and one round's copies in
    # transit, not every process's whole share at once
    rounds = max(owner.count(r) for r in range(shard[1]))
    own = sorted(mine)
    trained: dict[int, dict[str, torch.Tensor]] = {}
    for i in range(rounds):
        parts = collect({own[i]: mine.pop(own[i])} if i < len(own) else {})
        for part in parts or ():
            trained.update(part)
    if shard[0] != 0:
        return None
    row = {i: (g, j) for g, idx in enumerate(groups) for j, i in enumerate(idx)}  # document -> (group, slot)
    rows = [row[i] for i in range(len(data))]  # one concatenation per module, in document order

    def stacked(key: str) -> torch.Tensor:
        return torch.stack([trained[g][key][j] for g, j in rows]).to(llm.device)

    return LoRABank(modules, len(data), rank, alpha, A=[stacked(f"{n}.lora_A") for n in modules],
                    B=[stacked(f"{n}.lora_B") for n in modules])


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
