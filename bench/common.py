"""What every figure shares: the machine, timers, the model under test, random libraries, peft folders."""
from __future__ import annotations

import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from polyprag import AdapterLibrary, Document, LoRABank, LoRAMixingLLM, load_corpus, load_questions
from polyprag.library.state import LibraryConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "popqa"
PACKAGED_DATA = ROOT / "core" / "polyprag" / "demo" / "data"

# Randomly initialised Llama sizes for the GPU run (TinyLlama-1.1B's shape for "1b"); "tiny" is the test
# suite's two-layer model with its word-level tokenizer: seconds, to check that a suite runs.
RANDOM_LLAMAS = {
    "tiny": {},
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),
    "350m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=4),
}


def machine(llm: LoRAMixingLLM) -> dict:
    """The facts a reader needs to compare these numbers with theirs."""
    dev = llm.device
    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(dev),
            "model": llm.name, "dtype": str(llm.dtype).replace("torch.", ""),
            "model_parameters": sum(p.numel() for p in llm.model.parameters()) - (  # as loaded: not a bf16 head copy
                llm.model.get_output_embeddings().weight.numel() if getattr(llm.model, "_polyprag_untied_head", False)
                else 0),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def result(ratio: float, target: float, at_most: bool, **numbers) -> dict:
    """A figure: its ratio, the target it is held to (at most or at least), whether it met it, the numbers behind."""
    met = ratio <= target if at_most else ratio >= target
    return {"ratio": ratio, "target": f"{'<=' if at_most else '>='} {target:g}", "met": bool(met), **numbers}


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, GPU work included."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int, device: torch.device,
           warmup: int = 1) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately so that machine noise hits both alike."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a, device))
        tb.append(timed(b, device))
    return statistics.median(ta), statistics.median(tb)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident memory of this process (MiB)."""
    with open("/proc/self/statm", encoding="utf-8") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_llm(model: str | None, random_llama: str | None, device: str | None, dtype: str | None,
             tokenizer: str | None, compute_dtype: str | None = None) -> LoRAMixingLLM:
    """The model under test: the default SmolLM2, any HF folder, or a randomly initialised Llama."""
    if not random_llama:
        return LoRAMixingLLM.from_pretrained(model, device=device, dtype=dtype, compute_dtype=compute_dtype)
    if random_llama == "tiny":
        return tiny_llm(compute_dtype=compute_dtype)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from polyprag.generation.models import default_model_path, pick_device

    if random_llama not in RANDOM_LLAMAS:
        raise SystemExit(f"--random-llama must be one of {sorted(RANDOM_LLAMAS)}")
    tok = AutoTokenizer.from_pretrained(tokenizer or str(default_model_path()))
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **RANDOM_LLAMAS[random_llama])
    dev = torch.device(pick_device(device))
    torch.manual_seed(0)
    with dev:
        lm = LlamaForCausalLM(cfg).to(getattr(torch, dtype) if dtype else torch.float32)
    return LoRAMixingLLM(lm, tok, name=f"random-llama-{random_llama}", compute_dtype=compute_dtype)


def tiny_llm(**options) -> LoRAMixingLLM:
    """The test suite's tiny random model (tests/tiny.py of the clone)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import tiny_llm as tiny

    return tiny(**options)


def corpus_and_questions(n_questions: int, folder: str | Path | None = None
                         ) -> tuple[list[Document], list[str], str]:
    """PopQA passages and questions (``folder``, else ../shared/data/popqa beside the clone), else the facts
    that ship with polyprag; and where they came from."""
    if folder and not (Path(folder) / "corpus.jsonl").is_file():
        raise FileNotFoundError(f"{folder} has no corpus.jsonl; give a folder with corpus.jsonl and "
                                "questions.jsonl, or leave --data out to use the facts that ship with polyprag.")
    data = Path(folder) if folder else SHARED_DATA
    if (data / "corpus.jsonl").is_file():
        docs = load_corpus(data / "corpus.jsonl")
        qs = load_questions(data / "questions.jsonl")
        source = str(data)
    else:
        docs = load_corpus(PACKAGED_DATA / "invented_facts.jsonl")
        qs = load_questions(PACKAGED_DATA / "invented_questions.jsonl")
        source = "the 8 invented facts that ship with polyprag (no ../shared/data/popqa)"
    questions = [q.question for q in qs]
    while len(questions) < n_questions:
        questions = questions + questions
    return docs, questions[:n_questions], source


def random_bank(llm: LoRAMixingLLM, m: int, rank: int = 2, alpha: float = 32.0, seed: int = 0) -> LoRABank:
    """A bank of m LoRAs with small random A and B on the LLM's device (timings do not depend on values)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = llm.module_shapes
    A = [torch.randn(m, rank, i, generator=gen) * 0.02 for i, o in shapes.values()]
    B = [torch.randn(m, o, rank, generator=gen) * 0.002 for i, o in shapes.values()]
    return LoRABank(shapes, m, rank, alpha, A=A, B=B).to(device=llm.device)


def random_library(llm: LoRAMixingLLM, docs: Sequence[Document], m: int = 16, rank: int = 2,
                   prag: bool = False, training: dict | None = None) -> AdapterLibrary:
    """A Poly-PRAG (or PRAG) library with random adapters and routing: the shape of a trained one."""
    n = len(docs)
    bank = random_bank(llm, n if prag else m, rank)
    cfg = LibraryConfig(kind="prag" if prag else "poly", rank=rank, alpha=32.0, m=bank.m,
                        target_modules=list(llm.target_modules), base_model=llm.fingerprint(),
                        model_name=llm.name, training=training or {})
    logits = None if prag else torch.randn(n, m, generator=torch.Generator().manual_seed(1))
    return AdapterLibrary(llm, bank, docs, cfg, routing_logits=logits)


def synthetic_docs(n: int, prefix: str = "doc") -> list[Document]:
    """n distinct short documents (storage and memory figures only need their ids)."""
    return [Document(id=f"{prefix}-{i}", text=f"Passage number {i} about topic {i % 97}.") for i in range(n)]


def at_least(docs: Sequence[Document], n: int) -> list[Document]:
    """The first n documents, completed with synthetic ones when the corpus is smaller (a clone without
    ../shared has only the 8 bundled facts)."""
    docs = list(docs[:n])
    return docs + synthetic_docs(n - len(docs), prefix="filler") if len(docs) < n else docs


def save_peft_adapter(bank: LoRABank, j: int, folder: Path) -> Path:
    """Adapter j of the bank as a real peft LoRA folder (adapter_config.json + adapter_model.safetensors)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    targets = sorted({n.rsplit(".", 1)[-1] for n in bank.names})
    LoraConfig(r=bank.rank, lora_alpha=bank.alpha, target_modules=targets, lora_dropout=0.0,
               task_type="CAUSAL_LM").save_pretrained(str(folder))
    tensors = {}
    for name in bank.names:
        A, B = bank.factors(name)
        tensors[f"base_model.model.{name}.lora_A.weight"] = A[j].detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = B[j].detach().cpu().contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def folder_bytes(path: Path, names: Sequence[str] | None = None) -> int:
    """Bytes of the files in a folder (only ``names`` when given)."""
    files = [path / n for n in names] if names else [f for f in path.iterdir() if f.is_file()]
    return sum(f.stat().st_size for f in files)


def free(device: torch.device) -> None:
    """Return memory between figures so that each starts alike."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return path
