"""A library's mixture for given documents, written as a standard peft LoRA adapter folder.

Serving engines that batch many LoRAs (vLLM's ``LoRARequest``, LoRAX's ``adapter_id``, plain
``PeftModel.from_pretrained``) read peft folders, not polyprag libraries. A query's mixture is
one LoRA per target module, exactly: with T terms (T = 1 for Poly-PRAG "mean", T = k documents
for "sum" and PRAG),

    ΔW = Σ_t s · B(w_t) A(w_t) = [s·B(w_1) … s·B(w_T)] · [A(w_1); …; A(w_T)]

a LoRA of rank T·r whose factors are the terms' mixed factors concatenated along the rank (what
peft's ``add_weighted_adapter(combination_type="cat")`` does for a sum). The scale s is folded
into ``lora_B`` and ``lora_alpha = r`` so that peft's own scale alpha/r is 1. Zero-padding the
rank (``pad_rank``) leaves ΔW unchanged and lets a server batch adapters of one rank.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..errors import InvalidInputError
from . import storage

if TYPE_CHECKING:
    from .adapters import AdapterLibrary

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PROVENANCE_FILE = "polyprag_export.json"  # also the marker of a folder polyprag exported to
WHAT = "a peft adapter export"


def peft_state_dict(library: "AdapterLibrary", doc_ids: Sequence[str], rule: str | None = None,
                    pad_rank: int | None = None,
                    dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], int]:
    """peft-named LoRA tensors of the documents' mixture, and their rank (computation only, no I/O)."""
    mixture = library.mixture(list(doc_ids), rule)
    if mixture is None:
        raise InvalidInputError("export needs at least one document id; pass the documents the query retrieved.")
    mixture.prepare(torch.float32)
    tensors: dict[str, torch.Tensor] = {}
    rank = 0
    for name in library.bank.names:
        # the engine's own mixed factors: A [1, T·r, in], B [1, out, T·r] with s folded in
        A, B = mixture.mixed_factors(name, torch.float32)
        A, B = A[0], B[0]
        rank = A.shape[0]
        if pad_rank is not None:
            if pad_rank < rank:
                raise InvalidInputError(f"pad_rank={pad_rank} is below the mixture's rank {rank} "
                                        f"({mixture.weights.shape[1]} terms × rank {library.bank.rank}); "
                                        f"pass pad_rank >= {rank} or none.")
            A = torch.cat([A, A.new_zeros(pad_rank - rank, A.shape[1])])
            B = torch.cat([B, B.new_zeros(B.shape[0], pad_rank - rank)], dim=1)
        prefix = f"base_model.model.{name}"  # PeftModelForCausalLM → LoraModel → the HF model
        tensors[f"{prefix}.lora_A.weight"] = A.detach().to("cpu", dtype).contiguous()  # [R, in]
        tensors[f"{prefix}.lora_B.weight"] = B.detach().to("cpu", dtype).contiguous()  # [out, R]
    return tensors, (pad_rank or rank)


def peft_target_modules(library: "AdapterLibrary") -> list[str]:
    """Module-name suffixes (``gate_proj``…) when they select exactly the bank's modules, else full names."""
    names = list(library.bank.names)
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    hooked = [n for n in library.llm.module_shapes if n.rsplit(".", 1)[-1] in suffixes]
    return suffixes if sorted(hooked) == sorted(names) else names


def peft_config(library: "AdapterLibrary", rank: int) -> dict:
    """A minimal adapter_config.json that peft (old and new), vLLM and LoRAX all parse."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank,  # scale 1: s is in B
        "target_modules": peft_target_modules(library), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
        "use_rslora": False, "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "revision": None,
        "base_model_name_or_path": library.config.model_name or None,
    }


def export_peft(library: "AdapterLibrary", doc_ids: Sequence[str], out_dir: str | os.PathLike,
                rule: str | None = None, pad_rank: int | None = None,
                dtype: torch.dtype | str = torch.float32) -> Path:
    """Write the mixture of ``doc_ids`` as a peft LoRA folder that loads without polyprag installed.

    Example:
        export_peft(library, ["doc-1", "doc-7", "doc-9"], "adapters/q42", rule="sum")
        model = PeftModel.from_pretrained(base_model, "adapters/q42")
    """
    from safetensors.torch import save_file

    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise InvalidInputError(f"Unknown dtype {dtype!r}; use float32, float16 or bfloat16.")
        dtype = getattr(torch, dtype)
    out = check_export_target(out_dir)
    tensors, rank = peft_state_dict(library, doc_ids, rule, pad_rank, dtype)
    rule = rule or library.snapshot().library_kind.default_rule
    with storage.publish_folder(out, "peft", WHAT, marker=PROVENANCE_FILE) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(peft_config(library, rank), indent=2), encoding="utf-8")
        (tmp / PROVENANCE_FILE).write_text(json.dumps(
            {"documents": list(doc_ids), "rule": rule, "library_kind": library.kind,
             "library_rank": library.bank.rank, "library_alpha": library.bank.alpha, "rank": rank,
             "base_model": library.config.base_model, "model_name": library.config.model_name},
            indent=2), encoding="utf-8")
    return Path(out_dir)


def check_export_target(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a folder an export may be written to: new, empty, or an earlier export (its
    polyprag_export.json); a folder of other files, a file or an unwritable path is a LibraryFolderError."""
    return storage.check_target(out_dir, WHAT, marker=PROVENANCE_FILE)
