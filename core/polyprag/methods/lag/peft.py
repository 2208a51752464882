"""Reading a standard peft LoRA folder (adapter_config.json + adapter_model.safetensors) for LAG; never pickle."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ...errors import InvalidInputError, LibraryError

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


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
