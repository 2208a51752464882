"""LAG's offline step (Fleshman & Van Durme, arXiv 2507.05346): each adapter's delta as its spectral factors.

Once per adapter and target module, the LoRA delta is factorised without forming it:

    U S Vᵀ = SVD_r(s·B A),   B* = U S,   A* = Vᵀ,   arrow vector a* = first row of A*

(QR of the thin factors: B = Q_B R_B, Aᵀ = Q_A R_A, so s·B A = Q_B (s·R_B R_Aᵀ) Q_Aᵀ and only an
r×r matrix is decomposed).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def spectral_factors(A: torch.Tensor, B: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A* [.., r, in], B* [.., out, r]) with B* A* = s·B A, A* orthonormal rows sorted by singular value.

    A [.., r, in], B [.., out, r] (leading dims batch adapters); float64 inside, float32 out."""
    qa, ra = torch.linalg.qr(A.detach().double().transpose(-1, -2))  # Aᵀ = Q_A R_A: [.., in, r], [.., r, r]
    qb, rb = torch.linalg.qr(B.detach().double())                     # B = Q_B R_B:  [.., out, r], [.., r, r]
    u, s, vh = torch.linalg.svd(scale * rb @ ra.transpose(-1, -2))     # s·B A = Q_B (U S Vᵀ) Q_Aᵀ
    B_star = (qb @ u) * s[..., None, :]                                # B* = U S   [.., out, r]
    A_star = vh @ qa.transpose(-1, -2)                                 # A* = Vᵀ    [.., r, in]
    return A_star.float(), B_star.float()


@dataclass
class ModuleFactors:
    """The adapters touching one target module, padded to a common rank R (zero rows/columns)."""

    members: torch.Tensor  # [n] long: library index of each adapter here
    ranks: torch.Tensor    # [n] long: true rank of each
    A: torch.Tensor        # [n, R, in]  A* = Vᵀ
    B: torch.Tensor        # [n, out, R] B* = U S

    def __post_init__(self) -> None:
        self._dtyped: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def for_dtype(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(A* flattened [n·R, in], B*ᵀ [n, R, out]) in the activations' dtype, laid out once for the matmuls."""
        if dtype not in self._dtyped:
            n, R, d = self.A.shape
            self._dtyped[dtype] = (self.A.reshape(n * R, d).to(dtype), self.B.transpose(1, 2).contiguous().to(dtype))
        return self._dtyped[dtype]

    def to(self, device) -> "ModuleFactors":
        return ModuleFactors(self.members.to(device), self.ranks.to(device), self.A.to(device), self.B.to(device))


def pack(entries: list[tuple[int, torch.Tensor, torch.Tensor]]) -> ModuleFactors:
    """Stack one module's adapters (sorted by library index), zero-padding ranks to the largest."""
    entries = sorted(entries, key=lambda e: e[0])
    R = max(A.shape[0] for _, A, _ in entries)
    n, d_in, d_out = len(entries), entries[0][1].shape[1], entries[0][2].shape[0]
    A = torch.zeros(n, R, d_in)
    B = torch.zeros(n, d_out, R)
    for i, (_, a, b) in enumerate(entries):
        A[i, : a.shape[0]] = a
        B[i, :, : b.shape[1]] = b
    members = torch.tensor([e[0] for e in entries], dtype=torch.long)
    ranks = torch.tensor([e[1].shape[0] for e in entries], dtype=torch.long)
    return ModuleFactors(members, ranks, A, B)
