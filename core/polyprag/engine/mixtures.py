"""Mixtures: what the hooked layers add, per batch row, from a bank of LoRA adapters.

A ``BankMixture`` holds, per batch row, T terms, each a weight vector over a bank of m adapters:

    A(w) = Σ_j w_j A_j,  B(w) = Σ_j w_j B_j            (Polytropon: A and B mixed separately)
    ΔW_row = Σ_t s · B(w_t) A(w_t)                       (PRAG: the T documents' deltas summed)

computed as one rank-(T·r) LoRA per row by concatenating the terms' ranks. Poly-PRAG "mean" is
T = 1; Poly-PRAG "sum" and PRAG are T = k (PRAG: one-hot w over per-document adapters). LAG's
per-token router (``polyprag.methods.lag``) is another ``Mixture`` on the same hooks: it computes A*x
for every adapter to route, then applies only the chosen B*.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InvalidInputError
from .bank import LoRABank


def lowrank_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``x Aᵀ Bᵀ`` batched: x [rows, L, in], A [rows, R, in], B [rows, out, R] (rows broadcast)."""
    return torch.matmul(torch.matmul(x, A.transpose(-1, -2)), B.transpose(-1, -2))


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
            part_type = type(col[0])
            if any(type(c) is not part_type for c in col):
                raise InvalidInputError("SumMixture rows of one batch must have parts of the same types.")
            parts.append(part_type.stack(col))
        return cls(parts)
