"""A library's contents as one immutable value: its config (``LibraryConfig``) and its ``LibraryState``
(bank, routing table, documents, deletions), and the ``LibraryKind`` each kind of library implements.
Updates build the next state aside (``with_added``, ``without``); ``library`` swaps it in, each method's
kind (``polyprag.methods.*.kind``) trains it. None of them is imported here."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from ..documents import Document, check_unique, content_keys
from ..errors import InvalidInputError, LibraryError, UnknownDocumentError
from ..engine import BankMixture, LoRABank

if TYPE_CHECKING:
    from ..generation.llm import LoRAMixingLLM

FORMAT_VERSION = 2  # 2: polyprag-manifest.json holds every file's sha256 (config.json's too)
DTYPES = ("float32", "float16", "bfloat16", "float64")
RULES = ("mean", "sum")
RENAMED_KINDS = {"per_document": "prag"}  # kinds read from libraries saved under an earlier name
ADD_STRATEGIES = ("grow", "routing")  # how add_documents may grow a Poly-PRAG library (see its docstring)
KINDS: dict[str, "LibraryKind"] = {}  # name -> its rules; each LibraryKind subclass with a name registers itself


class LibraryKind:
    """The rules of one library kind, one small object per kind (Poly-PRAG's routed bank, PRAG's adapter per
    document): a ``LibraryState`` asks ``state.library_kind`` wherever the kinds differ, never the kind's name."""

    name = ""
    default_rule = "mean"  # how a query's documents combine unless told: "mean" or "sum"
    files: tuple[str, ...] = ()  # files a saved library of this kind holds besides bank and documents
    routing_caption = ""  # what its routing weights are, in a few words (a plot's title)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            KINDS[cls.name] = cls()

    def routing_table(self, logits: torch.Tensor | None, device) -> torch.Tensor | None:
        """The routing logits [N, m] a library of this kind keeps (None: it has none)."""
        raise NotImplementedError

    def read_routing(self, tensors: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor | None:
        """The routing logits among a saved library's ``tensors`` (its ``files``, each read; None: it saves none)."""
        raise NotImplementedError

    def check(self, state: "LibraryState") -> None:
        """Refuse a state whose bank and routing table do not fit its documents."""
        raise NotImplementedError

    def weights(self, state: "LibraryState", rows: list[int]) -> torch.Tensor:
        """Mixing weights over the bank [k, m] of the documents in these rows."""
        raise NotImplementedError

    def added(self, state: "LibraryState", bank: LoRABank, logits: torch.Tensor | None) -> torch.Tensor | None:
        """The routing table once documents with routing ``logits`` join over ``bank`` (grown, or the same)."""
        raise NotImplementedError

    def kept(self, state: "LibraryState", keep: list[int]) -> tuple[LoRABank, torch.Tensor | None]:
        """The bank and routing table that the documents in rows ``keep`` still need."""
        raise NotImplementedError

    def adapter_names(self, state: "LibraryState") -> list[str]:
        """A name for each adapter of the bank (LAG routes among them by name)."""
        raise NotImplementedError

    def own_bytes(self, bank: int, routing: int) -> int:
        """Of a library's saved bytes (bank, routing table), those its documents hold each for their own."""
        raise NotImplementedError

    def extend(self, llm: "LoRAMixingLLM", state: "LibraryState", docs: Sequence[Document],
               **options) -> "LibraryState":
        """The state with new documents encoded in, without changing what it already answers (training on
        copies: ``state`` stays as it is). Options: as ``AdapterLibrary.add_documents``."""
        raise NotImplementedError

    def refit(self, llm: "LoRAMixingLLM", state: "LibraryState", deleted: Sequence[str],
              **options) -> tuple["LibraryState", dict]:
        """Remove what documents about to be deleted taught adapters other documents share: the re-fitted state
        and what was re-fitted. A kind whose documents share no adapter has nothing to re-fit."""
        return state, {"adapters": [], "documents": [], "steps": 0}


@dataclass
class LibraryConfig:
    """What a saved library records about itself (config.json)."""

    kind: str
    rank: int
    alpha: float
    m: int
    target_modules: list[str]
    base_model: dict
    model_name: str = ""
    dtype: str = "float32"
    training: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    files: dict = field(default_factory=dict)  # file name -> sha256
    deleted_ids: list = field(default_factory=list)      # ids of deleted documents: refused, never retrieved
    deleted_content: list = field(default_factory=list)  # content keys (passage_id) of deleted texts

    def __post_init__(self) -> None:
        if isinstance(self.kind, str):
            self.kind = RENAMED_KINDS.get(self.kind, self.kind)
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise LibraryError(f"Unknown library kind {self.kind!r}; expected one of {tuple(KINDS)}.")
        for name in ("rank", "m", "format_version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LibraryError(f"Library config field {name!r} must be a positive integer, got {value!r}; "
                                   "the config was altered: restore it from a backup or re-encode the library.")
        if (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha)
                or self.alpha <= 0):
            raise LibraryError(f"Library config field 'alpha' must be a positive finite number, got {self.alpha!r}; "
                               "the config was altered: restore it from a backup or re-encode the library.")
        types = {"target_modules": list, "base_model": dict, "model_name": str, "dtype": str, "training": dict,
                 "files": dict, "deleted_ids": list, "deleted_content": list}
        for name, kind in types.items():
            if not isinstance(getattr(self, name), kind):
                raise LibraryError(f"Library config field {name!r} must be a {kind.__name__}, "
                                   f"got {getattr(self, name)!r}.")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.files.items()):
            raise LibraryError("Library config field 'files' must map file names to sha256 strings.")
        if not all(isinstance(v, str) for v in self.deleted_ids + self.deleted_content):
            raise LibraryError("Library config fields 'deleted_ids' and 'deleted_content' must list strings.")
        if self.dtype not in DTYPES:
            raise LibraryError(f"Library config field 'dtype' must be one of {DTYPES}, got {self.dtype!r}.")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise LibraryError(f"Library config field 'target_modules' must list module names, "
                               f"got {self.target_modules!r}.")


@dataclass(frozen=True, eq=False)
class LibraryState:
    """One whole state of a library: its bank, routing table, documents and deletions, never changed once made.

    An update builds the next state aside and the library swaps it in with one assignment, so whoever holds
    a state (a question being answered, a save) sees all of an update or none of it."""

    config: LibraryConfig
    bank: LoRABank
    documents: list[Document]
    routing_logits: torch.Tensor | None = None  # [N, m] (poly); None for PRAG, where adapter i is document i
    version: int = 0                            # how many updates the library had when this state was made
    doc_ids: list[str] = field(init=False, repr=False)
    _row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        docs = check_unique(self.documents)
        object.__setattr__(self, "documents", docs)  # a frozen dataclass sets its fields once, here
        object.__setattr__(self, "doc_ids", [d.id for d in docs])
        object.__setattr__(self, "_row", {d: i for i, d in enumerate(self.doc_ids)})
        if self.config.m != self.bank.m:
            object.__setattr__(self, "config", replace(self.config, m=self.bank.m))
        if self.config.rank != self.bank.rank:
            raise LibraryError(f"The library config says rank {self.config.rank}, its bank has rank {self.bank.rank}; "
                               "re-save or re-encode the library.")
        listed = [i for i in self.config.deleted_ids if i in self._row]
        if listed:
            raise LibraryError(f"Document {listed[0]!r} is both held and listed as deleted (deleted_ids); the config "
                               "was altered: restore it from a backup, or delete the document again.")
        self.library_kind.check(self)

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def library_kind(self) -> LibraryKind:
        """The rules of this library's kind."""
        return KINDS[self.config.kind]

    def __len__(self) -> int:
        return len(self.doc_ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._row

    def document(self, doc_id: str) -> Document:
        """The stored document with this id."""
        return self.documents[self.rows([doc_id])[0]]

    def rows(self, doc_ids: Iterable[str]) -> list[int]:
        """Row of each document in the routing table (and, for PRAG, in the bank); unknown ids are refused."""
        if isinstance(doc_ids, str):
            raise InvalidInputError(f"Pass a list of document ids, e.g. [{doc_ids!r}], not a single string.")
        rows = []
        for d in doc_ids:
            if not isinstance(d, str) or d not in self._row:
                if d in self.config.deleted_ids:
                    raise UnknownDocumentError(f"Document {d!r} was deleted from this library; it is no longer "
                                               "mixed or retrieved. Add it again with library.add_documents([...]).")
                raise UnknownDocumentError(
                    f"Document {d!r} is not in this library ({len(self)} documents); "
                    "encode it first with library.add_documents([...]).")
            rows.append(self._row[d])
        return rows

    def routing_weights(self, doc_ids: Sequence[str]) -> torch.Tensor:
        """Mixing weights over the bank per document [k, m]: σ(z)/Σσ(z) (poly) or one-hot (PRAG)."""
        return self.library_kind.weights(self, self.rows(doc_ids))

    def adapter_names(self) -> list[str]:
        """A name for each adapter of the bank: its document's id (PRAG) or ``adapter-j`` (Poly-PRAG)."""
        return self.library_kind.adapter_names(self)

    def mixture(self, doc_ids: Sequence[str], rule: str | None = None) -> BankMixture | None:
        """The one-row mixture for these documents: mean of routing weights, or sum of their deltas."""
        if not doc_ids:
            return None
        return self.mix(self.routing_weights(doc_ids), rule)

    def mix(self, weights: torch.Tensor, rule: str | None = None) -> BankMixture:
        """The one-row mixture of documents' routing weights [k, m] already read: their mean (one mixed adapter)
        or each kept as a term (the sum of their deltas)."""
        rule = rule or self.library_kind.default_rule
        if rule not in RULES:
            raise InvalidInputError(f"rule must be one of {RULES}, got {rule!r}.")
        terms = weights.mean(0, keepdim=True) if rule == "mean" else weights  # [T, m]
        return BankMixture(self.bank, terms[None])  # [1, T, m]

    # ---- the next state (pure: this state is left as it is) -----------------------------------
    def with_added(self, documents: Sequence[Document], routing_logits: torch.Tensor | None = None,
                   bank: LoRABank | None = None) -> "LibraryState":
        """This state with newly encoded documents: their routing rows (poly), the grown bank if any.

        ``bank``: the grown bank (its first adapters are this state's). Old documents get a routing logit of
        -1e4 on each new adapter: σ(-1e4) is exactly 0 in float32, so their mixtures do not change."""
        docs = list(documents)
        bank = self.bank if bank is None else bank
        z = self.library_kind.added(self, bank, routing_logits)
        back = {d.id for d in docs}  # ids and texts that come back are deleted no longer
        keys = set().union(*(content_keys(d) for d in docs))
        config = replace(self.config, deleted_ids=[i for i in self.config.deleted_ids if i not in back],
                         deleted_content=[k for k in self.config.deleted_content if k not in keys])
        return LibraryState(config, bank, self.documents + docs, z, self.version)

    def without(self, doc_ids: Sequence[str]) -> "LibraryState":
        """This state with the documents deleted: their routing rows dropped, the adapters no remaining
        document uses dropped (PRAG: their own adapters), their ids and content keys remembered as deleted."""
        gone = set(self.rows(doc_ids))
        if len(gone) == len(self):
            raise InvalidInputError(f"This would delete or replace all {len(gone)} documents of the library, and "
                                    "an adapter library holds at least one; encode a new library instead "
                                    "(PolyPRAGEncoder(llm).fit(docs)).")
        keep = [i for i in range(len(self)) if i not in gone]
        bank, z = self.library_kind.kept(self, keep)
        removed = [self.documents[i] for i in sorted(gone)]
        config = replace(self.config,
                         deleted_ids=list(dict.fromkeys(self.config.deleted_ids + [d.id for d in removed])),
                         deleted_content=sorted(set(self.config.deleted_content).union(
                             *(content_keys(d) for d in removed))))
        return LibraryState(config, bank, [self.documents[i] for i in keep], z, self.version)
