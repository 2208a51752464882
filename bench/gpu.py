"""The GPU run, prepared: one command that in under 10 minutes on one GPU measures what the CPU cannot, and writes
one JSON (rewritten after each step, so a run cut short keeps what it measured).

    python -m bench.gpu                                   # the default model on cuda: the figures below
    python -m bench.gpu --random-llama tiny --device cpu  # seconds: the test suite's check that it runs

Steps, each timed: 1. convert the default model from its GGUF into a fresh cache and load it on the device;
2. PRAG encode s/doc at growing group sizes (one group of that many documents, one micro-batch per step, the
default recipe's epochs) and 3. Poly-PRAG encode s/doc at growing batch sizes, each until the GPU's memory runs
out (peak memory recorded); 4. captured decoding (static KV cache, CUDA graphs) against eager decoding, 16 and
more rows with one mixture each; 5. one ``polyprag eval`` of the default methods on 40 dev questions. A step
not started before ``--budget-s`` is skipped and says so.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "gpu.json"
GPU_SIZES = dict(prag_groups=(32, 128, 512), poly_batches=(8, 32, 128), poly_docs=256, decode_rows=(16, 64, 256))
TINY_SIZES = dict(prag_groups=(2, 4), poly_batches=(2, 4), poly_docs=8, decode_rows=(4,))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="default cuda")
    ap.add_argument("--random-llama", choices=("tiny",), help="the test suite's tiny model instead of the default")
    ap.add_argument("--data", default=None, help="folder with corpus.jsonl + questions.jsonl (default: "
                                                 "../shared/data/popqa beside the clone, else the bundled facts)")
    ap.add_argument("--questions", type=int, default=40, help="dev questions of the evaluation (default 40)")
    ap.add_argument("--eval-methods", default=None, help="methods of the evaluation (default: polyprag eval's)")
    ap.add_argument("--epochs", type=int, default=None, help="encode epochs (default: the recipe's)")
    ap.add_argument("--budget-s", type=float, default=540, help="skip the steps not started by then (default 540)")
    ap.add_argument("--out", default=str(OUT), help=f"the JSON (default {OUT})")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    out: dict = {"argv": list(argv if argv is not None else sys.argv[1:]), "steps": {}, "skipped": []}
    work = Path(tempfile.mkdtemp(prefix="polyprag-gpu-"))
    if not args.random_llama:  # step 1 converts: a fresh cache, also for the evaluation's process
        os.environ["POLYPRAG_CACHE"] = str(work / "cache")

    def step(name: str, fn) -> None:
        if time.perf_counter() - start > args.budget_s:
            out["skipped"].append(name)
            print(f"{name}: skipped, the {args.budget_s:.0f} s budget is spent", flush=True)
            return
        t = time.perf_counter()
        try:
            out["steps"][name] = fn()
        except Exception as e:  # a step that fails is recorded, the others still run
            out["steps"][name] = {"error": f"{type(e).__name__}: {e}"}
        out["steps"][name]["step_s"] = time.perf_counter() - t
        print(f"{name}: {json.dumps(out['steps'][name])}", flush=True)
        _write(args.out, out, start)

    import torch

    from bench import common

    sizes = TINY_SIZES if args.random_llama else GPU_SIZES
    loaded: dict = {}

    def convert() -> dict:
        from polyprag.generation.models import default_model_path

        t = time.perf_counter()
        if args.random_llama:
            loaded["llm"] = common.load_llm(None, args.random_llama, args.device, None, None)
            folder = work / "model"
            loaded["llm"].model.save_pretrained(folder)
            loaded["llm"].tokenizer.save_pretrained(folder)
        else:
            folder = default_model_path()  # converts the GGUF: the cache is fresh
        convert_s = time.perf_counter() - t
        loaded["folder"] = str(folder)
        t = time.perf_counter()
        if not args.random_llama:
            loaded["llm"] = common.load_llm(None, None, args.device, None, None, "auto")
        common.sync(loaded["llm"].device)
        info = common.machine(loaded["llm"])
        return {"convert_s": convert_s, "load_s": time.perf_counter() - t, "machine": info}

    step("1_convert_and_load", convert)
    if "llm" not in loaded:
        _write(args.out, out, start)
        return 1
    llm = loaded["llm"]
    docs, questions, source = common.corpus_and_questions(max(sizes["decode_rows"]), args.data)
    out["data"] = source
    step("2_prag_encode", lambda: encode_sizes(llm, docs, "prag", sizes["prag_groups"], args.epochs))
    step("3_poly_encode", lambda: encode_sizes(llm, common.at_least(docs, sizes["poly_docs"])[: sizes["poly_docs"]],
                                               "poly", sizes["poly_batches"], args.epochs))
    step("4_captured_vs_eager", lambda: captured_vs_eager(llm, docs, questions, sizes["decode_rows"]))
    del loaded["llm"], llm
    common.free(torch.device(args.device))
    step("5_eval", lambda: evaluate(args, loaded["folder"], work, 600 - (time.perf_counter() - start)))
    out["total_s"] = time.perf_counter() - start
    path = _write(args.out, out, start)
    shutil.rmtree(work, ignore_errors=True)
    print(f"total {out['total_s']:.0f} s; wrote {path}")
    return 0 if not any("error" in s for s in out["steps"].values()) else 1


def encode_sizes(llm, docs, method: str, sizes, epochs: int | None) -> dict:
    """Encode s/doc and peak memory at each size (PRAG: a group of that many documents; Poly-PRAG: that batch
    size over the same documents), one micro-batch per step; stops at the first size that runs out of memory."""
    import torch

    from bench import common
    from polyprag import PolyPRAGEncoder, PRAGEncoder

    def encoder(size: int, n_epochs: int | None):
        tokens = size * 256  # max_length 256: a whole group / batch in one micro-batch
        if method == "prag":
            return PRAGEncoder(llm, group_size=size, epochs=n_epochs, max_batch_tokens=tokens, progress=False)
        return PolyPRAGEncoder(llm, batch_size=size, epochs=n_epochs, max_batch_tokens=tokens, progress=False)

    encoder(2, 1).fit(common.at_least(docs, 2)[:2])  # warm-up: kernels, allocator, lazy imports
    rows = []
    for size in sizes:
        chosen = common.at_least(docs, size)[:size] if method == "prag" else list(docs)
        if llm.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(llm.device)
        enc = encoder(size, epochs)
        try:
            seconds = common.timed(lambda: enc.fit(chosen), llm.device)
        except torch.OutOfMemoryError:
            rows.append({"size": size, "error": "out of memory"})
            common.free(llm.device)
            break
        row = {"size": size, "documents": len(chosen), "epochs": enc.train.epochs, "seconds": seconds,
               "s_per_doc": seconds / len(chosen)}
        if llm.device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(llm.device) / 2**20
        rows.append(row)
        print(f"  {method} size {size}: {row['s_per_doc']:.4f} s/doc", flush=True)
        common.free(llm.device)
    done = [r for r in rows if "s_per_doc" in r]
    best = min(done, key=lambda r: r["s_per_doc"]) if done else None
    return {"sizes": rows, "best_s_per_doc": best and best["s_per_doc"], "best_size": best and best["size"]}


def captured_vs_eager(llm, docs, questions, rows_list) -> dict:
    """Tokens/s of captured / eager decoding at each row count, one mixture per row (bench.generation's G3)."""
    from bench import common, generation

    library = common.random_library(llm, docs, m=16)
    base = generation.Baselines(llm)
    out = {}
    for rows in rows_list:
        r = generation.captured_vs_eager(llm, library, base, questions, 32, repeats=3, rows=rows)
        out[str(rows)] = {k: r[k] for k in ("ratio", "captured_tokens_per_s", "eager_tokens_per_s", "compile_s",
                                             "note")}
        print(f"  {rows} rows: captured / eager {r['ratio']:.3g}", flush=True)
    return out


def evaluate(args: argparse.Namespace, model: str, work: Path, left_s: float) -> dict:
    """One ``polyprag eval`` on the first ``--questions`` dev questions, in its own process, stopped when the
    run's 10 minutes (``left_s`` of them left) are up; its results.json."""
    from bench import common

    data = Path(args.data) if args.data else common.SHARED_DATA
    if not (data / "questions.jsonl").is_file():
        data = work / "data"  # the bundled facts, as corpus.jsonl + questions.jsonl
        data.mkdir(exist_ok=True)
        (data / "corpus.jsonl").write_bytes((common.PACKAGED_DATA / "invented_facts.jsonl").read_bytes())
        (data / "questions.jsonl").write_bytes((common.PACKAGED_DATA / "invented_questions.jsonl").read_bytes())
    cmd = [sys.executable, "-m", "polyprag.cli", "eval", "--data", str(data), "--n", str(args.questions),
           "--out", str(work / "eval"), "--device", args.device, "-q"]
    if args.random_llama:
        cmd += ["--model", model, "--bootstrap", "100", "--latency-samples", "2"]
    if args.eval_methods:
        cmd += ["--methods", args.eval_methods]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs), "--prag-epochs", str(args.epochs)]
    t = time.perf_counter()
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=max(60.0, left_s))
    except subprocess.TimeoutExpired:
        return {"error": f"not finished within the run's 10 minutes ({max(60.0, left_s):.0f} s left for it)",
                "eval_s": time.perf_counter() - t}
    seconds = time.perf_counter() - t
    if run.returncode != 0:
        return {"error": run.stderr[-2000:], "eval_s": seconds}
    report = json.loads((work / "eval" / "results.json").read_text(encoding="utf-8"))
    results = {r["method"]: {k: r.get(k) for k in ("accuracy", "em", "f1", "questions")} for r in report["results"]}
    return {"eval_s": seconds, "data": str(data), "questions": args.questions, "results": results}


def _write(path: str, out: dict, start: float) -> Path:
    out["elapsed_s"] = time.perf_counter() - start
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")
    return target


if __name__ == "__main__":
    sys.exit(main())
