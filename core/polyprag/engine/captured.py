"""Captured decoding: a static KV cache and a compiled decode step (CUDA graphs on a GPU) that still apply
a different mixture to every row.

A compiled graph cannot read the hooks' ContextVar, and a mixture object that changes with every request
would make it recompile with every request. So a captured generation copies its rows' mixed factors into a
``MixtureSlot``: per target module one preallocated pair ``A [rows, R, in]``, ``B [rows, out, R]`` in the
compute dtype, zero beyond each row's own rank (a zero rank adds exactly zero; a row without a mixture is
all zeros). Slots are kept per (rows, R) and reused, so the compiled step reads the same tensors at the same
addresses every time — what CUDA graphs need — and a new request only writes new values into them. While
the compiler traces, the hooks read the slot (``hooks.tracing_mixture``) instead of the ContextVar; eager
forward passes (the prefill, other threads) keep reading the ContextVar.
"""
from __future__ import annotations

import torch

from .mixtures import BankMixture, Mixture


class MixtureSlot(Mixture):
    """Fixed tensors holding, per row, one rank-``rank`` LoRA per target module (scale folded into B)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rows: int, rank: int, dtype: torch.dtype,
                 device: torch.device):
        self.rows, self.rank, self.dtype = rows, rank, dtype
        self.A = {n: torch.zeros(rows, rank, i, dtype=dtype, device=device) for n, (i, o) in shapes.items()}
        self.B = {n: torch.zeros(rows, o, rank, dtype=dtype, device=device) for n, (i, o) in shapes.items()}
        if device.type == "cuda":  # CUDA graphs read them in place instead of copying them in each replay
            for t in (*self.A.values(), *self.B.values()):
                torch._dynamo.mark_static_address(t)

    @staticmethod
    def fits(mixture: Mixture | None, rows: int) -> bool:
        """Whether ``mixture`` can be loaded into a slot of ``rows`` rows (a bank mixture, one or all rows)."""
        return mixture is None or (isinstance(mixture, BankMixture) and mixture.rows in (1, rows))

    @staticmethod
    def rank_of(mixture: Mixture | None) -> int:
        """The rank a slot needs for ``mixture``: its terms times the bank's rank (0 for none)."""
        if mixture is None:
            return 0
        return mixture.weights.shape[1] * mixture.bank.rank

    @torch.no_grad()
    def load(self, mixture: BankMixture | None) -> "MixtureSlot":
        """Write ``mixture``'s mixed factors into the slot (rows it lacks, and ranks beyond its own, zero)."""
        for name, A in self.A.items():
            B = self.B[name]
            A.zero_()
            B.zero_()
            if mixture is None or name not in mixture.bank.index:
                continue
            a, b = mixture.mixed_factors(name, self.dtype)  # [rows_m, R_m, in], [rows_m, out, R_m]
            r = a.shape[1]
            if r > self.rank:
                raise ValueError(f"a mixture of rank {r} does not fit a slot of rank {self.rank}")
            n = self.rows if a.shape[0] == 1 else a.shape[0]  # one mixture for every row: broadcast
            A[:n, :r].copy_(a.expand(n, -1, -1))
            B[:n, :, :r].copy_(b.expand(n, -1, -1))
        return self

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        A = self.A.get(name)
        if A is None:
            return None
        x = x.to(A.dtype)
        return torch.bmm(torch.bmm(x, A.transpose(1, 2)), self.B[name].transpose(1, 2))

    def apply(self, name: str, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor | None:
        A = self.A.get(name)
        if A is None:
            return None
        x = x.to(output.dtype)  # under autocast the layer's input and output dtypes can differ
        return torch.baddbmm(output, torch.bmm(x, A.transpose(1, 2)), self.B[name].transpose(1, 2))

