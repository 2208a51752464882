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
        self.source = source
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
        j = self.names.index(adapter) if isinstance(adapter, str) else int(adapter)
        f = self.modules.get(module)
        if f is None:
            return None
        hit = (f.members == j).nonzero().flatten()
        if len(hit) == 0:
            return None
        i, r = int(hit[0]), int(f.ranks[hit[0]])
        return f.A[i, :r], f.B[i, :, :r]

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
