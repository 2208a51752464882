"""LAG's router (Fleshman & Van Durme, arXiv 2507.05346): per token and per layer, one adapter of the library.

At every token of every target layer, with x the layer's input:

    1. Arrow filter:  keep the k adapters with the largest |a*_j · x|
    2. SpectR:        ĵ = argmax_j ‖A*_j x‖₂ among them
    3. output:        W x + B*_ĵ (A*_ĵ x)          (A*_ĵ x reused from step 2)

``LAGRouter`` is a ``Mixture`` of the mixing engine (``polyprag.engine``): the forward hooks call
its ``delta``. The low-rank product is split: A*x is computed once for every adapter (routing needs
it) and only the chosen B* is applied to it, so ``lowrank_delta``'s x Aᵀ Bᵀ would recompute A*x.
A layer routes among the adapters that touch it; ranks may differ between adapters.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator, Sequence

import torch

from ...engine import Mixture
from ...errors import InvalidInputError
from ...retrieval.base import check_top_k
from .library import LAGLibrary

VARIANTS = ("arrow_spectr", "arrow", "spectr")


class LAGRouter(Mixture):
    """Per token and per layer, route each token to one adapter of a ``LAGLibrary`` (Arrow filter + SpectR).

    ``variant``: ``"arrow_spectr"`` (LAG), ``"arrow"`` (Arrow alone: softmax over the top-k |a*·x|,
    as in peft's ArrowConfig) or ``"spectr"`` (SpectR over every adapter). Rows of a batch are
    routed independently (routing is per token); several prompts share a batch through ``stack``.

    Example:
        router = LAGRouter(LAGLibrary.from_adapter_library(prag_library), k=5)
        PolyPRAG(llm, None, mode="lag", lag=router).answer("Who …?")
        with router.counting() as wins:   # which adapter won most (token, layer) decisions
            llm.generate([llm.question_prompt("Who …?")], [router])
    """

    def __init__(self, library: LAGLibrary, k: int = 5, variant: str = "arrow_spectr", temperature: float = 1.0):
        if variant not in VARIANTS:
            raise InvalidInputError(f"variant must be one of {VARIANTS}, got {variant!r}.")
        if temperature <= 0:
            raise InvalidInputError(f"temperature must be > 0, got {temperature}.")
        self.library = library
        self.k = check_top_k(k)  # adapters kept by the Arrow filter
        self.variant = variant
        self.temperature = float(temperature)
        self.rows = 1
        self._active: torch.Tensor | None = None  # [rows] bool; None: every row routed
        self._wins: list[torch.Tensor | None] = [None]  # shared with stacked copies while counting
        self._record: list[dict | None] = [None]        # module -> winners per token, while recording

    # ---- batching -----------------------------------------------------------------------------
    @classmethod
    def stack(cls, mixtures: Sequence["LAGRouter | None"]) -> "LAGRouter | None":
        """One router for a batch whose rows are these one-row routers (None: that row runs the bare model)."""
        real = [m for m in mixtures if m is not None]
        if not real:
            return None
        first = real[0]
        if any(not isinstance(m, LAGRouter) or m.rows != 1 or m._active is not None for m in real):
            raise InvalidInputError("LAGRouter.stack() takes one-row LAG routers.")
        if any((m.library, m.k, m.variant, m.temperature) != (first.library, first.k, first.variant,
                                                              first.temperature) for m in real):
            raise InvalidInputError("Rows of one batch must use the same LAG library, k and variant.")
        out = cls(first.library, first.k, first.variant, first.temperature)
        out.rows = len(mixtures)
        out._wins, out._record = first._wins, first._record
        if len(real) < len(mixtures):
            out._active = torch.tensor([m is not None for m in mixtures])
        return out

    # ---- routing ------------------------------------------------------------------------------
    def route(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Routing of tokens x [.., in] at module ``name``: (adapters [T, K] as library indices, weights [T, K]);
        K = 1 except for the "arrow" variant (its top-k). None where no adapter touches the module."""
        routed = self._route(name, x)
        if routed is None:
            return None
        local, weight, _ = routed
        return self.library.modules[name].members[local], weight

    def _route(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(chosen adapters [T, K] as positions in the module, weights [T, K], their A*x [T, K, R])."""
        f = self.library.modules.get(name)
        if f is None:
            return None
        A_flat, _ = f.for_dtype(x.dtype)
        n, R = f.A.shape[0], f.A.shape[1]
        t = x.reshape(-1, x.shape[-1])              # [T, in]
        z = (t @ A_flat.T).view(-1, n, R)            # A*_j x for every adapter here: [T, n, R]
        arrow = z[..., 0].abs()                      # |a*_j · x| (a* = first row of A*): [T, n]
        k = min(self.k, n)
        if self.variant == "arrow":                  # Arrow: softmax over the top-k scores
            score, local = arrow.topk(k, dim=-1)     # [T, k]
            weight = torch.softmax(score / self.temperature, dim=-1)
        else:
            if self.variant == "spectr" or k == n:   # SpectR over every adapter
                local = z.norm(dim=-1).argmax(-1, keepdim=True)  # [T, 1]
            else:                                    # Arrow filter, then SpectR among the k kept
                keep = arrow.topk(k, dim=-1).indices  # [T, k]
                norms = z.gather(1, keep[..., None].expand(-1, -1, R)).norm(dim=-1)  # ‖A*_j x‖: [T, k]
                local = keep.gather(1, norms.argmax(-1, keepdim=True))  # ĵ: [T, 1]
            weight = torch.ones(local.shape, dtype=x.dtype, device=x.device)
        return local, weight, z.gather(1, local[..., None].expand(-1, -1, R))  # reuse A*_ĵ x: [T, K, R]

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        routed = self._route(name, x)
        if routed is None:
            return None
        f = self.library.modules[name]
        local, weight, zk = routed  # [T, K], [T, K], [T, K, R]
        _, Bt = f.for_dtype(x.dtype)  # B*ᵀ: [n, R, out]
        T, K, R = zk.shape
        # Σ_K w · B*_ĵ (A*_ĵ x): the chosen B*ᵀ per token, [T, K·R, out], applied to the kept A*x [T, 1, K·R]
        B_sel = Bt.index_select(0, local.reshape(-1)).view(T, K * R, Bt.shape[2])
        out = torch.bmm((zk * weight[..., None]).reshape(T, 1, K * R), B_sel)  # [T, 1, out]
        out = out.view(*x.shape[:-1], Bt.shape[2])
        active = self._rows_active(x)
        if active is not None:
            out = out * active
        if self._wins[0] is not None or self._record[0] is not None:
            top = f.members[local.gather(1, weight.argmax(-1, keepdim=True))[:, 0]]  # the token's main adapter
            if self._wins[0] is not None:
                self._count(top, x, active)
            if self._record[0] is not None:
                self._record[0].setdefault(name, []).append(top.view(*x.shape[:-1]).cpu())
        return out

    def _rows_active(self, x: torch.Tensor) -> torch.Tensor | None:
        if self._active is None:
            return None
        if x.dim() < 3 or x.shape[0] != self._active.numel():
            raise InvalidInputError(f"The LAG router has {self._active.numel()} rows but the batch has "
                                    f"{x.shape[0] if x.dim() >= 3 else 1}; give one mixture per row.")
        return self._active.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))

    # ---- which adapter wins ---------------------------------------------------------------------
    def _count(self, winner: torch.Tensor, x: torch.Tensor, active: torch.Tensor | None) -> None:
        if active is not None:
            winner = winner[active.expand(*x.shape[:-1], 1).reshape(-1) > 0]
        self._wins[0] += torch.bincount(winner.cpu(), minlength=len(self.library))

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter]:
        """Count, inside this block, how many (token, layer) decisions each adapter won, by adapter name."""
        wins: Counter = Counter()
        self._wins[0] = torch.zeros(len(self.library), dtype=torch.long)
        try:
            yield wins
        finally:
            counts, self._wins[0] = self._wins[0], None
            wins.update({n: int(c) for n, c in zip(self.library.names, counts) if c > 0})

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Record, inside this block, each module's winning adapter (library index) per token: module name ->
        one tensor [rows, length] (or [tokens]) per forward pass, in call order."""
        record: dict[str, list[torch.Tensor]] = {}
        self._record[0] = record
        try:
            yield record
        finally:
            self._record[0] = None
