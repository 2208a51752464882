"""Encoders: documents in, AdapterLibrary out (Poly-PRAG joint training, or PRAG's one LoRA per document)."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Sequence

import torch

from .augment import Augmenter, GeneratedQAAugmenter, PassageAugmenter, TrainingExample
from .checkpoint import Checkpoint, run_key, tensor_digest
from .documents import Document, check_unique
from .errors import InvalidInputError
from .library import AdapterLibrary, LibraryConfig, LibraryState, routing_weights
from .mixing import LoRABank
from .recipes import FREE_TEXTS, PRAG_TEXTS, get_recipe
from .training import TrainConfig, train_per_document, train_poly

if TYPE_CHECKING:
    from .llm import LoRAMixingLLM

log = logging.getLogger(__name__)


class PolyPRAGEncoder:
    """Encode documents into a Poly-PRAG library: a bank of ``num_adapters`` LoRAs + routing per document.

    Example:
        library = PolyPRAGEncoder(llm).fit(docs)                      # the default recipe
        library = PolyPRAGEncoder(llm, recipe="prag-paper").fit(docs)  # PRAG's published settings

    Settings left at None come from ``recipe`` (``polyprag.recipes``): training texts, rank, alpha,
    learning rates, epochs and bank size. ``per_document=True`` gives PRAG instead (one adapter per
    document, summed at query time)."""

    def __init__(self, llm: "LoRAMixingLLM", num_adapters: int | None = None, rank: int | None = None,
                 alpha: float | None = None, target_modules: Sequence[str] | None = None,
                 augmenter: Augmenter | str | None = None, lr: float | None = None,
                 routing_lr: float | None = None, epochs: int | None = None, batch_size: int = 8,
                 temperature: float | None = None, max_length: int = 256, seed: int = 0,
                 per_document: bool = False, group_size: int = 32, max_batch_tokens: int = 2048,
                 progress: bool = True, recipe: str = "default", routing_active: int | None = None):
        r = get_recipe(recipe)
        self.recipe = recipe
        num_adapters = r.num_adapters if num_adapters is None else num_adapters
        rank = r.rank if rank is None else rank
        alpha = r.alpha if alpha is None else alpha
        lr = (r.prag_lr if per_document else r.lr) if lr is None else lr
        routing_lr = (None if per_document else r.routing_lr) if routing_lr is None else routing_lr
        epochs = (r.prag_epochs if per_document else r.epochs) if epochs is None else epochs
        temperature = r.temperature if temperature is None else temperature
        routing_active = min(r.routing_active, max(num_adapters, 0)) if routing_active is None else routing_active
        if not 0 <= routing_active <= max(num_adapters, 0) and not per_document:
            raise InvalidInputError(f"routing_active must be between 0 and num_adapters ({num_adapters}), "
                                    f"got {routing_active}.")
        if num_adapters < 1 and not per_document:
            raise InvalidInputError(f"num_adapters must be >= 1, got {num_adapters}.")
        if rank < 1:
            raise InvalidInputError(f"rank must be >= 1, got {rank}.")
        if epochs < 1 or batch_size < 1 or max_batch_tokens < 1:
            raise InvalidInputError("epochs, batch_size and max_batch_tokens must be >= 1.")
        self.llm = llm
        self.num_adapters = num_adapters
        self.rank = rank
        self.alpha = alpha
        self.per_document = per_document
        self.group_size = group_size
        wanted = tuple(target_modules or llm.target_modules)
        missing = [t for t in wanted if t not in llm.target_modules]
        if missing:
            raise InvalidInputError(f"Target modules {missing} are not hooked in this LLM "
                                    f"(hooked: {list(llm.target_modules)}); create the LLM with them.")
        self.target_modules = wanted
        self.augmenter = _augmenter(augmenter, llm, r.texts)
        self.train = TrainConfig(lr=lr, routing_lr=routing_lr, epochs=epochs, batch_size=batch_size,
                                 max_length=max_length, temperature=temperature, seed=seed, progress=progress,
                                 routing_active=0 if per_document else routing_active,
                                 max_batch_tokens=max_batch_tokens)

    def _modules(self) -> dict[str, tuple[int, int]]:
        return {n: s for n, s in self.llm.module_shapes.items() if n.rsplit(".", 1)[-1] in self.target_modules}

    def _config(self, m: int) -> LibraryConfig:
        return LibraryConfig(kind="per_document" if self.per_document else "poly", rank=self.rank,
                             alpha=self.alpha, m=m, target_modules=list(self.target_modules),
                             base_model=self.llm.fingerprint(), model_name=self.llm.name,
                             dtype=str(self.llm.dtype).replace("torch.", ""),
                             training={**asdict(self.train), "augmenter": type(self.augmenter).__name__,
                                       "texts": list(getattr(self.augmenter, "texts", ("passage",))),
                                       "recipe": self.recipe, "group_size": self.group_size})

    def fit(self, documents: Sequence[Document], checkpoint_dir: str | os.PathLike | None = None,
            checkpoint_every: int = 10) -> AdapterLibrary:
        """Train a new library on the documents (augmented first) and return it.

        ``checkpoint_dir``: save progress there (every ``checkpoint_every`` steps for Poly-PRAG, after
        each finished group of documents for PRAG); rerunning the same ``fit`` after a crash resumes
        where it stopped and gives the same library as an uninterrupted run. Delete the folder once
        the library is saved."""
        docs = check_unique(documents)
        if not docs:
            raise InvalidInputError("fit() needs at least one document; the corpus is empty. "
                                    "Pass a non-empty list of Document (e.g. from load_corpus).")
        data = self.augmenter(docs)
        modules = self._modules()
        if self.per_document:
            ck = _checkpoint(checkpoint_dir, checkpoint_every, "prag-fit", self.llm, docs, data, self.train,
                             {"rank": self.rank, "alpha": self.alpha, "modules": modules,
                              "group_size": self.group_size})
            bank = train_prag_bank(self.llm, modules, data, self.rank, self.alpha, self.train,
                                   self.group_size, checkpoint=ck)
            return AdapterLibrary(self.llm, bank, docs, self._config(bank.m))
        bank = LoRABank.initialised(modules, self.num_adapters, self.rank, self.alpha,
                                    seed=self.train.seed).to(self.llm.device)
        logits = init_routing_logits(len(docs), self.num_adapters, self.train.seed, self.llm.device,
                                     active=self.train.routing_active)
        ck = _checkpoint(checkpoint_dir, checkpoint_every, "poly-fit", self.llm, docs, data, self.train,
                         {"m": self.num_adapters, "rank": self.rank, "alpha": self.alpha, "modules": modules})
        train_poly(self.llm, bank, logits, data, self.train, train_bank=True, checkpoint=ck)
        return AdapterLibrary(self.llm, bank, docs, self._config(self.num_adapters), routing_logits=logits)


class PRAGEncoder(PolyPRAGEncoder):
    """PRAG (Su et al. 2025): one LoRA per document from one shared random init, summed at query time.

    Defaults come from ``recipe``: "default" (measured to inject on the default model) or "prag-paper"
    (rank 2, alpha 32, lr 3e-4, 1 epoch, passage + rewrite + generated QA in PRAG's three forms)."""

    def __init__(self, llm: "LoRAMixingLLM", rank: int | None = None, alpha: float | None = None,
                 lr: float | None = None, epochs: int | None = None, **kwargs):
        kwargs.pop("per_document", None)
        kwargs.pop("num_adapters", None)
        super().__init__(llm, num_adapters=1, rank=rank, alpha=alpha, lr=lr, epochs=epochs,
                         per_document=True, **kwargs)


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


def _augmenter(augmenter: Augmenter | str | None, llm: "LoRAMixingLLM",
               texts: Sequence[str] = PRAG_TEXTS) -> Augmenter:
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
    cfg, aug = _update_settings(llm, state, augmenter, epochs, lr, progress)
    data = aug(docs)
    start = {"library": state.doc_ids, "bank": tensor_digest(state.bank.tensors())}
    modules = {n: state.bank.shapes[n] for n in state.bank.names}
    if state.kind == "per_document":
        group_size = int(state.config.training.get("group_size", 32))
        ck = _checkpoint(checkpoint_dir, checkpoint_every, "prag-add", llm, docs, data, cfg,
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
    ck = _checkpoint(checkpoint_dir, checkpoint_every, f"poly-add-{strategy}", llm, docs, data, cfg,
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
    cfg, aug = _update_settings(llm, state, augmenter, epochs, lr, progress)
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
        ck = _checkpoint(checkpoint_dir, checkpoint_every, "poly-refit", llm, docs, data, cfg,
                         {"library": state.doc_ids, "bank": tensor_digest(state.bank.tensors()),
                          "deleted": list(deleted), "adapters": adapters})
        report["steps"] = len(train_poly(llm, bank, logits, data, cfg, train_bank=True, checkpoint=ck,
                                         trainable_adapters=adapters))
        z[users] = logits.detach()
    return replace(state, bank=bank, routing_logits=z), report


def _update_settings(llm: "LoRAMixingLLM", state: LibraryState, augmenter: Augmenter | str | None,
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
    aug = _augmenter(augmenter, llm, tuple(texts))  # the texts the library was trained on, unless told otherwise
    if isinstance(aug, GeneratedQAAugmenter) and not isinstance(augmenter, GeneratedQAAugmenter):
        aug.progress = cfg.progress  # one we made: its bar shows when training's does
    return cfg, aug


def _checkpoint(checkpoint_dir, every: int, phase: str, llm: "LoRAMixingLLM", docs: Sequence[Document],
                data: Sequence[Sequence[TrainingExample]], cfg: TrainConfig, extra: dict) -> Checkpoint | None:
    """The checkpoint of this exact run (documents, training texts, settings, base model), or None."""
    if checkpoint_dir is None:
        return None
    settings = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    texts = [[asdict(ex) for ex in exs] for exs in data]
    identity = {"model": llm.fingerprint(), "documents": [d.id for d in docs], "texts": run_key(texts),
                "train": settings, **extra}
    return Checkpoint(checkpoint_dir, phase, identity, every=every)

