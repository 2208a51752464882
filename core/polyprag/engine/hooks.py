"""The forward hooks: one on every target ``nn.Linear`` adds the delta of the mixture active in this context.

The mixture lives in a ``contextvars.ContextVar``, so threads and asyncio tasks never see each
other's mixture and the base weights are never written. No active mixture: exactly the base model.
A compiled decode step reads a fixed ``MixtureSlot`` instead (``engine.captured``).
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import InvalidInputError
from .mixtures import Mixture

_ACTIVE: ContextVar["Mixture | None"] = ContextVar("polyprag_mixture", default=None)
# what the hooks apply while torch.compile traces (it cannot read a ContextVar): see engine.captured
_TRACED: list["Mixture | None"] = [None]


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
        mixture = _TRACED[0] if torch.compiler.is_compiling() else _ACTIVE.get()
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


@contextlib.contextmanager
def tracing_mixture(mixture: Mixture | None) -> Iterator[None]:
    """While torch.compile traces inside this block, the hooks apply ``mixture`` (a fixed ``MixtureSlot``:
    a compiled step cannot read the ContextVar); eager forward passes keep reading the ContextVar."""
    before = _TRACED[0]
    _TRACED[0] = mixture
    try:
        yield
    finally:
        _TRACED[0] = before


def active_mixture() -> Mixture | None:
    """The mixture active in the current context, if any."""
    return _ACTIVE.get()
