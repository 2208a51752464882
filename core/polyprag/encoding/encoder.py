"""Encoder: documents in, an AdapterLibrary out; what every method's encoder shares (its settings from a
recipe, checked; the training texts; the library config it records; the steps of ``fit``, the one training
entry, single-process or one process's ``Shard`` of a data-parallel run)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .augment import Augmenter, TrainingExample
from .checkpoint import Checkpoint
from ..documents import Document, check_unique
from ..errors import InvalidInputError
from .fitting import choose_augmenter, run_checkpoint
from ..library.adapters import AdapterLibrary
from .recipes import get_recipe
from ..library.state import LibraryConfig
from .training import TrainConfig, layer_index

if TYPE_CHECKING:
    import torch

    from ..generation.llm import LoRAMixingLLM


@dataclass(frozen=True)
class Shard:
    """This process's part of ``Encoder.fit``: it augments every ``world``-th document and trains every
    ``world``-th mini-batch (Poly-PRAG) or group of documents (PRAG) from ``rank``; the hooks join it to the
    other processes (``encoding.distributed`` supplies them under a launcher). The default is the whole fit in
    one process.

    ``gather``: every process's augmented part, from this one's; ``broadcast``: copy rank 0's values into
    these tensors (the replicas start equal); ``sync``: average these gradients before each step (they stay
    equal); ``collect``: on rank 0 every process's part, from this one's (None on the others)."""

    rank: int = 0
    world: int = 1
    gather: Callable[[list], list[list]] = lambda part: [part]
    broadcast: Callable[[Sequence["torch.Tensor"]], None] = lambda tensors: None
    sync: Callable[[list["torch.Tensor"]], None] | None = None
    collect: Callable[[object], list | None] = lambda part: [part]

    def recorded(self) -> dict:
        """What a library trained in this shard records of it: the world size when there are several
        (``batch_size`` is then per process)."""
        return {"world_size": self.world} if self.world > 1 else {}


class Encoder:
    """What each method's encoder (``PolyPRAGEncoder``, ``PRAGEncoder``) shares; a method names the library
    ``kind`` it makes and its checkpoint ``phase``, says whether it trains ``data_parallel`` (and keeps a checkpoint
    while doing so: ``checkpoint_parallel``), and implements ``train_library``.

    Settings left at None come from ``recipe`` (``polyprag.encoding.recipes``); ``train`` holds the method's own
    optimisation settings (``TrainConfig`` fields)."""

    kind = ""
    phase = ""
    data_parallel = False  # whether several processes can train one library (``Shard``)
    checkpoint_parallel = False  # whether such a fit can keep a checkpoint

    def __init__(self, llm: "LoRAMixingLLM", train: dict, rank: int | None = None, alpha: float | None = None,
                 target_modules: Sequence[str] | None = None, augmenter: Augmenter | str | None = None,
                 batch_size: int = 8, max_length: int = 256, seed: int = 0, max_batch_tokens: int = 2048,
                 progress: bool = True, recipe: str = "default", layers: int | None = None,
                 lr_decay: bool | None = None):
        r = get_recipe(recipe)
        self.recipe = recipe
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
            raise InvalidInputError(f"layers must be a positive number of (last) transformer layers, got {layers!r}.")
        self.layers = layers  # LoRA on the last `layers` transformer layers only; None: on every layer
        rank = r.rank if rank is None else rank
        alpha = r.alpha if alpha is None else alpha
        if rank < 1:
            raise InvalidInputError(f"rank must be >= 1, got {rank}.")
        if train["epochs"] < 1 or batch_size < 1 or max_batch_tokens < 1:
            raise InvalidInputError("epochs, batch_size and max_batch_tokens must be >= 1.")
        self.llm = llm
        self.rank = rank
        self.alpha = alpha
        wanted = tuple(target_modules or llm.target_modules)
        missing = [t for t in wanted if t not in llm.target_modules]
        if missing:
            raise InvalidInputError(f"Target modules {missing} are not hooked in this LLM "
                                    f"(hooked: {list(llm.target_modules)}); create the LLM with them.")
        self.target_modules = wanted
        self.augmenter = choose_augmenter(augmenter, llm, r.texts)
        self.train = TrainConfig(**train, batch_size=batch_size, max_length=max_length, seed=seed,
                                 progress=progress, max_batch_tokens=max_batch_tokens,
                                 lr_decay=bool(lr_decay))

    def trained_modules(self) -> dict[str, tuple[int, int]]:
        """The hooked modules this encoder trains LoRAs on, each with its (in, out) sizes: the target modules,
        of the last ``layers`` transformer layers when set (the backward pass then stops at the first of them,
        so a step costs little more than a forward pass)."""
        chosen = {n: s for n, s in self.llm.module_shapes.items() if n.rsplit(".", 1)[-1] in self.target_modules}
        if self.layers is None:
            return chosen
        index = {n: layer_index(n) for n in chosen}
        depth = 1 + max((i for i in index.values() if i is not None), default=-1)
        if depth == 0:
            raise InvalidInputError("layers= needs module names with a layer number (e.g. model.layers.3.mlp.up_proj); "
                                    "this model's have none.")
        first = max(0, depth - self.layers)
        return {n: s for n, s in chosen.items() if index[n] is not None and index[n] >= first}

    def library_config(self, m: int, **training) -> LibraryConfig:
        """What a library trained by this encoder records: its kind, shapes, base model and training settings
        (``training``: the method's own, besides the ``TrainConfig``)."""
        return LibraryConfig(kind=self.kind, rank=self.rank, alpha=self.alpha, m=m,
                             target_modules=list(self.target_modules),
                             base_model=self.llm.fingerprint(), model_name=self.llm.name,
                             dtype=str(self.llm.dtype).replace("torch.", ""),
                             training={**asdict(self.train), "augmenter": type(self.augmenter).__name__,
                                       "texts": list(getattr(self.augmenter, "texts", ("passage",))),
                                       "recipe": self.recipe, "layers": self.layers, **training})

    def checked(self, documents: Sequence[Document]) -> list[Document]:
        """The documents to encode, refused unless their ids are unique and there is at least one."""
        docs = check_unique(documents)
        if not docs:
            raise InvalidInputError("fit() needs at least one document; the corpus is empty. "
                                    "Pass a non-empty list of Document (e.g. from load_corpus).")
        return docs

    def run_identity(self) -> dict:
        """The settings besides ``TrainConfig`` that determine what ``fit`` trains (they name its checkpoint)."""
        return {"rank": self.rank, "alpha": self.alpha, "modules": self.trained_modules(), "layers": self.layers}

    def augment(self, docs: list[Document], shard: Shard) -> list[list[TrainingExample]]:
        """Every document's training examples, this process augmenting its shard's documents."""
        mine = list(range(shard.rank, len(docs), shard.world))
        local = self.augmenter([docs[i] for i in mine]) if mine else []
        data: list = [None] * len(docs)
        for part in shard.gather(list(zip(mine, local))):
            for i, examples in part:
                data[i] = examples
        return data

    def fit(self, documents: Sequence[Document], checkpoint_dir: str | os.PathLike | None = None,
            checkpoint_every: int = 10, shard: Shard = Shard()) -> AdapterLibrary | None:
        """Train a new library on the documents (augmented first) and return it.

        ``checkpoint_dir``: save progress there (every ``checkpoint_every`` steps for Poly-PRAG, after
        each finished group of documents for PRAG); rerunning the same ``fit`` after a crash resumes
        where it stopped and gives the same library as an uninterrupted run. Delete the folder once
        the library is saved. ``shard``: this process's part of a data-parallel run (``encoding.distributed``):
        a Poly-PRAG fit returns the same library in every process, a PRAG fit returns it in rank 0 and None in
        the others (their adapters went to rank 0: one copy of a per-document library per process would not fit)."""
        if shard.world > 1 and not self.data_parallel:
            raise InvalidInputError(f"{type(self).__name__} cannot train in several processes: encode shards of "
                                    "the corpus separately (one process each) and join them with add_documents.")
        if shard.world > 1 and checkpoint_dir is not None and not self.checkpoint_parallel:
            raise InvalidInputError(f"A data-parallel {type(self).__name__} fit keeps no checkpoint; run it without "
                                    "checkpoint_dir (or in one process).")
        docs = self.checked(documents)
        data = self.augment(docs, shard)
        ck = run_checkpoint(checkpoint_dir, checkpoint_every, self.phase, self.llm, docs, data, self.train,
                            self.run_identity())
        return self.train_library(docs, data, ck, shard)

    def train_library(self, docs: list[Document], data: Sequence[Sequence[TrainingExample]],
                      checkpoint: Checkpoint | None, shard: Shard) -> AdapterLibrary | None:
        """The library of ``docs`` trained on their training texts ``data`` (saving progress in ``checkpoint``;
        this process training its ``shard``; None where the method assembles it in another process)."""
        raise NotImplementedError
