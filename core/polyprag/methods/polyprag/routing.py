"""Poly-PRAG's routing: a document's logits z_d ∈ R^m over the bank and the weights they give.

At inference w_d = σ(z_d) / Σ_j σ(z_dj); during training a relaxed Bernoulli sample instead,
    y_j = σ((z_dj + log u - log(1-u)) / τ),  u ~ U(0, 1),   w_d = y / Σ_j y_j.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ...errors import InvalidInputError

SPARSE_LOGIT = 3.0  # σ(±3) = 0.95 / 0.05: a sparse start the routing can still move away from
CLOSED_LOGIT = -1e4  # a routing logit whose weight σ(z) is exactly 0: an adapter a document never uses


def routing_weights(logits: torch.Tensor) -> torch.Tensor:
    """w = σ(z) / Σ_j σ(z_j), row-wise (Poly-PRAG inference routing)."""
    if not torch.isfinite(logits).all():
        raise InvalidInputError("The routing logits contain NaN or inf (training diverged or the table was "
                                "altered); re-encode the documents, with a lower lr if it diverged.")
    s = torch.sigmoid(logits)
    return s / s.sum(-1, keepdim=True)


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


def init_routing_logits(n: int, m: int, seed: int, device, active: int = 0,
                        among: Sequence[int] | None = None) -> torch.Tensor:
    """Routing logits [n, m] to train: near zero (``active=0``, Polytropon: every adapter equally likely),
    or each row +3 on ``active`` adapters drawn at random from ``among`` (default: all) and −3 elsewhere,
    so that documents start on different subsets of the bank and the adapters specialise."""
    gen = torch.Generator().manual_seed(seed + 1)
    z = torch.rand(n, m, generator=gen) * 2e-3 - 1e-3
    if active > 0:
        pool = torch.tensor(list(range(m)) if among is None else list(among), dtype=torch.long)
        if active > len(pool):
            raise InvalidInputError(f"routing_active={active} exceeds the {len(pool)} adapters a document can start on.")
        z.fill_(-SPARSE_LOGIT)
        for i in range(n):
            z[i, pool[torch.randperm(len(pool), generator=gen)[:active]]] = SPARSE_LOGIT
    return z.to(device).requires_grad_(True)
