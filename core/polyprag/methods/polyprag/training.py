"""Poly-PRAG's joint training (arXiv 2511.17044), Polytropon-style multi-task learning with each passage a task:
each row's weights over the bank are a relaxed Bernoulli sample of its document's routing (``routing``), and the
causal-LM loss of its training texts flows into both the bank and z_d."""
from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ...encoding.augment import TrainingExample
from ...encoding.checkpoint import optimizer_tensors, python_rng_from, python_rng_state, restore_optimizer
from ...engine import LoRABank
from ...progress import progress_bar
from ...encoding.training import FrozenPrefix, TrainConfig, accumulate, bucketed_order, set_lr, windows
from .routing import logistic_noise, relaxed_bernoulli_weights

if TYPE_CHECKING:
    from ...encoding.checkpoint import Checkpoint
    from ...generation.llm import LoRAMixingLLM


def train_poly(llm: "LoRAMixingLLM", bank: LoRABank, logits: torch.Tensor,
               data: Sequence[Sequence[TrainingExample]], cfg: TrainConfig, train_bank: bool = True,
               on_step: Callable[[int, float], None] | None = None,
               shard: tuple[int, int] = (0, 1),
               sync: Callable[[list[torch.Tensor]], None] | None = None,
               checkpoint: "Checkpoint | None" = None, frozen_adapters: int = 0,
               trainable_adapters: Sequence[int] | None = None) -> list[float]:
    """Jointly train the bank (if ``train_bank``) and routing logits [N, m] on each document's texts.

    ``trainable_adapters``: only these adapters of the bank train; every other one stays exactly as it is
    (its gradient is zeroed, so AdamW without weight decay never moves it). ``frozen_adapters=k`` is short
    for ``trainable_adapters=range(k, m)``: a grown bank trains only its new adapters.
    Mini-batches mix documents; each row carries its own document's sampled mixture.
    Data-parallel: process ``shard = (rank, world)`` takes every world-th mini-batch of the same
    seeded order (``batch_size`` is then per process) and ``sync`` averages the gradients of the
    trained tensors across processes before each step, so the replicas stay identical.
    ``checkpoint``: every ``checkpoint.every`` steps the bank, logits, optimizer and RNG states are
    saved atomically, and a rerun resumes from the last save exactly as if never interrupted
    (with several processes, give each rank its own checkpoint)."""
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    items = [(d, t) for d, exs in enumerate(data) for ex in exs for t in windows(llm, ex, cfg.max_length)]
    lengths = [len(t.ids) for _, t in items]
    order = list(range(len(items)))  # drawn each epoch from the seed and the lengths (the same on every rank)
    params = [{"params": [logits], "lr": cfg.routing_lr or cfg.lr}]
    hooks = []
    if train_bank:
        if trainable_adapters is None and frozen_adapters:
            trainable_adapters = range(frozen_adapters, bank.m)
        trains = None  # [m, 1, 1]: True where an adapter trains
        if trainable_adapters is not None:
            trains = torch.zeros(bank.m, 1, 1, dtype=torch.bool, device=bank.A[0].device)
            trains[list(trainable_adapters)] = True
        for p in bank.parameters():
            p.requires_grad_(True)
            if trains is not None:
                hooks.append(p.register_hook(lambda g: torch.where(trains, g, torch.zeros_like(g))))
        params.append({"params": list(bank.parameters()), "lr": cfg.lr,
                       "weight_decay": cfg.weight_decay if trains is None else 0.0})
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)
    base_lr = [g["lr"] for g in opt.param_groups]
    losses: list[float] = []
    rank, world = shard
    trained = [logits] + (list(bank.parameters()) if train_bank else [])
    per_epoch = math.ceil(len(items) / (cfg.batch_size * world))
    prefix = FrozenPrefix.of(llm, bank)  # the layers below the adapters: run once per text, not every epoch
    start_epoch, start_step = 0, 0
    saved = checkpoint.read() if checkpoint is not None else None
    if saved is not None:
        start_epoch, start_step, losses, order = _restore_poly(saved, trained, opt, rng, gen)
    bar = progress_bar(cfg.epochs * per_epoch, "encode (poly)" if train_bank else "fit routing", cfg.progress)
    bar.update(len(losses))
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if not (epoch == start_epoch and start_step > 0):  # a resumed epoch keeps its saved order
                order = bucketed_order(lengths, cfg.batch_size * world, rng)  # global batches
            for step in range(start_step if epoch == start_epoch else 0, per_epoch):
                s = (step * world + rank) * cfg.batch_size
                chunk = [items[i] for i in order[s: s + cfg.batch_size]]  # empty on the last data-parallel round
                opt.zero_grad(set_to_none=False)
                set_lr(opt, base_lr, cfg, len(losses), cfg.epochs * per_epoch)
                for p in trained:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                loss = torch.zeros((), device=llm.device)
                if chunk:
                    noise = logistic_noise(len(chunk), bank.m, gen)  # one draw per row, as one batch

                    def weights(mb: list[int]) -> torch.Tensor:  # this micro-batch's sampled routing [b, m]
                        rows = torch.tensor([chunk[i][0] for i in mb], device=logits.device)
                        return relaxed_bernoulli_weights(logits[rows], cfg.temperature, noise=noise[mb])

                    # scaled by 1/len(chunk): the accumulated gradient is the batch mean's
                    loss = accumulate(llm, bank, [t for _, t in chunk], weights, 1 / len(chunk),
                                       cfg.max_batch_tokens, len(losses) + 1, prefix=prefix)
                if sync is not None:
                    sync([p.grad for p in trained])
                opt.step()
                losses.append(float(loss.detach()))
                if checkpoint is not None and (checkpoint.due(len(losses)) or step + 1 == per_epoch):
                    at = (epoch + 1, 0) if step + 1 == per_epoch else (epoch, step + 1)
                    _save_poly(checkpoint, at, losses, order, trained, opt, rng, gen)
                if on_step:
                    on_step(len(losses), losses[-1])
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        bar.close()
        for h in hooks:
            h.remove()
        for p in bank.parameters():
            p.requires_grad_(False)
        logits.requires_grad_(False)
    return losses


def _save_poly(checkpoint: "Checkpoint", at: tuple[int, int], losses: list[float], order: list[int],
               trained: list[torch.Tensor], opt: torch.optim.Optimizer, rng: random.Random,
               gen: torch.Generator) -> None:
    """Everything a resumed ``train_poly`` needs to continue bit for bit: tensors, optimizer, RNGs, position."""
    tensors = {f"param.{i}": p.detach() for i, p in enumerate(trained)}
    tensors.update(optimizer_tensors(opt))
    tensors["torch_rng"] = gen.get_state()
    checkpoint.write(tensors, {"epoch": at[0], "step": at[1], "losses": losses, "order": order,
                               "python_rng": python_rng_state(rng.getstate())})


def _restore_poly(saved, trained: list[torch.Tensor], opt: torch.optim.Optimizer, rng: random.Random,
                  gen: torch.Generator) -> tuple[int, int, list[float], list[int]]:
    tensors, meta = saved
    with torch.no_grad():
        for i, p in enumerate(trained):
            p.copy_(tensors[f"param.{i}"].to(p.device))
    restore_optimizer(opt, tensors)
    gen.set_state(tensors["torch_rng"])
    rng.setstate(python_rng_from(meta["python_rng"]))
    return int(meta["epoch"]), int(meta["step"]), list(meta["losses"]), list(meta["order"])
