"""Fitting adapters and routing: what an encoder's fit and a library's updates (``extend_library``,
``refit_adapters``) share; it imports neither ``encoder`` nor ``library``, so neither import makes a cycle."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Sequence

import torch

from .augment import Augmenter, GeneratedQAAugmenter, PassageAugmenter, TrainingExample
from .checkpoint import Checkpoint, run_key, tensor_digest
from .documents import Document
from .errors import InvalidInputError
from .engine import LoRABank
from .methods.polyprag.routing import routing_weights
from .recipes import FREE_TEXTS, PRAG_TEXTS
from .state import LibraryState
from .training import TrainConfig, train_per_document, train_poly

if TYPE_CHECKING:
    from .llm import LoRAMixingLLM


def train_prag_bank(llm: "LoRAMixingLLM", modules: dict[str, tuple[int, int]],
                    data: Sequence[Sequence[TrainingExample]], rank: int, alpha: float, cfg: TrainConfig,
                    group_size: int, checkpoint: Checkpoint | None = None) -> LoRABank:
    """One adapter per document from PRAG's shared random init, trained in groups of similar length.

    With a ``checkpoint``, each finished group's adapters are saved at once and a rerun reuses them:
    no document is trained twice."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise InvalidInputError(f"group_size must be a positive integer, got {group_size!r}.")
    order = sorted(range(len(data)), key=lambda i: len(data[i]))  # similar lengths share a group
    init = LoRABank.initialised(modules, 1, rank, alpha, seed=cfg.seed)
    parts: dict[int, LoRABank] = {}
    for s in range(0, len(order), group_size):
        idx = order[s: s + group_size]
        saved = checkpoint.read(f"group-{s}") if checkpoint is not None else None
        if saved is not None and saved[1].get("documents") == idx:
            t = saved[0]
            group = LoRABank(modules, len(idx), rank, alpha, A=[t[f"{n}.lora_A"] for n in modules],
                             B=[t[f"{n}.lora_B"] for n in modules]).to(llm.device)
        else:
            A = [a.expand(len(idx), -1, -1).clone() for a in init.A]
            group = LoRABank(modules, len(idx), rank, alpha, A=A).to(llm.device)
            train_per_document(llm, group, [data[i] for i in idx], cfg)
            if checkpoint is not None:
                checkpoint.write(group.tensors(), {"documents": idx}, name=f"group-{s}")
        for j, i in enumerate(idx):
            parts[i] = group.select([j])
    docs = [parts[i] for i in range(len(data))]  # one concatenation per module, in document order
    return LoRABank(modules, len(docs), rank, alpha,
                    A=[torch.cat([p.A[k] for p in docs]) for k in range(len(modules))],
                    B=[torch.cat([p.B[k] for p in docs]) for k in range(len(modules))])


SPARSE_LOGIT = 3.0  # σ(±3) = 0.95 / 0.05: a sparse start the routing can still move away from


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


def choose_augmenter(augmenter: Augmenter | str | None, llm: "LoRAMixingLLM",
                     texts: Sequence[str] = PRAG_TEXTS) -> Augmenter:
    """The augmenter asked for (a name, a callable, or None: generated QA only when ``texts`` need it)."""
    if augmenter is None and set(texts) <= FREE_TEXTS:
        return PassageAugmenter(texts)
    if augmenter is None or augmenter == "generated_qa":
        return GeneratedQAAugmenter(llm, texts=texts)
    if augmenter == "passage":
        return PassageAugmenter()
    if isinstance(augmenter, str):
        raise InvalidInputError(f"Unknown augmenter {augmenter!r}; use 'generated_qa', 'passage' or a callable.")
    return augmenter


ADD_STRATEGIES = ("grow", "routing")


def extend_library(llm: "LoRAMixingLLM", state: LibraryState, docs: Sequence[Document],
                   augmenter: Augmenter | str | None = None, epochs: int | None = None, lr: float | None = None,
                   progress: bool | None = None, checkpoint_dir: str | os.PathLike | None = None,
                   checkpoint_every: int = 10, strategy: str = "grow",
                   new_adapters: int | None = None) -> LibraryState:
    """The library state with new documents encoded in, without changing what it already answers.

    Poly-PRAG, ``strategy="grow"`` (default): the bank grows by ``new_adapters`` fresh LoRAs (default:
    as many as keep the library's documents-per-adapter ratio), trained with the new documents' routing
    over the old *and* new adapters while every old adapter stays frozen; old documents get zero weight
    on the new adapters, so their mixtures are bit for bit what they were. ``strategy="routing"``: the
    bank stays frozen and only the new routing logits are fitted ("Poly-z", a few hundred floats each;
    cheap, but a frozen bank can only recombine what it already knows). PRAG: one new adapter per
    document. Training works on copies: ``state`` stays as it is. ``checkpoint_dir`` makes the work
    resumable after a crash, as in ``PolyPRAGEncoder.fit``."""
    if strategy not in ADD_STRATEGIES:
        raise InvalidInputError(f"strategy must be one of {ADD_STRATEGIES}, got {strategy!r}.")
    cfg, aug = update_settings(llm, state, augmenter, epochs, lr, progress)
    data = aug(docs)
    start = {"library": state.doc_ids, "bank": tensor_digest(state.bank.tensors())}
    modules = {n: state.bank.shapes[n] for n in state.bank.names}
    if state.kind == "per_document":
        group_size = int(state.config.training.get("group_size", 32))
        ck = run_checkpoint(checkpoint_dir, checkpoint_every, "prag-add", llm, docs, data, cfg,
                            {**start, "group_size": group_size})
        new = train_prag_bank(llm, modules, data, state.bank.rank, state.bank.alpha, cfg, group_size, checkpoint=ck)
        return state.with_added(docs, bank=state.bank.extend(new))
    m_old = state.bank.m
    grow = 0
    if strategy == "grow":
        ratio = max(1.0, len(state) / m_old)  # documents per adapter in the library as encoded
        grow = new_adapters if new_adapters is not None else max(1, math.ceil(len(docs) / ratio))
        if grow < 1:
            raise InvalidInputError(f"new_adapters must be >= 1, got {new_adapters}.")
    bank = state.bank
    if grow:
        fresh = LoRABank.initialised(modules, grow, bank.rank, bank.alpha, seed=cfg.seed + len(state))
        bank = bank.extend(fresh).to(llm.device)  # a new bank object: readers keep the old one
    # sparse routing starts new documents on new adapters (old ones are frozen and cannot learn them)
    logits = init_routing_logits(len(docs), bank.m, cfg.seed, llm.device,
                                 active=min(cfg.routing_active, grow or bank.m),
                                 among=range(m_old, bank.m) if grow else None)
    ck = run_checkpoint(checkpoint_dir, checkpoint_every, f"poly-add-{strategy}", llm, docs, data, cfg,
                        {**start, "grow": grow})
    train_poly(llm, bank, logits, data, cfg, train_bank=bool(grow), checkpoint=ck, frozen_adapters=m_old)
    return state.with_added(docs, routing_logits=logits, bank=bank if grow else None)


def refit_adapters(llm: "LoRAMixingLLM", state: LibraryState, deleted: Sequence[str],
                   augmenter: Augmenter | str | None = None, epochs: int | None = None, lr: float | None = None,
                   progress: bool | None = None, checkpoint_dir: str | os.PathLike | None = None,
                   checkpoint_every: int = 10) -> tuple[LibraryState, dict]:
    """Remove what documents about to be deleted taught the shared bank: the state with the adapters they
    weight above uniform started afresh and trained again, and what was re-fitted.

    Uniform is 1 / (the number of adapters a document can mix). The re-fitted adapters train, with the
    library's own settings and every other adapter frozen, on the remaining documents that weight one of
    them above uniform; those documents' routing trains too (a re-fitted adapter no remaining document
    weights above uniform starts afresh and stays so: B = 0, it adds nothing). Cost: encoding those
    documents again. PRAG has nothing to re-fit: a document's knowledge lives in its own adapter, which
    deletion drops."""
    if state.kind == "per_document":
        return state, {"adapters": [], "documents": [], "steps": 0}
    gone = torch.zeros(len(state), dtype=torch.bool)
    gone[state.rows(deleted)] = True
    w = routing_weights(state.routing_logits).cpu()                 # [N, m]
    above = w > 1.0 / (w > 0).sum(1, keepdim=True)                 # [N, m]: weighted above uniform
    adapters = above[gone].any(0).nonzero().flatten().tolist()
    users = (above[:, adapters].any(1) & ~gone).nonzero().flatten().tolist()
    report = {"adapters": adapters, "documents": [state.doc_ids[i] for i in users], "steps": 0}
    if not adapters:
        return state, report
    cfg, aug = update_settings(llm, state, augmenter, epochs, lr, progress)
    bank = state.bank.select(range(state.bank.m))  # a copy: readers keep the old bank
    fresh = LoRABank.initialised(bank.shapes, len(adapters), bank.rank, bank.alpha, seed=cfg.seed + len(state))
    with torch.no_grad():
        for k in range(len(bank.names)):
            bank.A[k][adapters] = fresh.A[k].to(bank.A[k].device)
            bank.B[k][adapters] = 0.0
    z = state.routing_logits.clone()
    if users:
        docs = [state.documents[i] for i in users]
        data = aug(docs)
        logits = z[users].clone().requires_grad_(True)
        ck = run_checkpoint(checkpoint_dir, checkpoint_every, "poly-refit", llm, docs, data, cfg,
                            {"library": state.doc_ids, "bank": tensor_digest(state.bank.tensors()),
                             "deleted": list(deleted), "adapters": adapters})
        report["steps"] = len(train_poly(llm, bank, logits, data, cfg, train_bank=True, checkpoint=ck,
                                         trainable_adapters=adapters))
        z[users] = logits.detach()
    return replace(state, bank=bank, routing_logits=z), report


def update_settings(llm: "LoRAMixingLLM", state: LibraryState, augmenter: Augmenter | str | None,
                    epochs: int | None, lr: float | None, progress: bool | None) -> tuple[TrainConfig, Augmenter]:
    """The training settings and augmenter the library was encoded with, with the given overrides."""
    t = dict(state.config.training)
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
