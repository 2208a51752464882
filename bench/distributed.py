"""PRAG encoding on 1 process, then on 2 (``polyprag encode --workers``), one torch thread each, in one run: the
encode time per document on each, the speed-up, whether the two libraries are identical bit for bit, and the
time extrapolated to 10k and 100k documents on 16 and 64 processes (marked as such). Run it alone on the machine.

    python -m bench.distributed --docs 64                      # the first 64 passages of popqa-birthplaces
    python -m bench.distributed --docs 8 --model tests/tiny    # any local model folder

Each run is ``polyprag encode --method prag --workers P --threads 1`` in a fresh folder; its time is the fit's as
the command prints it (augmentation, training, gathering to rank 0; not the model load nor the save). The
extrapolation assumes the measured per-process speed and a perfect split (PRAG's groups train without
talking), which holds while every process has whole groups to train: with --group-size 32, 16 processes need
at least 512 documents.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "popqa-birthplaces" / "corpus.jsonl"
OUT = Path(__file__).parent / "results" / "distributed.json"
FIT = re.compile(r"; ([0-9.]+) s on (\d+) process")


def encode(corpus: Path, out: Path, processes: int, args: argparse.Namespace) -> float:
    """Seconds the fit of ``polyprag encode --workers processes`` took (as it printed them)."""
    cmd = [sys.executable, "-m", "polyprag.cli", "encode", str(corpus), str(out), "--method", "prag",
           "--workers", str(processes), "--threads", "1", "--group-size", str(args.group_size), "-q",
           "--compute-dtype", args.compute_dtype, "--device", "cpu", "--checkpoint-dir", str(out) + ".ck"]
    if args.model:
        cmd += ["--model", args.model]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"encode on {processes} process(es) failed:\n{run.stderr[-3000:]}")
    found = FIT.search(run.stdout)
    if not found:
        raise SystemExit(f"no timing in the encode's output:\n{run.stdout[-2000:]}")
    return float(found.group(1))


def identical(a: Path, b: Path) -> bool:
    """Whether two library folders hold the same documents and config and bit-identical adapters."""
    ta, tb = load_file(str(a / "bank.safetensors")), load_file(str(b / "bank.safetensors"))
    same = all((a / f).read_bytes() == (b / f).read_bytes() for f in ("documents.jsonl", "config.json"))
    return same and ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)


def extrapolated(per_doc_one: float, speedup_two: float) -> dict:
    """Hours for 10k and 100k documents on 16 and 64 processes, from one process's s/doc and the measured
    efficiency of two (speed-up / 2), assumed to hold at larger counts: an extrapolation, not a measurement."""
    efficiency = speedup_two / 2
    return {f"{n // 1000}k_docs_{p}_processes_hours": round(n * per_doc_one / (p * efficiency) / 3600, 2)
            for n in (10_000, 100_000) for p in (16, 64)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(CORPUS), help=f"corpus JSONL (default: {CORPUS})")
    p.add_argument("--docs", type=int, default=64, help="its first N documents (default 64)")
    p.add_argument("--model", default=None, help="a local model folder (default: the bundled SmolLM2-135M)")
    p.add_argument("--epochs", type=int, default=None, help="PRAG epochs (default: the recipe's)")
    p.add_argument("--group-size", type=int, default=16,
                   help="PRAG documents per group, the unit a process takes (default 16: 64 documents make 4)")
    p.add_argument("--compute-dtype", default="auto", help="forward-pass dtype, as `polyprag encode` (default auto)")
    p.add_argument("--processes", type=int, default=2, help="the second run's processes (default 2)")
    p.add_argument("--out", default=str(OUT), help="JSON written here")
    args = p.parse_args(argv)

    if not Path(args.corpus).is_file():
        raise SystemExit(f"{args.corpus} is not a file; give a corpus JSONL with --corpus.")
    lines = Path(args.corpus).read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("\n".join(lines[: args.docs]) + "\n", encoding="utf-8")
        n = len(lines[: args.docs])
        print(f"PRAG encode of {n} documents from {args.corpus}, one torch thread per process, group size "
              f"{args.group_size}", flush=True)
        seconds = {}
        for processes in (1, args.processes):
            seconds[processes] = encode(corpus, Path(tmp) / f"lib-{processes}", processes, args)
            print(f"  {processes} process(es): {seconds[processes]:.1f} s, {seconds[processes] / n:.3f} s/doc",
                  flush=True)
        same = identical(Path(tmp) / "lib-1", Path(tmp) / f"lib-{args.processes}")
    speedup = seconds[1] / seconds[args.processes] if seconds[args.processes] > 0 else float("inf")  # 0.0: under the 0.1 s the CLI prints
    print(f"speed-up on {args.processes} processes: {speedup:.2f}x (target >= 1.8 on 2); libraries identical: {same}",
          flush=True)
    result = {"documents": n, "group_size": args.group_size, "model": args.model or "default",
              "seconds": {str(k): v for k, v in seconds.items()},
              "s_per_doc": {str(k): v / n for k, v in seconds.items()},
              "speedup": speedup, "identical": same, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if args.processes == 2:
        result["extrapolated"] = extrapolated(seconds[1] / n, speedup)
        print("extrapolated (not measured): " + ", ".join(f"{k} {v}" for k, v in result["extrapolated"].items()),
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
