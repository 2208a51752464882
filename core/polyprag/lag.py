"""LAG: LoRA-Augmented Generation (Fleshman & Van Durme, arXiv 2507.05346), data-free routing over a LoRA library.

Offline, once per adapter and target module, the LoRA delta is factorised without forming it:

    U S Vᵀ = SVD_r(s·B A),   B* = U S,   A* = Vᵀ,   arrow vector a* = first row of A*

(QR of the thin factors: B = Q_B R_B, Aᵀ = Q_A R_A, so s·B A = Q_B (s·R_B R_Aᵀ) Q_Aᵀ and only an
r×r matrix is decomposed). At every token of every target layer, with x the layer's input:

    1. Arrow filter:  keep the k adapters with the largest |a*_j · x|
    2. SpectR:        ĵ = argmax_j ‖A*_j x‖₂ among them
    3. output:        W x + B*_ĵ (A*_ĵ x)          (A*_ĵ x reused from step 2)

``LAGRouter`` is a ``Mixture`` of the mixing engine (``polyprag.engine``): the forward hooks call
its ``delta``. The low-rank product is split: A*x is computed once for every adapter (routing needs
it) and only the chosen B* is applied to it, so ``lowrank_delta``'s x Aᵀ Bᵀ would recompute A*x.
A layer routes among the adapters that touch it; ranks may differ between adapters.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from .errors import IncompatibleModelError, InvalidInputError, LibraryError
from . import storage
from .engine import Mixture
from .retrieval import check_top_k

if TYPE_CHECKING:
    from .library import AdapterLibrary
    from .llm import LoRAMixingLLM

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VARIANTS = ("arrow_spectr", "arrow", "spectr")
_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def spectral_factors(A: torch.Tensor, B: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A* [.., r, in], B* [.., out, r]) with B* A* = s·B A, A* orthonormal rows sorted by singular value.

    A [.., r, in], B [.., out, r] (leading dims batch adapters); float64 inside, float32 out."""
    qa, ra = torch.linalg.qr(A.detach().double().transpose(-1, -2))  # Aᵀ = Q_A R_A: [.., in, r], [.., r, r]
    qb, rb = torch.linalg.qr(B.detach().double())                     # B = Q_B R_B:  [.., out, r], [.., r, r]
    u, s, vh = torch.linalg.svd(scale * rb @ ra.transpose(-1, -2))     # s·B A = Q_B (U S Vᵀ) Q_Aᵀ
    B_star = (qb @ u) * s[..., None, :]                                # B* = U S   [.., out, r]
    A_star = vh @ qa.transpose(-1, -2)                                 # A* = Vᵀ    [.., r, in]
    return A_star.float(), B_star.float()


@dataclass
class ModuleFactors:
    """The adapters touching one target module, padded to a common rank R (zero rows/columns)."""

    members: torch.Tensor  # [n] long: library index of each adapter here
    ranks: torch.Tensor    # [n] long: true rank of each
    A: torch.Tensor        # [n, R, in]  A* = Vᵀ
    B: torch.Tensor        # [n, out, R] B* = U S

    def __post_init__(self) -> None:
        self._dtyped: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def for_dtype(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(A* flattened [n·R, in], B*ᵀ [n, R, out]) in the activations' dtype, laid out once for the matmuls."""
        if dtype not in self._dtyped:
            n, R, d = self.A.shape
            self._dtyped[dtype] = (self.A.reshape(n * R, d).to(dtype), self.B.transpose(1, 2).contiguous().to(dtype))
        return self._dtyped[dtype]

    def to(self, device) -> "ModuleFactors":
        return ModuleFactors(self.members.to(device), self.ranks.to(device), self.A.to(device), self.B.to(device))


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
                self.modules[module] = _pack(entries).to(llm.device)
        if not self.modules:
            raise InvalidInputError("Every adapter of the library is zero; nothing to route to.")

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def from_adapter_library(cls, library: "AdapterLibrary") -> "LAGLibrary":
        """The adapters of a polyprag library: one per document (PRAG) or the m bank adapters (Poly-PRAG)."""
        bank = library.bank
        names = list(library.doc_ids) if library.kind == "per_document" else [f"adapter-{j}" for j in range(bank.m)]
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

        with storage.staged_folder(Path(path)) as tmp:
            tensors = {}
            for module, f in self.modules.items():
                keep = torch.arange(f.A.shape[1], device=f.ranks.device)[None, :] < f.ranks[:, None]  # [n, R]
                tensors[f"{module}.A"] = f.A[keep].contiguous().cpu()                   # [Σr, in]
                tensors[f"{module}.B"] = f.B.transpose(1, 2)[keep].T.contiguous().cpu()  # [out, Σr]
                tensors[f"{module}.members"] = f.members.cpu()
                tensors[f"{module}.ranks"] = f.ranks.cpu()
            save_file(tensors, str(tmp / "factors.safetensors"))
            config = {"format_version": FORMAT_VERSION, "kind": "lag", "names": self.names,
                      "source": self.source, "base_model": self.llm.fingerprint(), "model_name": self.llm.name,
                      "files": {"factors.safetensors": storage.sha256_file(tmp / "factors.safetensors")}}
            (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, llm: "LoRAMixingLLM") -> "LAGLibrary":
        """Read a saved LAG library onto ``llm``, checking format, checksum and base model."""
        from safetensors.torch import load_file

        path = Path(path)
        config, names, files = storage.read_config(
            path, lambda c: (c, list(c["names"]), dict(c["files"])),
            "a LAG library (no config.json); create one with LAGLibrary.from_peft(...) or "
            ".from_adapter_library(...) and .save(path).")
        if config.get("kind") != "lag":
            raise LibraryError(f"{path} holds a {config.get('kind')!r} library, not a LAG one; "
                               "load it with AdapterLibrary.load and convert with LAGLibrary.from_adapter_library.")
        if int(config.get("format_version", 0)) > FORMAT_VERSION:
            raise LibraryError(f"{path} has format version {config['format_version']}; this polyprag reads up to "
                               f"{FORMAT_VERSION}. Upgrade polyprag.")
        for name, digest in files.items():
            if not (path / name).is_file() or storage.sha256_file(path / name) != digest:
                raise LibraryError(f"{path / name} is missing or does not match its checksum; re-save the library.")
        mine = llm.fingerprint()
        if config.get("base_model") != mine:
            raise IncompatibleModelError(f"{path} was built on another base model "
                                         f"({config.get('model_name') or 'unknown'}); load it with that model.")
        try:
            raw = load_file(str(path / "factors.safetensors"))
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


class LAGRouter(Mixture):
    """Per token and per layer, route each token to one adapter of a ``LAGLibrary`` (Arrow filter + SpectR).

    ``variant``: ``"arrow_spectr"`` (LAG), ``"arrow"`` (Arrow alone: softmax over the top-k |a*·x|,
    as in peft's ArrowConfig) or ``"spectr"`` (SpectR over every adapter). Rows of a batch are
    routed independently (routing is per token); several prompts share a batch through ``stack``.

    Example:
        router = LAGRouter(LAGLibrary.from_adapter_library(prag_library), k=5)
        PolyPRAG(llm, None, mode="lag", lag=router).answer("Who …?")
        with router.counting() as wins:   # which adapter won most (token, layer) decisions
            llm.generate([llm.question_prompt("Who …?")], [router])
    """

    def __init__(self, library: LAGLibrary, k: int = 5, variant: str = "arrow_spectr", temperature: float = 1.0):
        if variant not in VARIANTS:
            raise InvalidInputError(f"variant must be one of {VARIANTS}, got {variant!r}.")
        if temperature <= 0:
            raise InvalidInputError(f"temperature must be > 0, got {temperature}.")
        self.library = library
        self.k = check_top_k(k)  # adapters kept by the Arrow filter
        self.variant = variant
        self.temperature = float(temperature)
        self.rows = 1
        self._active: torch.Tensor | None = None  # [rows] bool; None: every row routed
        self._wins: list[torch.Tensor | None] = [None]  # shared with stacked copies while counting

    # ---- batching -----------------------------------------------------------------------------
    @classmethod
    def stack(cls, mixtures: Sequence["LAGRouter | None"]) -> "LAGRouter | None":
        """One router for a batch whose rows are these one-row routers (None: that row runs the bare model)."""
        real = [m for m in mixtures if m is not None]
        if not real:
            return None
        first = real[0]
        if any(not isinstance(m, LAGRouter) or m.rows != 1 or m._active is not None for m in real):
            raise InvalidInputError("LAGRouter.stack() takes one-row LAG routers.")
        if any((m.library, m.k, m.variant, m.temperature) != (first.library, first.k, first.variant,
                                                              first.temperature) for m in real):
            raise InvalidInputError("Rows of one batch must use the same LAG library, k and variant.")
        out = cls(first.library, first.k, first.variant, first.temperature)
        out.rows = len(mixtures)
        out._wins = first._wins
        if len(real) < len(mixtures):
            out._active = torch.tensor([m is not None for m in mixtures])
        return out

    # ---- routing ------------------------------------------------------------------------------
    def route(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Routing of tokens x [.., in] at module ``name``: (adapters [T, K] as library indices, weights [T, K]);
        K = 1 except for the "arrow" variant (its top-k). None where no adapter touches the module."""
        routed = self._route(name, x)
        if routed is None:
            return None
        local, weight, _ = routed
        return self.library.modules[name].members[local], weight

    def _route(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(chosen adapters [T, K] as positions in the module, weights [T, K], their A*x [T, K, R])."""
        f = self.library.modules.get(name)
        if f is None:
            return None
        A_flat, _ = f.for_dtype(x.dtype)
        n, R = f.A.shape[0], f.A.shape[1]
        t = x.reshape(-1, x.shape[-1])              # [T, in]
        z = (t @ A_flat.T).view(-1, n, R)            # A*_j x for every adapter here: [T, n, R]
        arrow = z[..., 0].abs()                      # |a*_j · x| (a* = first row of A*): [T, n]
        k = min(self.k, n)
        if self.variant == "arrow":                  # Arrow: softmax over the top-k scores
            score, local = arrow.topk(k, dim=-1)     # [T, k]
            weight = torch.softmax(score / self.temperature, dim=-1)
        else:
            if self.variant == "spectr" or k == n:   # SpectR over every adapter
                local = z.norm(dim=-1).argmax(-1, keepdim=True)  # [T, 1]
            else:                                    # Arrow filter, then SpectR among the k kept
                keep = arrow.topk(k, dim=-1).indices  # [T, k]
                norms = z.gather(1, keep[..., None].expand(-1, -1, R)).norm(dim=-1)  # ‖A*_j x‖: [T, k]
                local = keep.gather(1, norms.argmax(-1, keepdim=True))  # ĵ: [T, 1]
            weight = torch.ones(local.shape, dtype=x.dtype, device=x.device)
        return local, weight, z.gather(1, local[..., None].expand(-1, -1, R))  # reuse A*_ĵ x: [T, K, R]

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        routed = self._route(name, x)
        if routed is None:
            return None
        f = self.library.modules[name]
        local, weight, zk = routed  # [T, K], [T, K], [T, K, R]
        _, Bt = f.for_dtype(x.dtype)  # B*ᵀ: [n, R, out]
        T, K, R = zk.shape
        # Σ_K w · B*_ĵ (A*_ĵ x): the chosen B*ᵀ per token, [T, K·R, out], applied to the kept A*x [T, 1, K·R]
        B_sel = Bt.index_select(0, local.reshape(-1)).view(T, K * R, Bt.shape[2])
        out = torch.bmm((zk * weight[..., None]).reshape(T, 1, K * R), B_sel)  # [T, 1, out]
        out = out.view(*x.shape[:-1], Bt.shape[2])
        active = self._rows_active(x)
        if active is not None:
            out = out * active
        if self._wins[0] is not None:
            top = local.gather(1, weight.argmax(-1, keepdim=True))[:, 0]  # the token's main adapter
            self._count(f.members[top], x, active)
        return out

    def _rows_active(self, x: torch.Tensor) -> torch.Tensor | None:
        if self._active is None:
            return None
        if x.dim() < 3 or x.shape[0] != self._active.numel():
            raise InvalidInputError(f"The LAG router has {self._active.numel()} rows but the batch has "
                                    f"{x.shape[0] if x.dim() >= 3 else 1}; give one mixture per row.")
        return self._active.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))

    # ---- which adapter wins ---------------------------------------------------------------------
    def _count(self, winner: torch.Tensor, x: torch.Tensor, active: torch.Tensor | None) -> None:
        if active is not None:
            winner = winner[active.expand(*x.shape[:-1], 1).reshape(-1) > 0]
        self._wins[0] += torch.bincount(winner.cpu(), minlength=len(self.library))

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter]:
        """Count, inside this block, how many (token, layer) decisions each adapter won, by adapter name."""
        wins: Counter = Counter()
        self._wins[0] = torch.zeros(len(self.library), dtype=torch.long)
        try:
            yield wins
        finally:
            counts, self._wins[0] = self._wins[0], None
            wins.update({n: int(c) for n, c in zip(self.library.names, counts) if c > 0})


# ---- helpers ----------------------------------------------------------------------------------
def read_peft_adapter(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """module name -> (A [r, in], B [out, r], scale) of one peft LoRA folder (safetensors only)."""
    from safetensors.torch import load_file

    cfg_file, weights = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not cfg_file.is_file():
        raise LibraryError(f"{path} is not a peft adapter folder (no adapter_config.json).")
    if not weights.is_file():
        hint = " It has adapter_model.bin (pickle), which polyprag never loads; re-save it with " \
               "save_pretrained(..., safe_serialization=True)." if (path / "adapter_model.bin").is_file() else ""
        raise LibraryError(f"{path} has no adapter_model.safetensors.{hint}")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        tensors = load_file(str(weights))
    except Exception as e:  # json or safetensors: a damaged folder
        raise LibraryError(f"{path}: cannot read the adapter ({e}).") from None
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA" or cfg.get("use_dora"):
        raise InvalidInputError(f"{path} is a {cfg.get('peft_type')}{' DoRA' if cfg.get('use_dora') else ''} "
                                "adapter; LAG routes plain LoRA adapters only.")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise InvalidInputError(f"{path}: tensor {key!r} is not a linear LoRA factor (embedding LoRA, "
                                    "DoRA magnitude or modules_to_save are not supported by LAG).")
        parts.setdefault(match["module"], {})[match["ab"]] = value
    out = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise LibraryError(f"{path}: module {module} has lora_{next(iter(ab))} without its partner.")
        A, B = ab["A"].float(), ab["B"].float()
        r = A.shape[0]
        alpha = float(cfg.get("lora_alpha", 8))
        for pattern, value in (cfg.get("alpha_pattern") or {}).items():  # peft's per-module alpha
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = float(value)
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = (A, B, scale)
    return out


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


def _pack(entries: list[tuple[int, torch.Tensor, torch.Tensor]]) -> ModuleFactors:
    """Stack one module's adapters (sorted by library index), zero-padding ranks to the largest."""
    entries = sorted(entries, key=lambda e: e[0])
    R = max(A.shape[0] for _, A, _ in entries)
    n, d_in, d_out = len(entries), entries[0][1].shape[1], entries[0][2].shape[0]
    A = torch.zeros(n, R, d_in)
    B = torch.zeros(n, d_out, R)
    for i, (_, a, b) in enumerate(entries):
        A[i, : a.shape[0]] = a
        B[i, :, : b.shape[1]] = b
    members = torch.tensor([e[0] for e in entries], dtype=torch.long)
    ranks = torch.tensor([e[1].shape[0] for e in entries], dtype=torch.long)
    return ModuleFactors(members, ranks, A, B)
