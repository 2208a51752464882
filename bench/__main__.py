"""``python -m bench``: run the performance suite, print every figure as a ratio, write bench/results/*.json.

Examples:
    python -m bench --quick                                  # a smoke run: every figure once, small
    python -m bench                                          # the suite, default model: <= 10 min on 2 CPU cores
    python -m bench --thorough                               # more questions, repeats and rows (~30 min on 2 cores)
    python -m bench --device cuda --random-llama 1b          # GPU, a randomly initialised 1.1B Llama
    python -m bench --quick --random-llama tiny              # seconds: checks that every figure runs

Without ../shared/data beside the clone (and no --data) the figures use the invented facts that ship with
polyprag, completed with synthetic documents where a figure needs more.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch

from polyprag import BM25Retriever, ParametricRetriever

from . import common, figures, generation

# the configs, sized by the seconds each figure took on 2 CPU cores (bench_s in results/cpu-*.json): THOROUGH took
# ~30 min (figure 1: 400 s for 16 questions; figure 6: 920 s re-encoding 16 documents with the default recipe),
# FULL cuts the questions, repeats, rows and re-encoded documents to fit 10 minutes, QUICK runs each figure once
THOROUGH = dict(questions=16, tokens=32, repeats=5, switch_queries=10, switch_adapters=32, batch=16,
                storage_docs=1000, fit_docs=16, rows=(1, 16, 128))
FULL = dict(questions=4, tokens=32, repeats=3, switch_queries=10, switch_adapters=32, batch=8,
            storage_docs=1000, fit_docs=2, rows=(1, 16))
QUICK = dict(questions=2, tokens=8, repeats=1, switch_queries=3, switch_adapters=8, batch=4,
             storage_docs=100, fit_docs=1, rows=(1, 16))
BUDGET_S = 480  # FULL's: a figure not started by then is skipped, and says so (the last one started ends by ~10 min)


def main(argv: list[str] | None = None, section: str | None = None, names: Sequence[str] = ()) -> int:
    """Run the suite (or a ``section`` of it: only the figures ``names``, written to <machine>-<section>.json)."""
    ap = argparse.ArgumentParser(prog=f"python -m bench{'.' + section if section else ''}",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: each figure once, on few questions and tokens")
    ap.add_argument("--thorough", action="store_true",
                    help="16 questions, 5 repeats, 128-row batches, 16 re-encoded documents (~30 min on 2 CPU cores)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"skip the figures not started after this many seconds (default: {BUDGET_S} without "
                         "--thorough, none with it)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--model", help="a local HF causal-LM folder (default: bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--random-llama", choices=sorted(common.RANDOM_LLAMAS),
                    help="a randomly initialised Llama of this size instead of --model")
    ap.add_argument("--tokenizer", help="tokenizer folder for --random-llama (default: the default model's)")
    ap.add_argument("--dtype", help="float32, bfloat16, ... (default: float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--compute-dtype", help="autocast dtype of every forward pass, polyprag's and the baselines' "
                                            "(bfloat16, auto; default: none, the weights' dtype)")
    ap.add_argument("--data", help="folder with corpus.jsonl + questions.jsonl (default: ../shared/data/popqa "
                                       "beside the clone, else the facts that ship with polyprag)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--only", help="comma-separated figure names to run, keeping the others' last results in the "
                                   f"JSON (default: {'all' if not names else ','.join(names)})")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON")
    args = ap.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else THOROUGH if args.thorough else FULL
    budget = args.budget_s if args.budget_s is not None else (None if args.thorough else BUDGET_S)
    dtype = args.dtype or ("bfloat16" if (args.device or "").startswith("cuda") else None)
    start = time.perf_counter()
    llm = common.load_llm(args.model, args.random_llama, args.device, dtype, args.tokenizer, args.compute_dtype)
    info = common.machine(llm)
    print(_machine_line(info), flush=True)
    docs, questions, info["data"] = common.corpus_and_questions(max(cfg["questions"], cfg["batch"]), args.data)
    print(f"data: {info['data']}", flush=True)
    library = common.random_library(llm, docs, m=16)
    only = set(args.only.split(",")) if args.only else set(names) or None
    results: dict[str, dict] = {}
    baselines: list[generation.Baselines] = []

    def base() -> generation.Baselines:  # peft and bare copies of the model, built once when first needed
        if not baselines:
            baselines.append(generation.Baselines(llm))
        return baselines[0]

    def run(name: str, fn, measured: bool = False) -> None:  # measured: by an earlier figure's run, no budget
        if only and name not in only:
            return
        if not measured and budget is not None and time.perf_counter() - start > budget:
            print(f"{name:28s} skipped: the suite's {budget:.0f} s budget is spent (run it alone: --only {name})",
                  flush=True)
            return
        if not measured:
            print(f"{name:28s} measuring ...", flush=True)
        t = time.perf_counter()
        results[name] = fn()
        results[name]["bench_s"] = time.perf_counter() - t
        results[name]["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        results[name]["peak_rss_mb_so_far"] = common.peak_rss_mb()
        print(_line(name, results[name]), flush=True)
        common.free(llm.device)

    run("1_parametric_vs_in_context", lambda: generation.parametric_vs_in_context(
        llm, docs, questions[: cfg["questions"]], library, cfg["tokens"], base()))
    run("G1_tokens_per_s", lambda: generation.tokens_per_s(llm, library, base(), questions, cfg["tokens"],
                                                           cfg["rows"], cfg["repeats"] // 2 + 1))
    run("G2_mixtures_16_vs_1", lambda: generation.mixtures_16_vs_1(llm, library, base(), questions, cfg["tokens"],
                                                                   max(1, cfg["repeats"] // 2)))
    run("G3_captured_vs_eager", lambda: generation.captured_vs_eager(llm, library, base(), questions, cfg["tokens"],
                                                                     max(1, cfg["repeats"] // 2)))
    baselines.clear()
    common.free(llm.device)
    run("2_mixture_vs_bare", lambda: figures.mixture_vs_bare(llm, library, questions[0], cfg["tokens"],
                                                               cfg["repeats"]))
    run("3_switch_vs_peft", lambda: figures.switch_vs_peft(llm, library, cfg["switch_queries"],
                                                           cfg["switch_adapters"]))
    retriever = ParametricRetriever(BM25Retriever(docs, k=3), library)
    run("4_batched_vs_one_by_one", lambda: figures.batched_vs_one_by_one(
        llm, retriever, questions[: cfg["batch"]], cfg["tokens"], max(1, cfg["repeats"] // 2)))
    kept: dict = {}

    def storage() -> dict:
        out, kept["library"], kept["folder"] = figures.storage(llm, cfg["storage_docs"], 16, prag_samples=4)
        return out

    run("5_storage_per_document", storage)
    added: dict = {}

    def add_vs_prag() -> dict:
        out, added["vs_reencode"] = figures.add_document(llm, docs, cfg["fit_docs"])
        return out

    pair = {"6_add_document_vs_prag", "7_add_document_vs_reencode"}
    if only and only & pair:
        only |= pair  # figure 7 is measured by figure 6's run
    run("6_add_document_vs_prag", add_vs_prag)
    if "vs_reencode" in added:
        run("7_add_document_vs_reencode", lambda: added["vs_reencode"], measured=True)
    if "library" in kept:
        run("memory_library_vs_model", lambda: figures.memory(llm, kept["library"], kept["folder"]))
        shutil.rmtree(kept["folder"], ignore_errors=True)
    info["peak_rss_mb"] = common.peak_rss_mb()
    if llm.device.type == "cuda":
        info["peak_gpu_mb"] = torch.cuda.max_memory_allocated(llm.device) / 2**20
    info["suite_s"] = time.perf_counter() - start
    info["config"] = {**cfg, "quick": args.quick, "thorough": args.thorough, "budget_s": budget}
    compute = f"-{str(llm.compute_dtype).replace('torch.', '')}" if llm.compute_dtype else ""
    tags = f"{compute}{'-' + section if section else ''}{'-quick' if args.quick else '-thorough' if args.thorough else ''}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{info['device']}-{llm.name}{tags}")
    path = Path(args.out) / f"{slug}.json"
    if args.only and path.is_file():  # a rerun of some figures keeps the others' last results
        results = {**json.loads(path.read_text(encoding="utf-8"))["figures"], **results}
    common.write_json(path, {"machine": info, "figures": results})
    print(f"peak RSS {info['peak_rss_mb']:.0f} MiB"
          + (f", peak GPU {info['peak_gpu_mb']:.0f} MiB" if "peak_gpu_mb" in info else "")
          + f"; suite {info['suite_s']:.0f} s; wrote {path}")
    return 0


def _machine_line(info: dict) -> str:
    where = info.get("gpu") or info["cpu"]
    return (f"machine: {where} ({info['device']}), {info['cores']} cores, torch {info['torch']} with "
            f"{info['torch_threads']} threads; model {info['model']} ({info['model_parameters'] / 1e6:.0f}M "
            f"params, {info['dtype']}); {info['date']}")


_SHOWN = {"1_parametric_vs_in_context": ("parametric_s_per_answer", "in_context_s_per_answer"),
          "G1_tokens_per_s": ("polyprag_tokens_per_s", "peft_tokens_per_s"),
          "G2_mixtures_16_vs_1": ("many_mixtures_tokens_per_s", "one_mixture_tokens_per_s"),
          "G3_captured_vs_eager": ("captured_tokens_per_s", "eager_tokens_per_s"),
          "2_mixture_vs_bare": ("mixture_mean_s", "bare_s"),
          "3_switch_vs_peft": ("polyprag_poly_switch_s", "peft_switch_s"),
          "4_batched_vs_one_by_one": ("one_by_one_s", "batched_s"),
          "5_storage_per_document": ("poly_bytes_per_document_marginal", "prag_bytes_per_document"),
          "6_add_document_vs_prag": ("add_s", "prag_adapter_s"),
          "7_add_document_vs_reencode": ("add_s", "reencode_s"),
          "memory_library_vs_model": ("library_tensor_bytes", "model_bytes")}


def _line(name: str, r: dict) -> str:
    a, b = _SHOWN[name]
    return (f"{name:28s} ratio {r['ratio']:10.4g}  target {r['target']:8s} {'MET ' if r['met'] else 'MISS'}"
            f"  ({a}={r[a]:.4g}, {b}={r[b]:.4g})" + (f"; {r['note']}" if r.get("note") else ""))


if __name__ == "__main__":
    sys.exit(main())
