"""Per-token routing cost of LAG (polyprag.methods.lag) against peft's Arrow layer (create_arrow_model), in one run.

Both route over the same peft LoRA folders (random, rank 6, alpha 12 on gate/up/down: the LAG paper's
knowledge-adapter shape) on the same base model. Routing cost per token = (forward time with the
router - bare forward time) / tokens, for a prefill (1 row × T tokens) and a decode-like step
(B rows × 1 token). Reported ratios are peft Arrow cost / polyprag cost, both measured here, one thread.

    python bench/bench_lag.py                       # SmolLM2-135M, 10 and 100 adapters
    python bench/bench_lag.py --tiny --adapters 4   # the test suite's tiny model, seconds
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def make_peft_folders(model, root: Path, n: int, rank: int, alpha: float, targets: list[str]) -> list[str]:
    """n peft LoRA folders with random non-zero weights, written by peft's own save_pretrained."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,
                                                         init_lora_weights=False, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(n):
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if "lora_A" in name else 0.01))
        path = root / f"adapter-{i:03d}"
        pm.save_pretrained(str(path))
        paths.append(str(path))
    return paths


def bare_copy(model):
    """A copy of the base model without polyprag's hooks (peft wraps its layers in place)."""
    clone = copy.deepcopy(model)
    for m in clone.modules():
        m._forward_hooks.clear()
    return clone


def timed(fn, repeats: int) -> float:
    """Fastest seconds of fn() over repeats, after one warm-up call (the least disturbed by other processes)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None where b is within timing noise of zero (the ratio would be meaningless)."""
    return a / b if b > 0.5 else None


def bench_one(llm, n: int, args, root: Path) -> dict:
    from peft import ArrowConfig, create_arrow_model

    from polyprag.methods.lag import LAGLibrary, LAGRouter
    from polyprag.methods.lag.selection import PromptScores

    paths = make_peft_folders(bare_copy(llm.model), root / f"n{n}", n, args.rank, 2 * args.rank,
                              list(llm.target_modules))
    t = time.perf_counter()
    library = LAGLibrary.from_peft(paths, llm)
    build_lag = time.perf_counter() - t
    t = time.perf_counter()
    peft_model = None if args.skip_peft else create_arrow_model(
        bare_copy(llm.model), paths, ArrowConfig(top_k=min(args.k, n), router_temperature=1.0, rng_seed=0)).eval()
    build_peft = None if args.skip_peft else time.perf_counter() - t
    routers = {v: LAGRouter(library, k=args.k, variant=v) for v in ("arrow_spectr", "arrow")}
    vocab = llm.model.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    shapes = {"prefill": torch.randint(100, vocab, (1, args.tokens), generator=gen),
              "decode": torch.randint(100, vocab, (args.rows, 1), generator=gen)}
    out = {"adapters": n, "build_s": {"polyprag_svd": build_lag, "peft_load": build_peft},
           "storage_bytes": library.storage_bytes()}
    with torch.no_grad():
        if peft_model is not None:
            t = time.perf_counter()
            peft_model(input_ids=shapes["decode"])  # peft builds its prototypes on the first call
            out["build_s"]["peft_prototypes_first_call"] = time.perf_counter() - t
            ids = shapes["prefill"][:, :32]
            diff = (llm.logits(ids, mixture=routers["arrow"]) - peft_model(input_ids=ids).logits).abs().max()
            out["arrow_vs_peft_max_logit_diff"] = float(diff)
        for shape, ids in shapes.items():
            tokens = ids.numel()
            base = timed(lambda: llm.logits(ids), args.repeats)
            row = {"tokens": tokens, "bare_ms": 1e3 * base}
            for v, router in routers.items():
                row[f"polyprag_{v}_ms"] = 1e3 * timed(lambda: llm.logits(ids, mixture=router), args.repeats)
            if shape == "prefill":  # the pooled variants' one scoring pass over a question's prompt
                scorer = PromptScores(library, torch.ones(ids.shape), k=args.k)
                row["polyprag_pooled_scores_ms"] = 1e3 * timed(lambda: llm.logits(ids, mixture=scorer), args.repeats)
            if peft_model is not None:
                row["peft_arrow_ms"] = 1e3 * timed(lambda: peft_model(input_ids=ids).logits, args.repeats)
            for key in [k for k in row if k.endswith("_ms") and k != "bare_ms"]:
                row[key.replace("_ms", "_us_per_token")] = 1e6 * (row[key] / 1e3 - base) / tokens
            if peft_model is not None:
                row["ratio_peft_arrow_over_lag"] = _ratio(row["peft_arrow_us_per_token"],
                                                          row["polyprag_arrow_spectr_us_per_token"])
                row["ratio_peft_arrow_over_polyprag_arrow"] = _ratio(row["peft_arrow_us_per_token"],
                                                                     row["polyprag_arrow_us_per_token"])
            out[shape] = row
    del peft_model
    return out


def _fmt(ratio: float | None) -> str:
    return "   n/a" if ratio is None else f"{ratio:5.1f}x"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", type=int, nargs="+", default=[10, 100])
    p.add_argument("--rank", type=int, default=6)
    p.add_argument("--k", type=int, default=5, help="Arrow top-k (both sides)")
    p.add_argument("--tokens", type=int, default=128, help="prefill length")
    p.add_argument("--rows", type=int, default=8, help="rows of the one-token decode step")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-peft", action="store_true", help="time polyprag alone (peft loads 100 adapters in ~30 s)")
    p.add_argument("--tiny", action="store_true", help="the tests' tiny random model instead of SmolLM2-135M")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "lag.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import tiny_llm

        llm = tiny_llm()
    else:
        from polyprag import LoRAMixingLLM

        llm = LoRAMixingLLM.from_pretrained(device="cpu")
    results = {"model": llm.name, "torch": torch.__version__, "threads": args.threads,
               "machine": platform.processor() or platform.machine(), "rank": args.rank, "k": args.k,
               "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-lag-") as tmp:
        for n in args.adapters:
            r = bench_one(llm, n, args, Path(tmp))
            results["runs"].append(r)
            for shape in ("prefill", "decode"):
                row = r[shape]
                peft_cells = (f"peft-Arrow {row['peft_arrow_us_per_token']:9.1f}  ratio peft/LAG "
                              f"{_fmt(row['ratio_peft_arrow_over_lag'])}  ") if "peft_arrow_us_per_token" in row else ""
                pooled = (f"pooled scores {row['polyprag_pooled_scores_us_per_token']:9.1f}  "
                          if "polyprag_pooled_scores_us_per_token" in row else "")
                print(f"{n:4d} adapters {shape:7s} ({row['tokens']:4d} tok): routing µs/token  "
                      f"LAG {row['polyprag_arrow_spectr_us_per_token']:9.1f}  "
                      f"polyprag-Arrow {row['polyprag_arrow_us_per_token']:9.1f}  {pooled}{peft_cells}"
                      f"(bare forward {row['bare_ms']:.1f} ms, {1e3 * row['bare_ms'] / row['tokens']:.0f} µs/token)",
                      flush=True)
            if "arrow_vs_peft_max_logit_diff" in r:
                print(f"{n:4d} adapters build: polyprag SVD {r['build_s']['polyprag_svd']:.2f} s, peft load "
                      f"{r['build_s']['peft_load']:.2f} s + prototypes "
                      f"{r['build_s']['peft_prototypes_first_call']:.2f} s; Arrow logits max |diff| vs peft "
                      f"{r['arrow_vs_peft_max_logit_diff']:.2e}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
