"""AdapterLibrary: a LoRA bank plus per-document routing, saved as a folder of safetensors + JSON.

Two kinds share one format and one mixing engine (each kind's rules: ``polyprag.methods.*.kind``):
- ``poly`` (Poly-PRAG): m shared adapters, routing logits z_d ∈ R^m per document,
  weights w_d = σ(z_d) / Σ_j σ(z_dj);
- ``prag`` (PRAG): one adapter per document, routing one-hot (adapter i = document i).

A library's contents live in one immutable ``LibraryState``; adding, replacing and deleting documents
builds the next state aside and swaps it in with one assignment, so readers never see half an update.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import MISSING, asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..documents import Document, check_unique
from ..errors import DuplicateDocumentError, IncompatibleModelError, InvalidInputError, LibraryError
from ..engine import BankMixture, LoRABank
from ..methods.polyprag.kind import PolyPRAGKind  # noqa: F401  each kind registers itself in state.KINDS
from ..methods.prag.kind import PRAGKind  # noqa: F401
from . import storage
from .state import FORMAT_VERSION, KINDS, LibraryConfig, LibraryState

if TYPE_CHECKING:
    from ..generation.llm import LoRAMixingLLM

class AdapterLibrary:
    """The knowledge of a set of documents as LoRA adapters and how each document mixes them.

    It can be updated while other threads answer from it (``add_documents``, ``update_documents``,
    ``delete_documents``): each reader works on one whole ``snapshot()``, before or after an update."""

    def __init__(self, llm: "LoRAMixingLLM", bank: LoRABank, documents: Sequence[Document],
                 config: LibraryConfig, routing_logits: torch.Tensor | None = None):
        self.llm = llm
        _check_bank(bank, llm)
        self._state = LibraryState(config, bank.to(llm.device), documents,
                                   KINDS[config.kind].routing_table(routing_logits, llm.device))
        self._writer = threading.Lock()  # one update at a time; readers never wait
        self._saver = threading.Lock()
        self.last_update: dict | None = None  # what the last update did and what it cost

    # ---- what is inside (each read takes the current state once) -------------------------------
    def snapshot(self) -> LibraryState:
        """The library's current state; it never changes, so several reads of it always agree."""
        return self._state

    @property
    def config(self) -> LibraryConfig:
        return self._state.config

    @property
    def bank(self) -> LoRABank:
        return self._state.bank

    @property
    def documents(self) -> list[Document]:
        return self._state.documents

    @property
    def doc_ids(self) -> list[str]:
        return self._state.doc_ids

    @property
    def routing_logits(self) -> torch.Tensor | None:
        """Routing logits [N, m] (poly), None for PRAG."""
        return self._state.routing_logits

    @property
    def version(self) -> int:
        """How many updates this library object has published (0 as encoded or loaded)."""
        return self._state.version

    @property
    def kind(self) -> str:
        return self._state.kind

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._state

    def document(self, doc_id: str) -> Document:
        """The stored document with this id."""
        return self._state.document(doc_id)

    def routing_weights(self, doc_ids: Sequence[str]) -> torch.Tensor:
        """Mixing weights over the bank per document [k, m]: σ(z)/Σσ(z) (poly) or one-hot (PRAG)."""
        return self._state.routing_weights(doc_ids)

    def mixture(self, doc_ids: Sequence[str], rule: str | None = None) -> BankMixture | None:
        """The one-row mixture for these documents: mean of routing weights, or sum of their deltas."""
        return self._state.mixture(doc_ids, rule)

    # ---- updates ------------------------------------------------------------------------------
    def add_documents(self, documents: Sequence[Document], **fit_options) -> "AdapterLibrary":
        """Encode new documents so their facts become answerable; what the library answered stays as it was.

        Poly-PRAG grows the bank by a few adapters trained on the new documents (old adapters frozen);
        ``strategy="routing"`` fits only their routing over the frozen bank. PRAG adds one adapter each.
        Options: ``strategy``, ``new_adapters``, ``epochs``, ``lr``, ``augmenter``, ``checkpoint_dir``."""
        docs = check_unique(documents)
        with self._writer:
            state = self._state
            clash = [d.id for d in docs if d.id in state]
            if clash:
                raise DuplicateDocumentError(
                    f"{len(clash)} document id(s) already in the library, e.g. {clash[0]!r}; give new documents "
                    "new ids, or replace their text with library.update_documents([...]).")
            if docs:
                self._update(state, added=docs, fit_options=fit_options)
        return self

    def update_documents(self, documents: Sequence[Document], refit: bool = False,
                         **fit_options) -> "AdapterLibrary":
        """Replace the text of documents the library holds (same ids): the old text is deleted as
        ``delete_documents`` deletes (with ``refit``, as far as a re-fit removes it), the new one added as
        ``add_documents`` adds, and both become visible to readers at once. Options: as ``add_documents``."""
        docs = check_unique(documents)
        with self._writer:
            state = self._state
            state.rows([d.id for d in docs])  # refuses ids the library does not hold
            if docs:
                self._update(state, deleted=[d.id for d in docs], added=docs, refit=refit, fit_options=fit_options)
        return self

    def delete_documents(self, doc_ids: Sequence[str], refit: bool = False,
                         **fit_options) -> "AdapterLibrary":
        """Delete documents: they are never mixed or retrieved again and their ids are refused.

        PRAG drops their adapters: their knowledge is gone. Poly-PRAG drops their routing rows (and any adapter
        only they used), but the shared adapters they trained still hold some of their knowledge;
        ``refit=True`` removes it: the adapters the deleted documents weighted above uniform start afresh and
        are trained again on the remaining documents that weight them above uniform (the other adapters
        frozen), at the cost of encoding those documents again. Options: ``epochs``, ``lr``, ``augmenter``,
        ``checkpoint_dir``."""
        if isinstance(doc_ids, str):
            raise InvalidInputError(f"Pass a list of document ids, e.g. [{doc_ids!r}], not a single string.")
        ids = list(dict.fromkeys(doc_ids))
        with self._writer:
            state = self._state
            state.rows(ids)
            if ids:
                self._update(state, deleted=ids, refit=refit, fit_options=fit_options)
        return self

    def _update(self, state: LibraryState, deleted: Sequence[str] = (), added: Sequence[Document] = (),
                refit: bool = False, fit_options: dict | None = None) -> None:
        """Build the next state from ``state`` aside (training on copies), then publish it in one assignment."""
        fit_options = dict(fit_options or {})
        t0 = time.perf_counter()
        report: dict = {"deleted": list(deleted), "added": [d.id for d in added]}
        kind = state.library_kind
        if refit and deleted:
            state, report["refit"] = kind.refit(self.llm, state, deleted, **{
                k: v for k, v in fit_options.items() if k not in ("strategy", "new_adapters")})
        if deleted:
            m = state.bank.m
            state = state.without(deleted)
            report["dropped_adapters"] = m - state.bank.m
        if added:
            m = state.bank.m
            state = kind.extend(self.llm, state, added, **fit_options)
            report["new_adapters"] = state.bank.m - m
        report["seconds"] = time.perf_counter() - t0
        self._state = replace(state, version=self._state.version + 1)  # the one write readers can observe
        self.last_update = report

    # ---- disk ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the library as a folder, atomically: readers and crashes see the old folder or the new one.

        ``path`` must be new, an empty folder or a library polyprag wrote (its ``polyprag-manifest.json``);
        any other folder or file is refused (LibraryFolderError) and left as it is."""
        from safetensors.torch import save_file

        state = self._state  # one whole state, even while an update runs
        path = Path(path)
        with self._saver, storage.publish_folder(path, state.kind) as tmp:
            files = {"bank.safetensors": state.bank.tensors()}
            if state.routing_logits is not None:
                files["routing.safetensors"] = {"routing_logits": state.routing_logits.detach().contiguous()}
            for name, tensors in files.items():
                save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / name))
            with open(tmp / "documents.jsonl", "w", encoding="utf-8") as fh:
                for d in state.documents:
                    fh.write(json.dumps({"id": d.id, "title": d.title, "text": d.text,
                                         "metadata": d.metadata}, ensure_ascii=False) + "\n")
            config = replace(state.config, files={}, m=state.bank.m, format_version=FORMAT_VERSION)
            raw = {k: v for k, v in asdict(config).items() if k != "files"}  # the manifest holds the checksums
            (tmp / "config.json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, llm: "LoRAMixingLLM") -> "AdapterLibrary":
        """Read a saved library onto ``llm``'s device, checking its manifest (every file's sha256), format,
        values and base model; a save by another process meanwhile gives the old library or the new one."""
        from safetensors.torch import load as load_bytes

        path = Path(path)
        manifest, files = storage.read_folder(path, "an adapter library (no polyprag-manifest.json); create "
                                                    "one with PolyPRAGEncoder(...).fit(docs).save(path).")
        config = parse_config(files["config.json"], path)
        kind = KINDS[config.kind]
        expected = {"bank.safetensors", "documents.jsonl", *kind.files}
        listed = set(files) - {"config.json"} if manifest["format_version"] > 1 else set(config.files)
        if listed != expected:
            where = path / (storage.MANIFEST if manifest["format_version"] > 1 else "config.json")
            raise LibraryError(f"{where} lists files {sorted(listed)}, expected {sorted(expected)}; "
                               "the config was altered. Restore it from a backup or re-encode the library.")
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
            bank = LoRABank.from_tensors(load_bytes(files["bank.safetensors"]), alpha=config.alpha)
            routing = kind.read_routing({n: load_bytes(b) for n, b in files.items() if n in kind.files})
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
            for line in files["documents.jsonl"].decode("utf-8").splitlines():
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
        state = self._state
        bank = sum(t.numel() * t.element_size() for t in state.bank.tensors().values())
        routing = 0 if state.routing_logits is None else state.routing_logits.numel() * 4
        n = max(len(state), 1)
        per_doc = state.library_kind.own_bytes(bank, routing) / n
        return {"bank": bank, "routing": routing, "per_document": int(round(per_doc))}


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


def parse_config(raw: bytes, path: Path) -> LibraryConfig:
    """The LibraryConfig in a library's config.json bytes; unreadable JSON, unknown keys, values out of range and
    newer formats are each a LibraryError that names the key or value and the format version."""
    where = path / "config.json"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise LibraryError(f"{where} is unreadable ({e}); restore it from a backup or re-encode the library.") from None
    if not isinstance(data, dict):
        raise LibraryError(f"{where} holds a {type(data).__name__}, not a JSON object; re-encode the library.")
    version = data.get("format_version", 1)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise LibraryError(f"{path} has format version {version}; this polyprag reads up to {FORMAT_VERSION}. "
                           "Upgrade polyprag.")
    known = {f.name for f in fields(LibraryConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LibraryError(f"{where} has the key {unknown[0]!r}, which library format version {version!r} does not "
                           f"have (its keys: {', '.join(sorted(known))}); a newer polyprag wrote it (upgrade "
                           "polyprag) or it was edited (remove the key).")
    missing = [f.name for f in fields(LibraryConfig) if f.name not in data
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise LibraryError(f"{where} lacks the key {missing[0]!r} (library format version {version!r}); "
                           "re-encode the library.")
    return LibraryConfig(**data)
