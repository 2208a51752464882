"""Training loops on the mixing engine: joint Poly-PRAG, routing-only fit, and per-document PRAG.

Poly-PRAG (arXiv 2511.17044), Polytropon-style multi-task learning with each passage a task:
during training a document's weights over the bank are a relaxed Bernoulli sample,
    y_j = σ((z_dj + log u - log(1-u)) / τ),  u ~ U(0, 1),   w_d = y / Σ_j y_j,
and the causal-LM loss of its training texts flows into both the bank and z_d.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from .augment import TrainingExample
from .errors import TrainingError
from .engine import BankMixture, LoRABank
from .progress import progress_bar
from .prompts import answer_target

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .llm import LoRAMixingLLM


@dataclass
class TrainConfig:
    """Optimisation settings shared by every training loop."""

    lr: float = 3e-4
    routing_lr: float | None = None  # None: same as lr
    epochs: int = 1
    batch_size: int = 4
    max_length: int = 256
    max_batch_tokens: int = 2048  # a step's rows run in length-sorted micro-batches of at most this many
    #                               padded tokens, gradients accumulated: the same update, less padding
    temperature: float = 1.0  # relaxed-Bernoulli temperature τ
    routing_active: int = 0  # Poly-PRAG routing init: 0 = every adapter equally likely (Polytropon);
    #                          a > 0 = each document starts on `a` random adapters (sparse, specialising)
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True


@dataclass
class Tokenized:
    """One example as token ids with labels (-100 where nothing is learned)."""

    ids: list[int]
    labels: list[int]


def tokenize(llm: "LoRAMixingLLM", ex: TrainingExample, max_length: int) -> Tokenized:
    """Token ids of an example: plain text learns every token; a QA learns only the answer."""
    tok = llm.tokenizer
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    if ex.question is None:
        ids = tok(ex.target, add_special_tokens=False)["input_ids"] + eos
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        ids = (bos + ids)[:max_length]
        return Tokenized(ids, [-100] + ids[1:] if bos else list(ids))
    prompt = llm.question_prompt(ex.question, [ex.context] if ex.context else ())  # ends "The answer is"
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(answer_target(ex.target), add_special_tokens=False)["input_ids"] + eos  # " <answer>." as asked
    keep = max(1, max_length - len(a))
    p = p[-keep:]
    return Tokenized((p + a)[:max_length], ([-100] * len(p) + a)[:max_length])


def collate(rows: Sequence[Tokenized], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        mask[i, : len(r.ids)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def row_losses(llm: "LoRAMixingLLM", batch: dict[str, torch.Tensor], mixture) -> torch.Tensor:
    """Mean next-token loss of each row [batch] with the mixture applied (in the LLM's compute dtype).

    The vocabulary projection runs only where a token is learned (answers, not their prompts)."""
    model = llm.model
    labels = batch["labels"][:, 1:]  # position t predicts token t+1
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    with llm.compute(mixture):
        hidden = model.base_model(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"]).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][rows, cols]).float()  # [learned tokens, vocab]
    tok_loss = F.cross_entropy(logits, labels[rows, cols], reduction="none")
    sums = torch.zeros(labels.shape[0], device=tok_loss.device).index_add(0, rows, tok_loss)
    counts = (labels != -100).sum(1).clamp(min=1)
    return sums / counts


def micro_batches(rows: Sequence[Tokenized], max_tokens: int) -> list[list[int]]:
    """Row indices in length-sorted groups whose padded size (rows × longest) stays within ``max_tokens``
    (a row longer than that forms a group alone)."""
    groups: list[list[int]] = []
    for i in sorted(range(len(rows)), key=lambda i: len(rows[i].ids)):  # ascending: row i is its group's longest
        if groups and len(rows[i].ids) * (len(groups[-1]) + 1) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def logistic_noise(rows: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """log u − log(1 − u), u ~ U(0, 1): the noise of a relaxed Bernoulli sample [rows, m]."""
    u = torch.rand((rows, m), generator=gen).clamp(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def relaxed_bernoulli_weights(logits: torch.Tensor, temperature: float, gen: torch.Generator | None = None,
                              noise: torch.Tensor | None = None) -> torch.Tensor:
    """Training-time routing weights [rows, m]: normalised Gumbel-sigmoid samples of σ(z)
    (``noise`` from ``logistic_noise``, else drawn from ``gen``)."""
    if noise is None:
        noise = logistic_noise(logits.shape[0], logits.shape[1], gen)
    y = torch.sigmoid((logits + noise.to(logits.device)) / temperature)
    return y / y.sum(-1, keepdim=True)


def bucketed_order(lengths: Sequence[int], batch_size: int, rng: random.Random, pool: int = 16) -> list[int]:
    """A seeded epoch order whose consecutive ``batch_size`` chunks hold rows of similar length.

    Shuffle, sort each run of ``pool`` batches by length, cut it into batches, shuffle the full
    batches (a short one stays last): batches stay random, padding inside them mostly goes."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * pool
    batches: list[list[int]] = []
    for s in range(0, len(order), span):
        block = sorted(order[s: s + span], key=lambda i: lengths[i])
        batches += [block[b: b + batch_size] for b in range(0, len(block), batch_size)]
    short = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    rng.shuffle(full)
    return [i for b in full + short for i in b]


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
    items = [(d, tokenize(llm, ex, cfg.max_length)) for d, exs in enumerate(data) for ex in exs]
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
    losses: list[float] = []
    rank, world = shard
    trained = [logits] + (list(bank.parameters()) if train_bank else [])
    per_epoch = math.ceil(len(items) / (cfg.batch_size * world))
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
                    loss = _accumulate(llm, bank, [t for _, t in chunk], weights, 1 / len(chunk),
                                       cfg.max_batch_tokens, len(losses) + 1)
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


def _accumulate(llm: "LoRAMixingLLM", bank: LoRABank, rows: Sequence[Tokenized],
                weights: Callable[[list[int]], torch.Tensor], scale: float, max_tokens: int,
                step: int) -> torch.Tensor:
    """Backward pass of ``scale`` × the summed row losses, in length-sorted micro-batches.

    ``weights(mb)`` gives the mixing weights [len(mb), m] of the rows ``mb``; gradients accumulate
    in the trained tensors. Returns the (detached) scaled loss."""
    loss = torch.zeros((), device=llm.device)
    for mb in micro_batches(rows, max_tokens):
        batch = collate([rows[i] for i in mb], llm.tokenizer.pad_token_id, llm.device)
        part = row_losses(llm, batch, BankMixture(bank, weights(mb)[:, None, :])).sum() * scale
        _check_finite(part, step)
        part.backward()
        loss = loss + part.detach()
    return loss


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"Training diverged: the loss is {float(loss.detach())} at step {step}. "
                            "Lower lr / routing_lr (or use a float32 model) and encode again.")


def _save_poly(checkpoint: "Checkpoint", at: tuple[int, int], losses: list[float], order: list[int],
               trained: list[torch.Tensor], opt: torch.optim.Optimizer, rng: random.Random,
               gen: torch.Generator) -> None:
    """Everything a resumed ``train_poly`` needs to continue bit for bit: tensors, optimizer, RNGs, position."""
    from .checkpoint import optimizer_tensors, python_rng_state

    tensors = {f"param.{i}": p.detach() for i, p in enumerate(trained)}
    tensors.update(optimizer_tensors(opt))
    tensors["torch_rng"] = gen.get_state()
    checkpoint.write(tensors, {"epoch": at[0], "step": at[1], "losses": losses, "order": order,
                               "python_rng": python_rng_state(rng.getstate())})


def _restore_poly(saved, trained: list[torch.Tensor], opt: torch.optim.Optimizer, rng: random.Random,
                  gen: torch.Generator) -> tuple[int, int, list[float], list[int]]:
    from .checkpoint import python_rng_from, restore_optimizer

    tensors, meta = saved
    with torch.no_grad():
        for i, p in enumerate(trained):
            p.copy_(tensors[f"param.{i}"].to(p.device))
    restore_optimizer(opt, tensors)
    gen.set_state(tensors["torch_rng"])
    rng.setstate(python_rng_from(meta["python_rng"]))
    return int(meta["epoch"]), int(meta["step"]), list(meta["losses"]), list(meta["order"])


def train_per_document(llm: "LoRAMixingLLM", bank: LoRABank, data: Sequence[Sequence[TrainingExample]],
                       cfg: TrainConfig) -> list[float]:
    """PRAG: adapter g of ``bank`` learns document g's texts alone, all documents in one batch.

    Step t feeds example t of every document (batch size 1 each) and sums the per-document
    losses, so each adapter gets exactly the gradient of its own document; AdamW is elementwise,
    so this equals training the adapters one by one, only batched."""
    rng = random.Random(cfg.seed)
    toks = [[tokenize(llm, ex, cfg.max_length) for ex in exs] for exs in data]
    for p in bank.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(bank.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    eye = torch.eye(bank.m, device=llm.device)
    losses: list[float] = []
    n_steps = max(len(t) for t in toks)
    bar = progress_bar(cfg.epochs * n_steps, "encode (PRAG)", cfg.progress)
    try:
        for _ in range(cfg.epochs):
            orders = [rng.sample(range(len(t)), len(t)) for t in toks]
            for step in range(n_steps):
                docs = [g for g in range(len(toks)) if step < len(toks[g])]
                rows = [toks[g][orders[g][step]] for g in docs]
                opt.zero_grad(set_to_none=True)
                # one-hot weights: each adapter's gradient comes from its own document only
                loss = _accumulate(llm, bank, rows, lambda mb: eye[[docs[i] for i in mb]], 1.0,
                                   cfg.max_batch_tokens, len(losses) + 1)
                opt.step()
                losses.append(float(loss.detach()) / len(docs))
                bar.update(1)
    finally:
        bar.close()
        for p in bank.parameters():
            p.requires_grad_(False)
    return losses
