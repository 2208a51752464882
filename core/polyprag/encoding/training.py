"""Training on the mixing engine, what every method's loop shares: settings, tokenising, batch order and
the loss of rows that each carry their own mixture (Poly-PRAG's and PRAG's loops live in ``polyprag.methods``)."""
from __future__ import annotations

import copy
import random
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .augment import TrainingExample
from ..engine import BankMixture, LoRABank, use_mixture
from ..errors import TrainingError
from ..generation.prompts import answer_target, text_start_id

if TYPE_CHECKING:
    from ..generation.llm import LoRAMixingLLM


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
    lr_decay: bool = False  # the learning rate falls linearly from lr to 0 over the run (else constant)
    seed: int = 0
    progress: bool = True


@dataclass
class Tokenized:
    """One example as token ids with labels (-100 where nothing is learned); a distilled answer also has the
    teacher's top ids and probabilities for its tokens from position ``soft_start`` on."""

    ids: list[int]
    labels: list[int]
    soft_start: int = 0
    soft_ids: tuple | None = None
    soft_p: tuple | None = None


WINDOW_CONTEXT = 4  # a window after the first repeats the last 1/4 of its width as unlearned context


def tokenize(llm: "LoRAMixingLLM", ex: TrainingExample, max_length: int) -> Tokenized:
    """The first (for a text that fits, only) training window of an example; see ``windows``."""
    return windows(llm, ex, max_length)[0]


def windows(llm: "LoRAMixingLLM", ex: TrainingExample, max_length: int) -> list[Tokenized]:
    """Token ids of an example, in windows of at most ``max_length``: a plain text learns every one of its
    tokens, however long (a text longer than a window is cut into windows that each start with the text's start
    token and repeat the previous window's last quarter as context, so each token is learned once and with at
    least that much of what precedes it); a QA learns only its answer, its prompt cut from the left to fit."""
    tok = llm.tokenizer
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    if ex.question is None:
        ids = tok(ex.target, add_special_tokens=False)["input_ids"] + eos
        start = text_start_id(tok)  # a recitation starts from it too (PolyPRAG mode="recite")
        bos = [start] if start is not None else []
        width = max(2, max_length - len(bos))
        context = width // WINDOW_CONTEXT
        out = [Tokenized((bos + ids)[:max_length], ([-100] + ids if bos else list(ids))[:max_length])]
        learned = width if bos else max_length
        while learned < len(ids):  # the next window: `context` tokens seen again, then new ones learned
            begin = learned - context
            chunk = ids[begin: begin + width]
            out.append(Tokenized(bos + chunk, [-100] * (len(bos) + context) + chunk[context:]))
            learned = begin + len(chunk)
        return out
    prompt = llm.question_prompt(ex.question, [ex.context] if ex.context else ())  # ends "The answer is"
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(answer_target(ex.target), add_special_tokens=False)["input_ids"] + eos  # " <answer>." as asked
    keep = max(1, max_length - len(a))
    p = p[-keep:]
    ids, labels = (p + a)[:max_length], ([-100] * len(p) + a)[:max_length]
    if ex.teacher is None:
        return [Tokenized(ids, labels)]
    t_ids, t_p = ex.teacher
    if len(t_ids) != len(a):
        raise TrainingError(f"The teacher's distributions cover {len(t_ids)} answer tokens, the answer has {len(a)}; "
                            "the distillation cache was made with another tokenizer: delete it and encode again.")
    n = len(ids) - len(p)
    return [Tokenized(ids, labels, len(p), tuple(t_ids[:n]), tuple(t_p[:n]))]


def collate(rows: Sequence[Tokenized], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, labels; with distilled rows also soft_ids and soft_p
    [batch, width, top_k], the teacher's distribution at each answer token (zero elsewhere)."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        labels[i, : len(r.labels)] = torch.tensor(r.labels)
        mask[i, : len(r.ids)] = 1
    out = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
    soft = [r for r in rows if r.soft_ids]
    if soft:
        k = max(len(t) for r in soft for t in r.soft_ids)
        s_ids = torch.zeros((len(rows), width, k), dtype=torch.long)
        s_p = torch.zeros((len(rows), width, k))
        for i, r in enumerate(rows):
            for j, (t, p) in enumerate(zip(r.soft_ids or (), r.soft_p or ())):
                s_ids[i, r.soft_start + j, : len(t)] = torch.tensor(t)
                s_p[i, r.soft_start + j, : len(p)] = torch.tensor(p)
        out["soft_ids"], out["soft_p"] = s_ids.to(device), s_p.to(device)
    return out


def row_losses(llm: "LoRAMixingLLM", batch: dict[str, torch.Tensor], mixture,
               prefix: "FrozenPrefix | None" = None, rows: Sequence[Tokenized] | None = None) -> torch.Tensor:
    """Mean next-token loss of each row [batch] with the mixture applied (in the LLM's compute dtype).

    The vocabulary projection runs only where a token is learned (answers, not their prompts). With a
    ``prefix`` (and the batch's ``rows``), the layers below the first adapter are not run again: their output
    for these rows comes from the prefix's cache."""
    model = llm.model
    labels = batch["labels"][:, 1:]  # position t predicts token t+1
    learned_rows, cols = (labels != -100).nonzero(as_tuple=True)
    with llm.compute(mixture):
        if prefix is not None and rows is not None and prefix.usable_for(batch):
            hidden = prefix.top(batch, rows)
        else:
            hidden = model.base_model(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][learned_rows, cols]).float()  # [learned, vocab]
    tok_loss = F.cross_entropy(logits, labels[learned_rows, cols], reduction="none")
    if "soft_p" in batch:  # distilled tokens: -Σ_v p_teacher(v) log p(v) over the teacher's top k, replacing the CE
        p = batch["soft_p"][:, 1:][learned_rows, cols]  # [learned, k]
        soft = -(p * F.log_softmax(logits, -1).gather(1, batch["soft_ids"][:, 1:][learned_rows, cols])).sum(1)
        tok_loss = torch.where(p.sum(1) > 0, soft, tok_loss)
    sums = torch.zeros(labels.shape[0], device=tok_loss.device).index_add(0, learned_rows, tok_loss)
    counts = (labels != -100).sum(1).clamp(min=1)
    return sums / counts


class FrozenPrefix:
    """The transformer layers below a bank's first adapter, run once per training row.

    Their weights are frozen and carry no LoRA, so a row's hidden state at the first trained layer is the same
    in every epoch: it is computed once, kept (up to ``max_bytes``), and each step runs only the trained layers
    on it. The backward pass stopped there already; this removes the lower layers' forward pass too, so with
    ``layers=N`` of L a step costs about N/L of a full one. The base model is never modified (its layers are
    shared, not swapped), so queries running beside an encode are unaffected.

    ``of`` returns None when there is nothing to skip (adapters on the first layer) or the model's layout is
    not the ``layers`` / ``norm`` one this knows; the first use checks the split forward against the full one
    and falls back to full forward passes, with a warning, if they differ."""

    def __init__(self, llm: "LoRAMixingLLM", base: nn.Module, first: int, max_bytes: int = 2 << 30):
        self.llm = llm
        self.first = first
        self.max_bytes = max_bytes
        self.bytes = 0
        self._bottom = _sliced(base, 0, first, norm=False)
        self._top = _sliced(base, first, len(base.layers), norm=True)
        self._cache: dict[int, tuple[Tokenized, torch.Tensor]] = {}  # id(row) -> (row, hidden [len, d])
        self._checked = False
        self.usable = True

    @classmethod
    def of(cls, llm: "LoRAMixingLLM", bank: LoRABank, max_bytes: int = 2 << 30) -> "FrozenPrefix | None":
        """The frozen prefix below ``bank``'s lowest adapted layer, or None if there is none to skip."""
        base = llm.model.base_model
        layers = getattr(base, "layers", None)
        if not isinstance(layers, nn.ModuleList) or not isinstance(getattr(base, "norm", None), nn.Module):
            return None
        index = [layer_index(n) for n in bank.names]
        if not index or any(i is None for i in index) or min(index) == 0:
            return None
        return cls(llm, base, min(index), max_bytes)

    def usable_for(self, batch: dict[str, torch.Tensor]) -> bool:
        """Whether this model's layers split here: checked once, on the first batch (see ``_check``)."""
        if not self._checked:
            self._check(batch)
        return self.usable

    def top(self, batch: dict[str, torch.Tensor], rows: Sequence[Tokenized]) -> torch.Tensor:
        """The last hidden state [batch, length, d] of ``batch`` (whose rows are ``rows``), run from the cache."""
        missing = [i for i, r in enumerate(rows) if id(r) not in self._cache]
        fresh: dict[int, torch.Tensor] = {}
        if missing:
            with torch.no_grad():
                out = self._bottom(input_ids=batch["input_ids"][missing],
                                   attention_mask=batch["attention_mask"][missing]).last_hidden_state
            for j, i in enumerate(missing):
                fresh[i] = h = out[j, : len(rows[i].ids)]
                if self.bytes + h.numel() * h.element_size() <= self.max_bytes:
                    self._cache[id(rows[i])] = (rows[i], h)
                    self.bytes += h.numel() * h.element_size()
        hs = [fresh[i] if i in fresh else self._cache[id(r)][1] for i, r in enumerate(rows)]
        start = hs[0].new_zeros((len(rows), batch["input_ids"].shape[1], hs[0].shape[-1]))  # [batch, width, d]
        for i, h in enumerate(hs):
            start[i, : h.shape[0]] = h
        return self._top(inputs_embeds=start, attention_mask=batch["attention_mask"]).last_hidden_state

    def _check(self, batch: dict[str, torch.Tensor]) -> None:
        """The split forward must give the full forward's hidden state (no adapter applied)."""
        self._checked = True
        ids, mask = batch["input_ids"][:1], batch["attention_mask"][:1]
        try:
            with torch.no_grad(), use_mixture(None):
                full = self.llm.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
                mid = self._bottom(input_ids=ids, attention_mask=mask).last_hidden_state
                split = self._top(inputs_embeds=mid, attention_mask=mask).last_hidden_state
            n = int(mask.sum())
            ok = torch.allclose(split[0, :n].float(), full[0, :n].float(), rtol=1e-3,
                                atol=1e-3 * float(full[0, :n].float().abs().max()))
        except Exception as err:  # a model whose forward does not take this split
            ok, why = False, f"{type(err).__name__}: {err}"
        else:
            why = "its hidden states differ from the full forward pass"
        if not ok:
            self.usable = False
            warnings.warn(f"Training runs every layer's forward pass: this model's layers cannot be split at layer "
                          f"{self.first} ({why}).", stacklevel=4)


def _sliced(base: nn.Module, start: int, stop: int, norm: bool) -> nn.Module:
    """A view of ``base`` with only layers [start, stop) (and its final norm, or none): the same parameters,
    the module itself untouched."""
    view = copy.copy(base)
    view._modules = dict(base._modules)
    view._modules["layers"] = nn.ModuleList(list(base.layers)[start:stop])
    if not norm:
        view._modules["norm"] = nn.Identity()
    return view


def set_lr(opt: torch.optim.Optimizer, base: Sequence[float], cfg: TrainConfig, step: int, total: int) -> None:
    """Each param group's learning rate for optimizer step ``step`` (0-based) of ``total``: its ``base`` rate, or with
    ``cfg.lr_decay`` that rate times (1 - step / total). Read from the step count, so a resumed run continues it."""
    factor = 1.0 - step / max(total, 1) if cfg.lr_decay else 1.0
    for group, lr in zip(opt.param_groups, base):
        group["lr"] = lr * factor


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
               step: int, per_row: list[float] | None = None,
               prefix: FrozenPrefix | None = None) -> torch.Tensor:
    """Backward pass of ``scale`` × the summed row losses, in length-sorted micro-batches.

    ``weights(mb)`` gives the mixing weights [len(mb), m] of the rows ``mb``; gradients accumulate
    in the trained tensors. Returns the (detached) scaled loss; ``per_row`` (len(rows) floats) gets each
    row's own mean token loss; a ``prefix`` (``FrozenPrefix``) serves the frozen lower layers from its cache."""
    loss = torch.zeros((), device=llm.device)
    for mb in micro_batches(rows, max_tokens):
        chosen = [rows[i] for i in mb]
        batch = collate(chosen, llm.tokenizer.pad_token_id, llm.device)
        losses = row_losses(llm, batch, BankMixture(bank, weights(mb)[:, None, :]), prefix, chosen)
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


def layer_index(module_name: str) -> int | None:
    """The transformer layer a module belongs to (``model.layers.12.mlp.up_proj`` -> 12), None if it names none."""
    found = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)\.", module_name)
    return int(found.group(1)) if found else None
