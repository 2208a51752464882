"""LAGLibrary: a library of LoRA adapters (peft folders or a polyprag library's) kept as their spectral factors."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ...library import storage
from ...errors import IncompatibleModelError, InvalidInputError, LibraryError
from .factors import ModuleFactors, pack, spectral_factors
from .peft import read_peft_adapter

if TYPE_CHECKING:
    from ...documents import Document
    from ...engine import BankMixture, LoRABank
    from ...library.adapters import AdapterLibrary
    from ...generation.llm import LoRAMixingLLM

FORMAT_VERSION = 1


class LAGLibrary:
    """A library of LoRA adapters stored as their spectral factors, computed once, for LAG routing.

    Example:
        lag = LAGLibrary.from_peft(["adapters/math", "adapters/law"], llm)   # or .from_adapter_library(lib)
        lag.save("lag_lib/");  lag = LAGLibrary.load("lag_lib/", llm)
        rag = PolyPRAG(llm, None, mode="lag", lag=LAGRouter(lag, k=5))
    """

    def __init__(self, llm: "LoRAMixingLLM", names: Sequence[str],
                 factors: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]], source: str = ""):
        names = [str(n) for n in names]
        if not names:
            raise InvalidInputError("A LAG library needs at least one adapter.")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise InvalidInputError(f"Adapter name {dup!r} appears twice; give every adapter its own name.")
        self.llm = llm
        self.names = names
        self._position = {n: j for j, n in enumerate(names)}
        self.source = source
        self._bank: "LoRABank | None" = None
        self.modules: dict[str, ModuleFactors] = {}
        for module, entries in factors.items():
            _check_module(llm, module, entries, names)
            entries = [e for e in entries if e[2].abs().max() > 0]  # a zero delta does not touch the layer
            if entries:
                self.modules[module] = pack(entries).to(llm.device)
        if not self.modules:
            raise InvalidInputError("Every adapter of the library is zero; nothing to route to.")

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_adapter_library(cls, library: "AdapterLibrary") -> "LAGLibrary":
        """The adapters of a polyprag library: one per document (PRAG) or the m bank adapters (Poly-PRAG)."""
        state = library.snapshot()
        bank, names = state.bank, state.adapter_names()
        factors = {}
        for module in bank.names:
            A, B = bank.factors(module)  # [m, r, in], [m, out, r]
            A_star, B_star = spectral_factors(A, B, bank.scale)  # all m adapters in one batched QR + SVD
            factors[module] = [(j, A_star[j], B_star[j]) for j in range(bank.m)]
        return cls(library.llm, names, factors, source=f"polyprag:{library.kind}")

    @classmethod
    def from_peft(cls, paths: Sequence[str | os.PathLike], llm: "LoRAMixingLLM",
                  names: Sequence[str] | None = None) -> "LAGLibrary":
        """Standard peft LoRA folders (adapter_config.json + adapter_model.safetensors) on ``llm``'s base model."""
        paths = [Path(p) for p in paths]
        if not paths:
            raise InvalidInputError("from_peft() needs at least one adapter folder.")
        names = list(names) if names is not None else [p.name for p in paths]
        if len(names) != len(paths):
            raise InvalidInputError(f"Got {len(names)} names for {len(paths)} adapter folders.")
        if len(set(names)) != len(names):
            raise InvalidInputError("Two adapter folders share a name; pass names=[...] to tell them apart.")
        factors: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for j, path in enumerate(paths):
            for module, (A, B, scale) in read_peft_adapter(path).items():
                A_star, B_star = spectral_factors(A, B, scale)
                factors.setdefault(module, []).append((j, A_star, B_star))
        return cls(llm, names, factors, source="peft")

    # ---- what is inside -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def factors(self, module: str, adapter: int | str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A* [r, in], B* [out, r]) of one adapter at one module, or None where it does not touch it."""
        j = self.index(adapter)
        f = self.modules.get(module)
        if f is None:
            return None
        hit = (f.members == j).nonzero().flatten()
        if len(hit) == 0:
            return None
        i, r = int(hit[0]), int(f.ranks[hit[0]])
        return f.A[i, :r], f.B[i, :, :r]

    def index(self, adapter: int | str) -> int:
        """The library index of an adapter given by name or index."""
        if isinstance(adapter, str):
            if adapter not in self._position:
                raise InvalidInputError(f"No adapter named {adapter!r} in the LAG library of {len(self)}.")
            return self._position[adapter]
        return int(adapter)

    # ---- the adapters applied whole, on the mixing engine -----------------------------------------
    def bank(self) -> "LoRABank":
        """The library as one ``LoRABank`` of its spectral factors (B* A* = s·B A, so scale 1: alpha = rank),
        ranks zero-padded to the largest; built once. Every held or mixed use of the adapters goes through it."""
        if self._bank is None:
            from ...engine import LoRABank

            R = max(f.A.shape[1] for f in self.modules.values())
            m = len(self)
            As, Bs, shapes = [], [], {}
            for module, f in self.modules.items():
                d_in, d_out = f.A.shape[2], f.B.shape[1]
                A = f.A.new_zeros(m, R, d_in)
                B = f.B.new_zeros(m, d_out, R)
                A[f.members, : f.A.shape[1]] = f.A  # adapters that do not touch the module stay zero
                B[f.members, :, : f.B.shape[2]] = f.B
                As.append(A)
                Bs.append(B)
                shapes[module] = (d_in, d_out)
            self._bank = LoRABank(shapes, m, R, float(R), A=As, B=Bs)
        return self._bank

    def mixture(self, weights: torch.Tensor) -> "BankMixture":
        """The engine's mixture adding each adapter's delta times its weight: weights [m] (one row) or [rows, m],
        >= 0 (1: the adapter at full strength, as PRAG sums its documents). One term per adapter used, so no
        cross terms: ΔW = Σ_j w_j B*_j A*_j, with √w_j on A* and on B*."""
        from ...engine import BankMixture

        bank = self.bank()
        w = weights.detach().to(bank.A[0].device, torch.float32)
        w = w[None] if w.dim() == 1 else w  # [rows, m]
        if w.shape[-1] != bank.m or (w < 0).any():
            raise InvalidInputError(f"Adapter weights must be >= 0 over the library's {bank.m} adapters, got shape "
                                    f"{tuple(w.shape)}.")
        T = max(int((w > 0).sum(-1).max()), 1)
        terms = w.new_zeros(w.shape[0], T, bank.m)  # [rows, T, m]: term t of a row is one adapter, √w
        for r, row in enumerate(w):
            for t, j in enumerate(row.nonzero().flatten().tolist()):
                terms[r, t, j] = row[j].sqrt()
        return BankMixture(bank, terms)

    def as_adapter_library(self, documents: "Sequence[Document] | None" = None) -> "AdapterLibrary":
        """A PRAG-kind ``AdapterLibrary`` over this library's bank (one adapter per name), so every mode of the
        pipeline (parametric, ensemble, recite) can use adapters LAG picks; ``documents`` in adapter order
        (default: a placeholder per adapter, its name)."""
        from ...documents import Document
        from ...library.adapters import AdapterLibrary
        from ...library.state import LibraryConfig

        bank = self.bank()
        docs = list(documents) if documents is not None else [Document(id=n, text=n) for n in self.names]
        if [d.id for d in docs] != self.names:
            raise InvalidInputError("as_adapter_library() needs one document per adapter, with the adapter's name "
                                    "as its id, in the library's order.")
        cfg = LibraryConfig(kind="prag", rank=bank.rank, alpha=bank.alpha, m=bank.m, target_modules=list(bank.names),
                            base_model=self.llm.fingerprint(), model_name=self.llm.name)
        return AdapterLibrary(self.llm, bank, docs, cfg)

    # ---- controls -------------------------------------------------------------------------------
    def without(self, names: Sequence[str]) -> "LAGLibrary":
        """The library with these adapters removed (names it lacks are ignored): e.g. without the documents of
        the questions asked, a control that must fall to the bare model's answers."""
        drop = {self._position[n] for n in names if n in self._position}
        keep = [j for j in range(len(self)) if j not in drop]
        if not keep:
            raise InvalidInputError("without() would remove every adapter of the library.")
        new = {old: i for i, old in enumerate(keep)}
        factors = {module: [(new[int(j)], f.A[i, :r].cpu(), f.B[i, :, :r].cpu())
                            for i, (j, r) in enumerate(zip(f.members.tolist(), f.ranks.tolist())) if j in new]
                   for module, f in self.modules.items()}
        return LAGLibrary(self.llm, [self.names[j] for j in keep], {m: e for m, e in factors.items() if e},
                          source=self.source)

    def shuffled(self, seed: int = 0) -> "LAGLibrary":
        """The control with each module's factors dealt to other adapters (a seeded derangement per module): the
        same spectra and routing statistics, but no adapter's layers come from one document any more."""
        import random

        rng = random.Random(seed)
        factors = {}
        for module, f in self.modules.items():
            n = len(f.members)
            perm = list(range(n))
            while n > 1 and any(i == p for i, p in enumerate(perm)):
                rng.shuffle(perm)
            factors[module] = [(int(f.members[i]), f.A[p, : f.ranks[p]].cpu(), f.B[p, :, : f.ranks[p]].cpu())
                               for i, p in enumerate(perm)]
        return LAGLibrary(self.llm, self.names, factors, source=self.source + " (shuffled factors)")

    def storage_bytes(self) -> dict[str, int]:
        """Bytes of the stored factors (true ranks, float32): in all and per adapter."""
        total = sum(int(f.ranks.sum()) * (f.A.shape[2] + f.B.shape[1]) * 4 for f in self.modules.values())
        return {"factors": total, "per_adapter": int(round(total / len(self)))}

    # ---- disk ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the factors as a folder (factors.safetensors + config.json), atomically; no pickle."""
        from safetensors.torch import save_file

        with storage.publish_folder(Path(path), "lag", "a LAG library") as tmp:
            tensors = {}
            for module, f in self.modules.items():
                keep = torch.arange(f.A.shape[1], device=f.ranks.device)[None, :] < f.ranks[:, None]  # [n, R]
                tensors[f"{module}.A"] = f.A[keep].contiguous().cpu()                   # [Σr, in]
                tensors[f"{module}.B"] = f.B.transpose(1, 2)[keep].T.contiguous().cpu()  # [out, Σr]
                tensors[f"{module}.members"] = f.members.cpu()
                tensors[f"{module}.ranks"] = f.ranks.cpu()
            save_file(tensors, str(tmp / "factors.safetensors"))
            config = {"format_version": FORMAT_VERSION, "kind": "lag", "names": self.names,
                      "source": self.source, "base_model": self.llm.fingerprint(), "model_name": self.llm.name}
            (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, llm: "LoRAMixingLLM") -> "LAGLibrary":
        """Read a saved LAG library onto ``llm``, checking format, checksum and base model."""
        from safetensors.torch import load as load_bytes

        path = Path(path)
        manifest, files = storage.read_folder(
            path, "a LAG library (no polyprag-manifest.json); create one with LAGLibrary.from_peft(...) or "
                  ".from_adapter_library(...) and .save(path).")
        try:
            config = json.loads(files["config.json"].decode("utf-8"))
            names = list(config["names"])
            listed = set(config["files"]) if manifest["format_version"] == 1 else set(files) - {"config.json"}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as e:
            raise LibraryError(f"{path / 'config.json'} is unreadable or altered: {e}") from None
        if config.get("kind") != "lag":
            raise LibraryError(f"{path} holds a {config.get('kind')!r} library, not a LAG one; "
                               "load it with AdapterLibrary.load and convert with LAGLibrary.from_adapter_library.")
        if int(config.get("format_version", 0)) > FORMAT_VERSION:
            raise LibraryError(f"{path} has format version {config['format_version']}; this polyprag reads up to "
                               f"{FORMAT_VERSION}. Upgrade polyprag.")
        if listed != {"factors.safetensors"}:
            raise LibraryError(f"{path} lists files {sorted(listed)}, expected ['factors.safetensors']; "
                               "re-save the library.")
        mine = llm.fingerprint()
        if config.get("base_model") != mine:
            raise IncompatibleModelError(f"{path} was built on another base model "
                                         f"({config.get('model_name') or 'unknown'}); load it with that model.")
        try:
            raw = load_bytes(files["factors.safetensors"])
        except Exception as e:  # safetensors raises several types for a damaged file
            raise LibraryError(f"{path}: cannot read the factors ({e}).") from None
        factors = {}
        for module in sorted({k.rsplit(".", 1)[0] for k in raw}):
            A, B = raw[f"{module}.A"], raw[f"{module}.B"]
            ends = raw[f"{module}.ranks"].cumsum(0).tolist()
            starts = [0] + ends[:-1]
            factors[module] = [(int(j), A[s:e], B[:, s:e]) for j, s, e in
                               zip(raw[f"{module}.members"].tolist(), starts, ends)]
        return cls(llm, names, factors, source=config.get("source", ""))


def _check_module(llm: "LoRAMixingLLM", module: str, entries, names: Sequence[str]) -> None:
    shape = llm.module_shapes.get(module)
    if shape is None:
        raise InvalidInputError(
            f"An adapter targets {module}, which this LLM does not hook (hooked: {sorted(llm.target_modules)}); "
            f"create it with LoRAMixingLLM.from_pretrained(target_modules=[..., "
            f"{module.rsplit('.', 1)[-1]!r}]).")
    for j, A, B in entries:
        if not 0 <= j < len(names):
            raise LibraryError(f"Adapter index {j} at {module} is outside the library of {len(names)}.")
        if A.shape[-1] != shape[0] or B.shape[0] != shape[1]:
            raise IncompatibleModelError(
                f"Adapter {names[j]!r} at {module} has shape in={A.shape[-1]}, out={B.shape[0]} but the model's "
                f"layer is in={shape[0]}, out={shape[1]}; it was trained on another base model.")
