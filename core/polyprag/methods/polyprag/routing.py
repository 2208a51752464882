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
