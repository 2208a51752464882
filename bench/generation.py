"""``python -m bench.generation``: how fast polyprag generates, against what a user would otherwise run.

Four figures, each a ratio measured in one run, against plain transformers ``generate`` with one peft LoRA
(the baseline a user would pick; peft's mixed-adapter batch where rows need different adapters) and the bare
model (the floor), on hook-free copies of the same weights and the same padded prompts:

- tokens/s for 1, 16 and 128 rows, every row with its own mixture;
- 16 rows with 16 different mixtures / 16 rows with one mixture (the physical limit of mixture batching);
- captured decoding (static KV cache, compiled step, CUDA graphs on a GPU) / eager decoding, 16 mixtures;
- answer latency, parametric (mixture, short prompt) / in-context (k=3 passages), one question at a time, same
  questions and answer budget: answers stop at the end of their first sentence as users get them; the same with
  every answer decoding exactly ``tokens`` tokens, and the baselines on the parametric prompt; and mode
  "recite" (k recitals, then reading them), cold and with its recitals memoised.

Throughput rows decode exactly ``tokens`` new tokens (min_new_tokens = max_new_tokens).

    python -m bench.generation --threads 1            # the default model on this CPU
    python -m bench.generation --random-llama tiny    # seconds: checks that it runs
"""
from __future__ import annotations

import contextlib
import copy
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from polyprag import AdapterLibrary, BM25Retriever, Document, LoRAMixingLLM, ParametricRetriever, PolyPRAG

from .common import paired, random_library, result, save_peft_adapter, synthetic_docs, timed

ROWS = (1, 16, 128)


class Baselines:
    """Hook-free copies of the model: bare (the floor) and a peft model holding ``adapters`` LoRAs of the
    library's shape, loaded from real peft folders (adapter ``a0`` is the single-LoRA baseline)."""

    def __init__(self, llm: LoRAMixingLLM, adapters: int = 16):
        from peft import PeftModel

        self.llm = llm
        self.bare = _without_hooks(llm.model)
        prag = random_library(llm, synthetic_docs(adapters, "peft"), prag=True)
        self.names = [f"a{j}" for j in range(adapters)]
        with tempfile.TemporaryDirectory(prefix="polyprag-bench-peft-") as tmp:
            folders = [save_peft_adapter(prag.bank, j, Path(tmp) / name) for j, name in enumerate(self.names)]
            self.peft = PeftModel.from_pretrained(_without_hooks(llm.model), str(folders[0]), adapter_name="a0")
            for name, folder in zip(self.names[1:], folders[1:]):
                self.peft.load_adapter(str(folder), adapter_name=name)
        self.peft.set_adapter("a0")
        self.peft.eval()

    def generate(self, model, enc: dict, tokens: int, adapter_names: list[str] | None = None) -> torch.Tensor:
        """Plain transformers ``generate``: greedy, exactly ``tokens`` new tokens per row."""
        extra = {"adapter_names": adapter_names} if adapter_names else {}
        dtype = self.llm.compute_dtype  # the copies hold the same stored weights: run them as polyprag runs
        cast = torch.autocast(self.llm.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.no_grad(), cast:
            return model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                  pad_token_id=self.llm.tokenizer.pad_token_id, **extra)


def _without_hooks(model):
    """A copy of the model without polyprag's mixing hooks (peft wraps a model's layers in place)."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        module._forward_hooks.clear()
    return clone


def _rows(items: Sequence, n: int) -> list:
    """n items, cycling through ``items``."""
    return [items[i % len(items)] for i in range(n)]


def tokens_per_s(llm: LoRAMixingLLM, library: AdapterLibrary, base: Baselines, questions: Sequence[str],
                 tokens: int, rows: Sequence[int] = ROWS, repeats: int = 3) -> dict:
    """G1. Tokens/s of ``generate`` with a different mixture per row, of plain transformers ``generate`` with
    one peft LoRA for every row and of the bare model, for each number of rows (128 rows: timed once).

    Ratio: polyprag / peft at 16 rows, held to >= 0.9: within 10% of the one-LoRA baseline while every row
    has its own mixture (peft's own mixed-adapter batch is in G2)."""
    out: dict = {"new_tokens": tokens, "rows": list(rows)}
    for n in rows:
        prompts = [llm.question_prompt(q) for q in _rows(questions, n)]
        ids = _rows(library.doc_ids, n)
        enc = llm.encode(prompts)

        def ours():
            llm.generate(prompts, [library.mixture([i]) for i in ids], max_new_tokens=tokens, min_new_tokens=tokens)

        times = {"polyprag": [], "peft": [], "bare": []}
        for _ in range(repeats if n < 128 else 1):  # alternate, so that machine noise hits all three alike
            times["polyprag"].append(timed(ours, llm.device))
            times["peft"].append(timed(lambda: base.generate(base.peft, enc, tokens), llm.device))
            times["bare"].append(timed(lambda: base.generate(base.bare, enc, tokens), llm.device))
        for name, t in times.items():
            out[f"{name}_tokens_per_s_{n}"] = n * tokens / statistics.median(t)
        out[f"ratio_polyprag_over_peft_{n}"] = out[f"polyprag_tokens_per_s_{n}"] / out[f"peft_tokens_per_s_{n}"]
        out[f"ratio_polyprag_over_bare_{n}"] = out[f"polyprag_tokens_per_s_{n}"] / out[f"bare_tokens_per_s_{n}"]
        lengths = enc["attention_mask"].sum(1).tolist()
        out[f"polyprag_batches_{n}"] = len(llm.plan_batches(lengths, tokens))  # the baselines run one padded batch
    key = 16 if 16 in rows else rows[-1]
    note = "; ".join(f"{n} rows: polyprag/peft/bare " + "/".join(f"{out[f'{k}_tokens_per_s_{n}']:.4g}"
                                                               for k in ("polyprag", "peft", "bare")) + " tok/s"
                     for n in rows)
    return result(out[f"ratio_polyprag_over_peft_{key}"], 0.9, False, at_rows=key, note=note, **out,
                   polyprag_tokens_per_s=out[f"polyprag_tokens_per_s_{key}"],
                   peft_tokens_per_s=out[f"peft_tokens_per_s_{key}"])


def mixtures_16_vs_1(llm: LoRAMixingLLM, library: AdapterLibrary, base: Baselines, questions: Sequence[str],
                     tokens: int, repeats: int = 3, rows: int = 16) -> dict:
    """G2. Tokens/s of 16 rows with 16 different mixtures / 16 rows sharing one mixture (same prompts); peft's
    mixed-adapter batch (16 LoRAs) / its one-LoRA batch beside it."""
    prompts = [llm.question_prompt(q) for q in _rows(questions, rows)]
    ids = _rows(library.doc_ids, rows)
    enc = llm.encode(prompts)
    names = _rows(base.names, rows)

    def many():
        llm.generate(prompts, [library.mixture([i]) for i in ids], max_new_tokens=tokens, min_new_tokens=tokens)

    def one():
        llm.generate(prompts, library.mixture([ids[0]]), max_new_tokens=tokens, min_new_tokens=tokens)

    one_s, many_s = paired(one, many, repeats, llm.device)
    peft_one_s, peft_many_s = paired(lambda: base.generate(base.peft, enc, tokens),
                                     lambda: base.generate(base.peft, enc, tokens, adapter_names=names),
                                     repeats, llm.device)
    distinct = len({tuple(library.routing_weights([i]).flatten().tolist()) for i in ids})
    per_s = rows * tokens
    note = f"peft: {rows} adapters / one adapter {peft_one_s / peft_many_s:.3g}; polyprag {rows} mixtures / peft " \
           f"{rows} adapters {peft_many_s / many_s:.3g}"
    return result(one_s / many_s, 0.8, False, rows=rows, distinct_mixtures=distinct, new_tokens=tokens, note=note,
                   many_mixtures_tokens_per_s=per_s / many_s, one_mixture_tokens_per_s=per_s / one_s,
                   peft_mixed_adapters_tokens_per_s=per_s / peft_many_s, peft_one_adapter_tokens_per_s=per_s / peft_one_s,
                   peft_ratio_mixed_over_one=peft_one_s / peft_many_s,
                   ratio_polyprag_many_over_peft_mixed=peft_many_s / many_s)


def captured_vs_eager(llm: LoRAMixingLLM, library: AdapterLibrary, base: Baselines, questions: Sequence[str],
                      tokens: int, repeats: int = 3, rows: int = 16) -> dict:
    """G3. Tokens/s of captured decoding (static KV cache, compiled step; CUDA graphs on a GPU) / eager decoding,
    16 rows with 16 mixtures, the same weights; beside it captured / plain transformers ``generate`` with one
    peft LoRA and / the bare model, and how many of the 16 answers are the same token for token. The first
    captured call compiles (timed apart: ``compile_s``); a new request of the same shape does not."""
    captured = LoRAMixingLLM(llm.model, llm.tokenizer, llm.target_modules, name=llm.name, captured=True,
                             compute_dtype=llm.compute_dtype, max_batch_rows=llm.max_batch_rows,
                             batch_memory=llm.batch_memory)  # the same model and stored weights
    prompts = [llm.question_prompt(q) for q in _rows(questions, rows)]
    ids = _rows(library.doc_ids, rows)
    enc = llm.encode(prompts)
    answers: dict[str, list[str]] = {}

    def run(model: LoRAMixingLLM, key: str):
        answers[key] = model.generate(prompts, [library.mixture([i]) for i in ids], max_new_tokens=tokens,
                                      min_new_tokens=tokens)

    compile_s = timed(lambda: run(captured, "captured"), llm.device)
    eager_s, captured_s = paired(lambda: run(llm, "eager"), lambda: run(captured, "captured"), repeats, llm.device)
    peft_s, bare_s = paired(lambda: base.generate(base.peft, enc, tokens), lambda: base.generate(base.bare, enc, tokens),
                            repeats, llm.device)
    same = sum(a == b for a, b in zip(answers["eager"], answers["captured"]))
    per_s = rows * tokens
    note = (f"compile {compile_s:.1f} s; captured / peft {peft_s / captured_s:.3g}, / bare {bare_s / captured_s:.3g}; "
            f"{same}/{rows} answers identical to eager")
    return result(eager_s / captured_s, 1.0, False, rows=rows, new_tokens=tokens, compile_s=compile_s, note=note,
                   captured_tokens_per_s=per_s / captured_s, eager_tokens_per_s=per_s / eager_s,
                   peft_tokens_per_s=per_s / peft_s, bare_tokens_per_s=per_s / bare_s,
                   ratio_captured_over_peft=peft_s / captured_s, ratio_captured_over_bare=bare_s / captured_s,
                   answers_identical=same)


def parametric_vs_in_context(llm: LoRAMixingLLM, docs: Sequence[Document], questions: Sequence[str],
                             library: AdapterLibrary, tokens: int, base: Baselines | None = None,
                             recite_tokens: int = 160) -> dict:
    """1. Answer latency, parametric (mixture, short prompt) / in-context (k=3 passages), same questions and
    answer budget (``tokens``), one question at a time.

    The ratio times answers as users get them (each stops at the end of its first sentence); ``fixed_*``
    times answers of exactly ``tokens`` tokens in both modes (same decode work: only the prompt differs), and,
    with ``base``, peft's one LoRA and the bare model on the parametric prompt, also at exactly ``tokens``.
    Mode "recite" is timed too, cold (each of the k documents recited, up to ``recite_tokens``) and warm
    (the recitals memoised by the library state)."""
    retriever = ParametricRetriever(BM25Retriever(docs, k=3), library)
    modes = {m: PolyPRAG(llm, retriever, mode=m, max_new_tokens=tokens) for m in ("parametric", "in_context")}
    for rag in modes.values():  # warm-up: first-call allocations and lazy imports
        rag.answer(questions[0], min_new_tokens=tokens)
    natural: dict[str, list[float]] = {m: [] for m in modes}
    fixed: dict[str, list[float]] = {m: [] for m in (*modes, "peft", "bare")}
    answer_tokens: dict[str, list[int]] = {m: [] for m in modes}
    prompt_tokens: dict[str, list[int]] = {m: [] for m in modes}
    count = lambda text: len(llm.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for q in questions:  # alternate the modes question by question
        for m, rag in modes.items():
            fixed[m].append(timed(lambda: rag.answer(q, min_new_tokens=tokens), llm.device))
            out: list = []
            natural[m].append(timed(lambda: out.append(rag.answer(q)), llm.device))
            answer_tokens[m].append(count(out[0].text))
            prompt_tokens[m].append(count(out[0].prompt))
        if base is not None:
            enc = llm.encode([llm.question_prompt(q)])
            fixed["peft"].append(timed(lambda: base.generate(base.peft, enc, tokens), llm.device))
            fixed["bare"].append(timed(lambda: base.generate(base.bare, enc, tokens), llm.device))
    recite = PolyPRAG(llm, retriever, mode="recite", max_new_tokens=tokens, recite_tokens=recite_tokens)
    cold: list[float] = []
    warm: list[float] = []
    for q in questions:  # cold: the reciter's memo emptied first; warm: the same question again
        recite.reciter.clear()
        cold.append(timed(lambda: recite.answer(q), llm.device))
        warm.append(timed(lambda: recite.answer(q), llm.device))
    n = len(questions)
    per = {m: sum(t) / n for m, t in natural.items()}
    per_fixed = {m: sum(t) / n for m, t in fixed.items() if t}
    extra = {"note": f"recite / in-context: cold {sum(cold) / n / per['in_context']:.3g}, warm "
                     f"{sum(warm) / n / per['in_context']:.3g}; "
                     f"answers {statistics.mean(answer_tokens['parametric']):.1f} vs "
                     f"{statistics.mean(answer_tokens['in_context']):.1f} tokens; at exactly {tokens} tokens: ratio "
                     f"{per_fixed['parametric'] / per_fixed['in_context']:.3g}"}
    if base is not None:
        extra["note"] += (f", parametric / peft LoRA {per_fixed['parametric'] / per_fixed['peft']:.3g}, "
                          f"/ bare {per_fixed['parametric'] / per_fixed['bare']:.3g}")
        extra.update(fixed_peft_s_per_answer=per_fixed["peft"], fixed_bare_s_per_answer=per_fixed["bare"],
                     fixed_ratio_parametric_over_peft=per_fixed["parametric"] / per_fixed["peft"],
                     fixed_ratio_parametric_over_bare=per_fixed["parametric"] / per_fixed["bare"])
    return result(per["parametric"] / per["in_context"], 0.5, True, questions=n, max_new_tokens=tokens,
                   parametric_s_per_answer=per["parametric"], in_context_s_per_answer=per["in_context"],
                   parametric_answer_tokens=statistics.mean(answer_tokens["parametric"]),
                   in_context_answer_tokens=statistics.mean(answer_tokens["in_context"]),
                   parametric_prompt_tokens=statistics.mean(prompt_tokens["parametric"]),
                   in_context_prompt_tokens=statistics.mean(prompt_tokens["in_context"]),
                   fixed_ratio=per_fixed["parametric"] / per_fixed["in_context"],
                   fixed_parametric_s_per_answer=per_fixed["parametric"],
                   fixed_in_context_s_per_answer=per_fixed["in_context"],
                   recite_cold_s_per_answer=sum(cold) / n, recite_warm_s_per_answer=sum(warm) / n,
                   ratio_recite_cold_over_in_context=sum(cold) / n / per["in_context"],
                   ratio_recite_warm_over_in_context=sum(warm) / n / per["in_context"], **extra)


FIGURES = ("1_parametric_vs_in_context", "G1_tokens_per_s", "G2_mixtures_16_vs_1", "G3_captured_vs_eager")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench`` with only the generation figures, written to results/<machine>-generation.json."""
    from .__main__ import main as suite

    return suite(argv, section="generation", names=FIGURES)


if __name__ == "__main__":
    sys.exit(main())
