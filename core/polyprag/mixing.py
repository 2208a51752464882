"""The LoRA-mixing engine: one place where LoRA arithmetic meets the frozen base model.

A forward hook on every target ``nn.Linear`` adds ``delta(x)`` from the *mixture* active in
the current context (a ``contextvars.ContextVar``), so threads and asyncio tasks never see each
other's mixture and the base weights are never written. No active mixture: exactly the base model.

A ``BankMixture`` holds, per batch row, T terms, each a weight vector over a bank of m adapters:

    A(w) = Σ_j w_j A_j,  B(w) = Σ_j w_j B_j            (Polytropon: A and B mixed separately)
    ΔW_row = Σ_t s · B(w_t) A(w_t)                       (PRAG: the T documents' deltas summed)

computed as one rank-(T·r) LoRA per row by concatenating the terms' ranks. Poly-PRAG "mean" is
T = 1; Poly-PRAG "sum" and PRAG are T = k (PRAG: one-hot w over per-document adapters). LAG's
per-token router (``polyprag.lag``) is another ``Mixture`` on the same hooks: it computes A*x
for every adapter to route, then applies only the chosen B*.
"""
from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from typing import Iterator, Sequence

import torch
from torch import nn

from .errors import InvalidInputError

_ACTIVE: ContextVar["Mixture | None"] = ContextVar("polyprag_mixture", default=None)


def lowrank_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``x Aᵀ Bᵀ`` batched: x [rows, L, in], A [rows, R, in], B [rows, out, R] (rows broadcast)."""
    return torch.matmul(torch.matmul(x, A.transpose(-1, -2)), B.transpose(-1, -2))


class LoRABank(nn.Module):
    """m LoRA adapters over the same target modules: per module A [m, r, in], B [m, out, r]."""

    def __init__(self, modules: dict[str, tuple[int, int]], m: int, rank: int, alpha: float,
                 A: Sequence[torch.Tensor] | None = None, B: Sequence[torch.Tensor] | None = None):
        super().__init__()
        if m < 1 or rank < 1:
            raise InvalidInputError(f"A LoRA bank needs m >= 1 and rank >= 1, got m={m}, rank={rank}.")
        self.names = list(modules)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.shapes = dict(modules)  # name -> (in_features, out_features)
        self.m, self.rank, self.alpha = int(m), int(rank), float(alpha)
        if A is None:
            A = [torch.zeros(m, rank, modules[n][0]) for n in self.names]
        if B is None:
            B = [torch.zeros(m, modules[n][1], rank) for n in self.names]
        self.A = nn.ParameterList([nn.Parameter(a, requires_grad=False) for a in A])
        self.B = nn.ParameterList([nn.Parameter(b, requires_grad=False) for b in B])

    @property
    def scale(self) -> float:
        """LoRA scale s = alpha / r."""
        return self.alpha / self.rank

    @classmethod
    def initialised(cls, modules: dict[str, tuple[int, int]], m: int, rank: int, alpha: float,
                    seed: int = 0, shared_init: bool = False) -> "LoRABank":
        """A fresh bank as peft initialises LoRA: A Kaiming-uniform, B zero (ΔW = 0 at start).

        ``shared_init``: every adapter starts from the same A (PRAG's one shared random init)."""
        gen = torch.Generator().manual_seed(seed)
        As = []
        for n in modules:
            fan_in = modules[n][0]
            bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) as nn.Linear / peft
            count = 1 if shared_init else m
            a = (torch.rand(count, rank, fan_in, generator=gen) * 2 - 1) * bound
            As.append(a.expand(m, -1, -1).clone() if shared_init else a)
        return cls(modules, m, rank, alpha, A=As)

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [m, r, in], B [m, out, r]) of one target module."""
        i = self.index[name]
        return self.A[i], self.B[i]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor map for safetensors."""
        out = {}
        for n in self.names:
            a, b = self.factors(n)
            out[f"{n}.lora_A"] = a.detach().contiguous()
            out[f"{n}.lora_B"] = b.detach().contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], alpha: float) -> "LoRABank":
        """Inverse of ``tensors``."""
        names = sorted({k.rsplit(".", 1)[0] for k in tensors})
        if not names:
            raise InvalidInputError("No LoRA tensors given.")
        A = [tensors[f"{n}.lora_A"] for n in names]
        B = [tensors[f"{n}.lora_B"] for n in names]
        m, rank = A[0].shape[0], A[0].shape[1]
        modules = {n: (a.shape[2], b.shape[1]) for n, a, b in zip(names, A, B)}
        return cls(modules, m, rank, alpha, A=A, B=B)

    def extend(self, other: "LoRABank") -> "LoRABank":
        """A new bank holding this bank's adapters followed by ``other``'s (same modules and rank)."""
        if other.names != self.names or other.rank != self.rank or other.alpha != self.alpha:
            raise InvalidInputError("Banks to join must share target modules, rank and alpha.")
        A = [torch.cat([a.detach(), b.detach().to(a.device)]) for a, b in zip(self.A, other.A)]
        B = [torch.cat([a.detach(), b.detach().to(a.device)]) for a, b in zip(self.B, other.B)]
        return LoRABank(self.shapes, self.m + other.m, self.rank, self.alpha, A=A, B=B)

    def select(self, adapters: Sequence[int]) -> "LoRABank":
        """A new bank holding copies of the given adapters, in the given order."""
        idx = torch.as_tensor(list(adapters), dtype=torch.long, device=self.A[0].device)
        return LoRABank(self.shapes, len(idx), self.rank, self.alpha, A=[a.detach()[idx] for a in self.A],
                        B=[b.detach()[idx] for b in self.B])


def routing_weights(logits: torch.Tensor) -> torch.Tensor:
    """w = σ(z) / Σ_j σ(z_j), row-wise (Poly-PRAG inference routing)."""
    if not torch.isfinite(logits).all():
        raise InvalidInputError("The routing logits contain NaN or inf (training diverged or the table was "
                                "altered); re-encode the documents, with a lower lr if it diverged.")
    s = torch.sigmoid(logits)
    return s / s.sum(-1, keepdim=True)


class Mixture:
    """What the hooked layers add for each batch row; subclasses compute ``delta``."""

    rows: int = 1

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:  # pragma: no cover
        raise NotImplementedError

    def apply(self, name: str, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor | None:
        """The layer's output with this mixture's delta added (None: unchanged); the hook calls this."""
        d = self.delta(name, x)
        return None if d is None else output + d

    @classmethod
    def stack(cls, mixtures: Sequence["Mixture | None"]) -> "Mixture | None":  # pragma: no cover
        """One mixture whose rows are the given one-row mixtures (None: bare model for that row)."""
        raise InvalidInputError(f"{cls.__name__} mixtures cannot share a batch; run them one by one.")


class BankMixture(Mixture):
    """Per row, T weight vectors over a LoRABank; the row's delta is the sum of the T mixed LoRAs."""

    def __init__(self, bank: LoRABank, weights: torch.Tensor):
        if weights.dim() == 1:
            weights = weights[None, None, :]
        elif weights.dim() == 2:
            weights = weights[None]
        if weights.dim() != 3 or weights.shape[-1] != bank.m:
            raise InvalidInputError(
                f"Mixture weights must be [rows, terms, m={bank.m}], got {tuple(weights.shape)}; "
                "a mixture can only name adapters that exist in its bank."
            )
        if not torch.isfinite(weights).all():
            raise InvalidInputError("Mixture weights contain NaN or inf; check the routing logits.")
        self.bank = bank
        self.weights = weights  # [rows, T, m]
        self.rows = weights.shape[0]
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._flat: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # rows == 1: (A_mixᵀ, B_mixᵀ)
        self._used: torch.Tensor | None = None

    @classmethod
    def stack(cls, mixtures: Sequence["BankMixture | None"]) -> "BankMixture | None":
        """One mixture whose rows are the given one-row mixtures (None: that row runs the bare model).

        Rows over different banks (e.g. prepared while a library was updated) mix one bank joining theirs."""
        real = [m for m in mixtures if m is not None]
        if not real:
            return None
        if any(not isinstance(m, BankMixture) for m in real):
            raise InvalidInputError("Rows of one batch must all be BankMixtures.")
        if any(m.rows != 1 for m in real):
            raise InvalidInputError("stack() takes one-row mixtures.")
        banks = list({id(m.bank): m.bank for m in real}.values())
        bank = banks[0]
        for other in banks[1:]:  # rows prepared before and after a library update: one bank holding both
            bank = bank.extend(other)
        offset, at = {}, 0
        for b in banks:
            offset[id(b)], at = at, at + b.m
        T = max(m.weights.shape[1] for m in real)
        W = real[0].weights.new_zeros(len(mixtures), T, bank.m)  # zero weights: zero delta, exactly
        for i, m in enumerate(mixtures):
            if m is not None:
                j = offset[id(m.bank)]
                W[i, : m.weights.shape[1], j: j + m.bank.m] = m.weights[0]
        return cls(bank, W)

    def mixed_factors(self, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's mixed LoRA of one module: A [rows, T·r, in] and B [rows, out, T·r], s folded into B."""
        cached = self._cache.get(name)
        if cached is not None and cached[0].dtype == dtype:
            return cached
        A, B = self.bank.factors(name)  # [m, r, in], [m, out, r]
        W = self.weights.to(A.device)
        grad = torch.is_grad_enabled() and (W.requires_grad or A.requires_grad or B.requires_grad)
        if not grad:  # mix only the adapters some row uses (PRAG banks are large and sparse)
            if self._used is None:
                self._used = (W != 0).flatten(0, 1).any(0).nonzero().flatten()
            if len(self._used) < self.bank.m:
                W, A, B = W[..., self._used], A[self._used], B[self._used]
        rows, T, _ = W.shape
        s = self.bank.scale
        A_mix = torch.einsum("rtj,jki->rtki", W, A).reshape(rows, T * A.shape[1], A.shape[2])
        B_mix = torch.einsum("rtj,jok->rotk", W, B).reshape(rows, B.shape[1], T * B.shape[2]) * s
        out = (A_mix.to(dtype), B_mix.to(dtype))
        if not grad:  # computed once per request, reused by every token of a generation
            self._cache[name] = out
        return out

    def prepare(self, dtype: torch.dtype | None = None) -> "BankMixture":
        """Mix A and B for every target module now (else done lazily at the first forward pass)."""
        with torch.no_grad():
            for name in self.bank.names:
                self.mixed_factors(name, dtype or self.bank.A[0].dtype)
        return self

    def apply(self, name: str, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor | None:
        """Inference fast path: ``output += s·x A_mixᵀ B_mixᵀ`` in place, one fused GEMM per layer."""
        if torch.is_grad_enabled() or name not in self.bank.index or not output.is_contiguous():
            return super().apply(name, x, output)
        x = x.to(output.dtype)  # under autocast the layer's input and output dtypes can differ
        if self.rows == 1 or x.dim() == 2:  # one mixture for every row: one 2-D GEMM
            flat = self._flat.get(name)
            if flat is None or flat[0].dtype != x.dtype:
                A, B = self.mixed_factors(name, x.dtype)
                flat = self._flat[name] = (A[0].T, B[0].T)  # [in, R], [R, out]
            output.view(-1, output.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]) @ flat[0], flat[1])
            return output  # [tokens, out] += [tokens, R] @ [R, out], in place
        A, B = self.mixed_factors(name, x.dtype)  # [rows, R, in], [rows, out, R]
        if self.rows != x.shape[0]:
            return super().apply(name, x, output)  # delta() raises the row-count error
        output.baddbmm_(torch.bmm(x, A.transpose(1, 2)), B.transpose(1, 2))  # [rows, L, out]
        return output

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        if name not in self.bank.index:
            return None
        A, B = self.mixed_factors(name, x.dtype)
        if x.dim() == 2:  # [tokens, in]: one row only
            return lowrank_delta(x, A[0], B[0])
        if self.rows not in (1, x.shape[0]):
            raise InvalidInputError(
                f"The mixture has {self.rows} rows but the batch has {x.shape[0]}; give one mixture per row."
            )
        return lowrank_delta(x, A, B)


class SumMixture(Mixture):
    """Several mixtures applied together: their deltas add (e.g. LAG plus a Poly-PRAG mixture)."""

    def __init__(self, parts: Sequence[Mixture]):
        self.parts = [p for p in parts if p is not None]
        rows = {p.rows for p in self.parts} - {1}
        if len(rows) > 1:
            raise InvalidInputError("Mixtures summed together must have the same number of rows (or one).")
        self.rows = rows.pop() if rows else 1

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        out = None
        for p in self.parts:
            d = p.delta(name, x)
            if d is not None:
                out = d if out is None else out + d
        return out

    @classmethod
    def stack(cls, mixtures: Sequence["Mixture | None"]) -> "Mixture | None":
        """Rows of sums: stack each part position across rows (parts must line up row by row)."""
        real = [m for m in mixtures if m is not None]
        if not real:
            return None
        n = {len(m.parts) for m in real}
        if len(n) != 1 or len(real) != len(mixtures):
            raise InvalidInputError("SumMixture rows of one batch must all have the same parts.")
        parts = []
        for i in range(n.pop()):
            col = [m.parts[i] for m in real]
            kind = type(col[0])
            if any(type(c) is not kind for c in col):
                raise InvalidInputError("SumMixture rows of one batch must have parts of the same kinds.")
            parts.append(kind.stack(col))
        return cls(parts)


def attach(model: nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Hook every nn.Linear whose last name part is in ``targets``; returns name -> (in, out)."""
    found = getattr(model, "_polyprag_targets", None)
    if found is not None:
        return found
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            module.register_forward_hook(_hook(name))
            found[name] = (module.in_features, module.out_features)
    if not found:
        raise InvalidInputError(
            f"No nn.Linear named {list(targets)} in the model; pass target_modules that exist, "
            f"e.g. {sorted({n.rsplit('.', 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})}."
        )
    model._polyprag_targets = found
    return found


def _hook(name: str):
    def add_delta(module: nn.Module, args: tuple, output: torch.Tensor):
        mixture = _ACTIVE.get()
        if mixture is None:
            return None
        return mixture.apply(name, args[0], output)

    return add_delta


@contextlib.contextmanager
def use_mixture(mixture: Mixture | None) -> Iterator[None]:
    """Apply ``mixture`` to every hooked layer for calls made inside this block (this context only)."""
    token = _ACTIVE.set(mixture)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_mixture() -> Mixture | None:
    """The mixture active in the current context, if any."""
    return _ACTIVE.get()
