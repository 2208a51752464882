"""LoRABank: m LoRA adapters over the same target modules, the one store of LoRA factors."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import InvalidInputError


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
