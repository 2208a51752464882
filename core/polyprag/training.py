"""Training on the mixing engine, what every method's loop shares: settings, tokenising, batch order and
the loss of rows that each carry their own mixture (Poly-PRAG's and PRAG's loops live in ``polyprag.methods``)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from .augment import TrainingExample
from .engine import BankMixture, LoRABank
from .errors import TrainingError
from .prompts import answer_target, text_start_id

if TYPE_CHECKING:
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
    stop_loss: float | None = None  # PRAG: a document's adapter stops training once its epoch loss is below this
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
        start = text_start_id(tok)  # a recitation starts from it too (PolyPRAG mode="recite")
        bos = [start] if start is not None else []
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


def accumulate(llm: "LoRAMixingLLM", bank: LoRABank, rows: Sequence[Tokenized],
               weights: Callable[[list[int]], torch.Tensor], scale: float, max_tokens: int,
               step: int, per_row: list[float] | None = None) -> torch.Tensor:
    """Backward pass of ``scale`` × the summed row losses, in length-sorted micro-batches.

    ``weights(mb)`` gives the mixing weights [len(mb), m] of the rows ``mb``; gradients accumulate
    in the trained tensors. Returns the (detached) scaled loss; ``per_row`` (len(rows) floats) gets each
    row's own mean token loss."""
    loss = torch.zeros((), device=llm.device)
    for mb in micro_batches(rows, max_tokens):
        batch = collate([rows[i] for i in mb], llm.tokenizer.pad_token_id, llm.device)
        losses = row_losses(llm, batch, BankMixture(bank, weights(mb)[:, None, :]))
        part = losses.sum() * scale
        _check_finite(part, step)
        part.backward()
        loss = loss + part.detach()
        if per_row is not None:
            for i, v in zip(mb, losses.detach().tolist()):
                per_row[i] = v
    return loss


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(f"Training diverged: the loss is {float(loss.detach())} at step {step}. "
                            "Lower lr / routing_lr (or use a float32 model) and encode again.")
