"""Fitting, what every method's encoder and every library kind's updates share: the augmenter, the settings a
library was encoded with, the checkpoint of one exact run, and where an update's training starts. It imports
no method, encoder or library."""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Sequence

from .augment import Augmenter, GeneratedQAAugmenter, PassageAugmenter, TrainingExample
from .checkpoint import Checkpoint, run_key, tensor_digest
from ..documents import Document
from ..errors import InvalidInputError
from .recipes import FREE_TEXTS, PRAG_TEXTS
from ..library.state import ADD_STRATEGIES, LibraryState
from .training import TrainConfig

if TYPE_CHECKING:
    from ..generation.llm import LoRAMixingLLM


def choose_augmenter(augmenter: Augmenter | str | None, llm: "LoRAMixingLLM",
                     texts: Sequence[str] = PRAG_TEXTS) -> Augmenter:
    """The augmenter asked for (a name, a callable, or None: generated QA only when ``texts`` need it, the
    in-context teacher when they hold "distill")."""
    if augmenter is None and "distill" in texts:
        from .distill import DistillAugmenter
        return DistillAugmenter(llm, texts)
    if augmenter is None and set(texts) <= FREE_TEXTS:
        return PassageAugmenter(texts)
    if augmenter is None or augmenter == "generated_qa":
        return GeneratedQAAugmenter(llm, texts=texts)
    if augmenter == "passage":
        return PassageAugmenter()
    if isinstance(augmenter, str):
        raise InvalidInputError(f"Unknown augmenter {augmenter!r}; use 'generated_qa', 'passage' or a callable.")
    return augmenter


def update_settings(llm: "LoRAMixingLLM", training: dict, augmenter: Augmenter | str | None,
                    epochs: int | None, lr: float | None, progress: bool | None) -> tuple[TrainConfig, Augmenter]:
    """The training settings and augmenter a library was encoded with (its config's ``training``), with the
    given overrides."""
    t = dict(training)
    cfg = TrainConfig(**{k: t[k] for k in TrainConfig.__dataclass_fields__ if k in t})
    if epochs is not None:
        cfg.epochs = epochs
    if lr is not None:
        cfg.lr = cfg.routing_lr = lr
    if progress is not None:
        cfg.progress = progress
    texts = t.get("texts") or (("passage",) if t.get("augmenter") == "PassageAugmenter" else PRAG_TEXTS)
    aug = choose_augmenter(augmenter, llm, tuple(texts))  # the texts the library was trained on, unless told otherwise
    if isinstance(aug, GeneratedQAAugmenter) and not isinstance(augmenter, GeneratedQAAugmenter):
        aug.progress = cfg.progress  # one we made: its bar shows when training's does
    return cfg, aug


def run_checkpoint(checkpoint_dir, every: int, phase: str, llm: "LoRAMixingLLM", docs: Sequence[Document],
                   data: Sequence[Sequence[TrainingExample]], cfg: TrainConfig, extra: dict) -> Checkpoint | None:
    """The checkpoint of this exact run (documents, training texts, settings, base model), or None."""
    if checkpoint_dir is None:
        return None
    settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    texts = [[asdict(ex) for ex in exs] for exs in data]
    identity = {"model": llm.fingerprint(), "documents": [d.id for d in docs], "texts": run_key(texts),
                "train": settings, **extra}
    return Checkpoint(checkpoint_dir, phase, identity, every=every)


def start_update(llm: "LoRAMixingLLM", state: LibraryState, docs: Sequence[Document],
                 augmenter: Augmenter | str | None = None, epochs: int | None = None, lr: float | None = None,
                 progress: bool | None = None, checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_every: int = 10, strategy: str = "grow"):
    """What encoding new documents into a library starts from: the library's training settings (with the
    given overrides), the documents' training texts, and ``checkpoint(phase, **extra)``, this update's
    checkpoint (None without ``checkpoint_dir``)."""
    if strategy not in ADD_STRATEGIES:
        raise InvalidInputError(f"strategy must be one of {ADD_STRATEGIES}, got {strategy!r}.")
    cfg, aug = update_settings(llm, state.config.training, augmenter, epochs, lr, progress)
    data = aug(docs)
    start = {"library": state.doc_ids, "bank": tensor_digest(state.bank.tensors())}

    def checkpoint(phase: str, **extra) -> Checkpoint | None:
        return run_checkpoint(checkpoint_dir, checkpoint_every, phase, llm, docs, data, cfg, {**start, **extra})

    return cfg, data, checkpoint
