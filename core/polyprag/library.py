"""AdapterLibrary: a LoRA bank plus per-document routing, saved as a folder of safetensors + JSON.

Two kinds share one format and one mixing engine:
- ``poly`` (Poly-PRAG): m shared adapters, routing logits z_d ∈ R^m per document,
  weights w_d = σ(z_d) / Σ_j σ(z_dj);
- ``per_document`` (PRAG): one adapter per document, routing one-hot (adapter i = document i).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from .documents import Document, check_unique
from .errors import (DuplicateDocumentError, IncompatibleModelError, InvalidInputError, LibraryError,
                     UnknownDocumentError)
from .mixing import BankMixture, LoRABank
from . import storage

if TYPE_CHECKING:
    from .llm import LoRAMixingLLM

FORMAT_VERSION = 1
KINDS = ("poly", "per_document")
COMBINES = ("mean", "sum")
CLOSED_LOGIT = -1e4  # a routing logit whose weight σ(z) is exactly 0: an adapter a document never uses


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

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise LibraryError(f"Unknown library kind {self.kind!r}; expected one of {KINDS}.")
        for name in ("rank", "m", "format_version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LibraryError(f"Library config field {name!r} must be a non-negative integer, got {value!r}.")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            raise LibraryError(f"Library config field 'alpha' must be a finite number, got {self.alpha!r}.")
        types = {"target_modules": list, "base_model": dict, "model_name": str, "dtype": str, "training": dict,
                 "files": dict}
        for name, kind in types.items():
            if not isinstance(getattr(self, name), kind):
                raise LibraryError(f"Library config field {name!r} must be a {kind.__name__}, "
                                   f"got {getattr(self, name)!r}.")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.files.items()):
            raise LibraryError("Library config field 'files' must map file names to sha256 strings.")


class AdapterLibrary:
    """The knowledge of a set of documents as LoRA adapters and how each document mixes them."""

    def __init__(self, llm: "LoRAMixingLLM", bank: LoRABank, documents: Sequence[Document],
                 config: LibraryConfig, routing_logits: torch.Tensor | None = None):
        self.llm = llm
        self.config = config
        _check_bank(bank, llm)
        self.bank = bank.to(llm.device)
        self.documents = check_unique(documents)
        self.doc_ids = [d.id for d in self.documents]
        self._row = {d: i for i, d in enumerate(self.doc_ids)}
        if config.kind == "poly":
            if routing_logits is None or tuple(routing_logits.shape) != (len(self.documents), bank.m):
                raise LibraryError(
                    f"Routing table shape {None if routing_logits is None else tuple(routing_logits.shape)} "
                    f"does not match {len(self.documents)} documents × {bank.m} adapters."
                )
            if not torch.isfinite(routing_logits).all():
                raise InvalidInputError("The routing logits contain NaN or inf (training diverged or the table "
                                        "was altered); re-encode the documents, with a lower lr if it diverged.")
            self.routing_logits = routing_logits.detach().float().to(llm.device)  # [N, m]
        else:
            if bank.m != len(self.documents):
                raise LibraryError(f"A per-document library needs one adapter per document "
                                   f"({bank.m} adapters, {len(self.documents)} documents).")
            self.routing_logits = None

    # ---- what is inside ----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.config.kind

    def __len__(self) -> int:
        return len(self.doc_ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._row

    def document(self, doc_id: str) -> Document:
        """The stored document with this id."""
        return self.documents[self._rows([doc_id])[0]]

    def _rows(self, doc_ids: Iterable[str]) -> list[int]:
        if isinstance(doc_ids, str):
            raise InvalidInputError(f"Pass a list of document ids, e.g. [{doc_ids!r}], not a single string.")
        rows = []
        for d in doc_ids:
            if not isinstance(d, str) or d not in self._row:
                raise UnknownDocumentError(
                    f"Document {d!r} is not in this library ({len(self)} documents); "
                    "encode it first with library.add_documents([...])."
                )
            rows.append(self._row[d])
        return rows

    def routing_weights(self, doc_ids: Sequence[str]) -> torch.Tensor:
        """Mixing weights over the bank per document [k, m]: σ(z)/Σσ(z) (poly) or one-hot (PRAG)."""
        rows = self._rows(doc_ids)
        if self.kind == "poly":
            return routing_weights(self.routing_logits[rows])
        w = torch.zeros(len(rows), self.bank.m, device=self.llm.device)
        w[torch.arange(len(rows)), torch.tensor(rows, dtype=torch.long)] = 1.0
        return w

    def mixture(self, doc_ids: Sequence[str], combine: str | None = None) -> BankMixture | None:
        """The one-row mixture for these documents: mean of routing weights, or sum of their deltas."""
        if not doc_ids:
            return None
        combine = combine or ("sum" if self.kind == "per_document" else "mean")
        if combine not in COMBINES:
            raise InvalidInputError(f"combine must be one of {COMBINES}, got {combine!r}.")
        w = self.routing_weights(doc_ids)  # [k, m]
        terms = w.mean(0, keepdim=True) if combine == "mean" else w
        return BankMixture(self.bank, terms[None])  # [1, T, m]

    # ---- growing ------------------------------------------------------------------------------
    def add_documents(self, documents: Sequence[Document], **fit_options) -> "AdapterLibrary":
        """Encode new documents so their facts become answerable; what the library answered stays as it was.

        Poly-PRAG grows the bank by a few adapters trained on the new documents (old adapters frozen);
        ``strategy="routing"`` fits only their routing over the frozen bank. PRAG adds one adapter each.
        Options: ``strategy``, ``new_adapters``, ``epochs``, ``lr``, ``augmenter``, ``checkpoint_dir``."""
        from .encoder import extend_library  # the encoder owns training; the library owns storage

        docs = check_unique(documents)
        clash = [d.id for d in docs if d.id in self._row]
        if clash:
            raise DuplicateDocumentError(
                f"{len(clash)} document id(s) already in the library, e.g. {clash[0]!r}; "
                "give new documents new ids.")
        if not docs:
            return self
        extend_library(self, docs, **fit_options)
        return self

    def _append(self, documents: Sequence[Document], routing_logits: torch.Tensor | None = None,
                bank: LoRABank | None = None) -> None:
        """Adopt newly encoded documents (called by the encoder once their training finished).

        ``bank``: the grown bank (its first adapters are this library's). Old documents get a routing
        logit of -1e4 on each new adapter: σ(-1e4) is exactly 0 in float32, so their mixtures do not change."""
        docs = list(documents)
        if self.kind == "poly":
            old = self.routing_logits
            if bank is not None and bank.m > old.shape[1]:
                pad = old.new_full((old.shape[0], bank.m - old.shape[1]), CLOSED_LOGIT)
                old = torch.cat([old, pad], 1)
            self.routing_logits = torch.cat([old, routing_logits.detach().float().to(self.llm.device)])
        if bank is not None:
            self.bank = bank.to(self.llm.device)
            self.config.m = self.bank.m
        self.documents = self.documents + docs
        self.doc_ids = [d.id for d in self.documents]
        self._row = {d: i for i, d in enumerate(self.doc_ids)}

    # ---- disk ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the library as a folder, atomically: a crash leaves the old folder or the new one."""
        from safetensors.torch import save_file

        path = Path(path)
        with storage.staged_folder(path) as tmp:
            files = {"bank.safetensors": self.bank.tensors()}
            if self.routing_logits is not None:
                files["routing.safetensors"] = {"routing_logits": self.routing_logits.detach().contiguous()}
            checks = {}
            for name, tensors in files.items():
                save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / name))
                checks[name] = storage.sha256_file(tmp / name)
            with open(tmp / "documents.jsonl", "w", encoding="utf-8") as fh:
                for d in self.documents:
                    fh.write(json.dumps({"id": d.id, "title": d.title, "text": d.text,
                                         "metadata": d.metadata}, ensure_ascii=False) + "\n")
            checks["documents.jsonl"] = storage.sha256_file(tmp / "documents.jsonl")
            self.config.files = checks
            self.config.m = self.bank.m
            (tmp / "config.json").write_text(json.dumps(asdict(self.config), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, llm: "LoRAMixingLLM") -> "AdapterLibrary":
        """Read a saved library onto ``llm``'s device, checking format, files and base model."""
        from safetensors.torch import load_file

        path = Path(path)
        config = storage.read_config(path, lambda raw: LibraryConfig(**raw),
                                     "an adapter library (no config.json); "
                                     "create one with PolyPRAGEncoder(...).fit(docs).save(path).")
        if config.format_version > FORMAT_VERSION:
            raise LibraryError(f"{path} has format version {config.format_version}; this polyprag reads "
                               f"up to {FORMAT_VERSION}. Upgrade polyprag.")
        expected = {"bank.safetensors", "documents.jsonl"} | ({"routing.safetensors"} if config.kind == "poly"
                                                              else set())
        if set(config.files) != expected:
            raise LibraryError(f"{path / 'config.json'} lists files {sorted(config.files)}, "
                               f"expected {sorted(expected)}; "
                               "the config was altered. Restore it from a backup or re-encode the library.")
        for name, digest in config.files.items():
            f = path / name
            if not f.is_file():
                raise LibraryError(f"{f} is missing; the library is incomplete. Re-save or re-encode it.")
            if storage.sha256_file(f) != digest:
                raise LibraryError(f"{f} does not match its checksum (truncated or altered). "
                                   "Restore it from a backup or re-encode the library.")
        mine = llm.fingerprint()
        if config.base_model != mine:
            diff = [k for k in mine if config.base_model.get(k) != mine[k]]
            dtype = str(llm.dtype).replace("torch.", "")
            hint = (f" It was encoded in {config.dtype} and the model is {dtype}: load the model with "
                    f"dtype={config.dtype!r}." if config.dtype != dtype else "")
            raise IncompatibleModelError(
                f"{path} was encoded on another base model ({config.model_name or 'unknown'}; differs in "
                f"{', '.join(diff)}).{hint} Load it with the model it was encoded on, or re-encode.")
        try:
            bank = LoRABank.from_tensors(load_file(str(path / "bank.safetensors")), alpha=config.alpha)
            routing = None
            if config.kind == "poly":
                routing = load_file(str(path / "routing.safetensors"))["routing_logits"]
        except Exception as e:  # safetensors raises several types for a damaged file
            raise LibraryError(f"{path}: cannot read the tensors ({e}).") from None
        tensors = list(bank.tensors().values()) + ([routing] if routing is not None else [])
        if not all(torch.isfinite(t).all() for t in tensors):
            raise LibraryError(f"{path} holds NaN or inf weights (training diverged before it was saved); "
                               "re-encode it with a lower lr.")
        if bank.rank != config.rank or bank.m != config.m:
            raise LibraryError(f"{path}: the bank (m={bank.m}, rank={bank.rank}) does not match its config "
                               f"(m={config.m}, rank={config.rank}); re-save or re-encode the library.")
        try:
            docs = []
            with open(path / "documents.jsonl", encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        r = json.loads(line)
                        docs.append(Document(id=r["id"], text=r["text"], title=r.get("title", ""),
                                             metadata=r.get("metadata") or {}))
            return cls(llm, bank, docs, config, routing_logits=routing)
        except (ValueError, KeyError, TypeError) as e:  # PolyPRAGErrors are ValueErrors too
            raise LibraryError(f"{path}: the library's documents or tables are inconsistent ({e}); "
                               "re-save or re-encode it.") from None

    def storage_bytes(self) -> dict[str, int]:
        """Bytes of the saved tensors: the shared bank, the routing table, and their per-document share."""
        bank = sum(t.numel() * t.element_size() for t in self.bank.tensors().values())
        routing = 0 if self.routing_logits is None else self.routing_logits.numel() * 4
        n = max(len(self), 1)
        per_doc = routing / n if self.kind == "poly" else bank / n
        return {"bank": bank, "routing": routing, "per_document": int(round(per_doc))}


def routing_weights(logits: torch.Tensor) -> torch.Tensor:
    """w = σ(z) / Σ_j σ(z_j), row-wise (Poly-PRAG inference routing)."""
    if not torch.isfinite(logits).all():
        raise InvalidInputError("The routing logits contain NaN or inf (training diverged or the table was "
                                "altered); re-encode the documents, with a lower lr if it diverged.")
    s = torch.sigmoid(logits)
    return s / s.sum(-1, keepdim=True)


def _check_bank(bank: LoRABank, llm: "LoRAMixingLLM") -> None:
    """Refuse a bank whose adapters name layers the model does not have (they would silently do nothing)."""
    shapes = llm.module_shapes
    missing = [n for n in bank.names if n not in shapes]
    if missing:
        raise IncompatibleModelError(
            f"The adapter bank targets {len(missing)} layer(s) this model does not hook, e.g. {missing[0]!r}; "
            f"load the library with the base model (and target_modules) it was encoded with.")
    wrong = [n for n in bank.names if tuple(bank.shapes[n]) != tuple(shapes[n])]
    if wrong:
        raise IncompatibleModelError(f"Layer {wrong[0]!r} is {tuple(shapes[wrong[0]])} in this model but "
                                     f"{tuple(bank.shapes[wrong[0]])} in the adapter bank; use the model it was "
                                     "encoded with.")
    if not all(torch.isfinite(t).all() for t in bank.tensors().values()):
        raise InvalidInputError("The adapter bank contains NaN or inf (training diverged or the file was altered); "
                                "re-encode the documents, with a lower lr if it diverged.")
