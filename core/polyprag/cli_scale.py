"""`polyprag export | inspect | bench`: hand a query's mixture to a server, look at routing, run benchmarks.

Each subcommand is ``configure_<name>(parser)`` + ``cmd_<name>(args) -> exit status``, listed in
SCALE_COMMANDS (name -> (help, configure, run)) for ``polyprag.cli``'s registration table;
``add_<name>_parser(subparsers)`` registers one on any argparse subparsers object.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

from .errors import InvalidInputError, LibraryError

REPO = Path(__file__).resolve().parents[2]  # the source checkout (bench/ lives there, not in the wheel)


def _load_library(path: str, model: str | None, device: str | None):
    """The library at ``path`` on the model it was encoded on (or ``model``)."""
    from . import distributed
    from .library import AdapterLibrary
    from .llm import LoRAMixingLLM

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise LibraryError(f"{path} is not an adapter library (no config.json); create one with `polyprag encode`.")
    if model is None:
        try:
            model = json.loads(cfg.read_text(encoding="utf-8")).get("model_name") or None
        except ValueError:
            model = None  # AdapterLibrary.load reports the broken config precisely
    llm = LoRAMixingLLM.from_pretrained(model, device=distributed.local_device(device))
    return AdapterLibrary.load(path, llm)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# ---- export -------------------------------------------------------------------------------------
def configure_export(p: argparse.ArgumentParser) -> None:
    p.epilog = ("The folder loads with PeftModel.from_pretrained(base, DIR), vLLM's LoRARequest(name, id, DIR) "
                "or LoRAX's adapter_id=DIR, without polyprag installed.")
    p.add_argument("--library", required=True, help="adapter library folder (from `polyprag encode`)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--docs", type=_csv, help="comma-separated document ids whose mixture to export")
    which.add_argument("--question", help="export the mixture of the documents BM25 retrieves for this question")
    p.add_argument("--k", type=int, default=3, help="documents retrieved with --question")
    p.add_argument("--out", required=True, help="folder to write adapter_config.json + adapter_model.safetensors")
    p.add_argument("--combine", choices=("mean", "sum"), default=None,
                   help="mean of routing weights (rank r) or sum of deltas (rank k·r, exact); "
                        "default: mean for poly, sum for prag")
    p.add_argument("--pad-rank", type=int, default=None,
                   help="zero-pad the LoRA rank to this (same output; servers batch equal ranks)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="dtype of the saved LoRA weights")
    p.add_argument("--model", default=None, help="base model (default: the one the library was encoded on)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def cmd_export(args: argparse.Namespace) -> int:
    """Write the mixture of the given (or retrieved) documents as a peft LoRA folder."""
    from .export import CONFIG_FILE, export_peft
    from .retrieval import BM25Retriever

    library = _load_library(args.library, args.model, getattr(args, "device", None))
    doc_ids = args.docs
    if args.question is not None:
        doc_ids = [h.document.id for h in BM25Retriever(library.documents, k=args.k).retrieve(args.question)]
    out = export_peft(library, doc_ids, args.out, combine=args.combine, pad_rank=args.pad_rank, dtype=args.dtype)
    rank = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))["r"]
    if args.json:
        print(json.dumps({"out": str(out), "documents": doc_ids, "rank": rank,
                          "files": sorted(f.name for f in out.iterdir())}))
    else:
        print(f"Wrote a rank-{rank} peft LoRA adapter for {len(doc_ids)} document(s) ({', '.join(doc_ids)}) to {out}.")
    return 0


# ---- inspect ------------------------------------------------------------------------------------
def configure_inspect(p: argparse.ArgumentParser) -> None:
    from .plots import MAX_ROWS

    p.add_argument("--library", required=True, help="adapter library folder (from `polyprag encode`)")
    p.add_argument("--out", default="routing.png", help="picture to write (.png, .pdf or .svg)")
    p.add_argument("--docs", type=_csv, default=None, help="comma-separated document ids (default: all)")
    p.add_argument("--max-rows", type=int, default=MAX_ROWS,
                   help="documents drawn at most (evenly sampled beyond this; the histogram uses all)")
    p.add_argument("--model", default=None, help="base model (default: the one the library was encoded on)")
    p.add_argument("--json", action="store_true", help="print the routing summary as JSON")


def cmd_inspect(args: argparse.Namespace) -> int:
    """Draw the routing heat map and bank-usage histogram, and print the routing summary."""
    from .plots import plot_routing, routing_summary

    if args.max_rows < 1:
        raise InvalidInputError(f"--max-rows must be >= 1, got {args.max_rows}.")
    library = _load_library(args.library, args.model, getattr(args, "device", None))
    out = plot_routing(library, args.out, doc_ids=args.docs, max_rows=args.max_rows)
    summary = {**routing_summary(library, args.docs), "picture": str(out)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['documents']} documents over {summary['adapters']} adapters; "
              f"{summary['unused_adapters']} adapter(s) never any document's top choice; "
              f"mean routing entropy {summary['mean_normalised_entropy']:.2f} (0 one-hot, 1 uniform). "
              f"Wrote {out}.")
    return 0


# ---- bench --------------------------------------------------------------------------------------
SUITES = {"engine": "bench", "generation": "bench.generation", "bm25": "bench.bench_bm25", "lag": "bench.bench_lag"}


def configure_bench(p: argparse.ArgumentParser) -> None:
    p.epilog = "Other options go to the suite, e.g. `polyprag bench --quick`, `polyprag bench bm25 --sizes 10000`."
    p.add_argument("suite", nargs="?", choices=sorted(SUITES), default="engine",
                   help="engine: python -m bench (latency, storage, switching, generation); generation: its "
                        "generation figures alone (tokens/s, mixture batching, answer latency); bm25: rank-bm25 vs "
                        "bm25s query latency; lag: LAG routing cost")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark module from the source checkout (the package's own, else the working folder's);
    its exit status is ours."""
    found = [root for root in (REPO, Path.cwd()) if (root / "bench" / "generation.py").is_file()]
    if not found:
        print("polyprag bench runs the benchmarks of a source checkout (bench/ is not installed with the "
              "package): clone the repository, `pip install -e '.[dev]'` in it and run `polyprag bench` there. "
              "The clone is enough: without ../shared/data beside it the benchmarks use the facts that ship with "
              "polyprag.", file=sys.stderr)
        return 1
    extra = list(getattr(args, "passthrough", []) or [])
    cmd = [sys.executable, "-m", SUITES[args.suite], *extra]
    return subprocess.call(cmd, cwd=found[0])


SCALE_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "export": ("write a query's mixture as a peft LoRA adapter folder (vLLM, LoRAX, peft)", configure_export,
               cmd_export),
    "inspect": ("draw a library's routing weights and bank usage to a PNG", configure_inspect, cmd_inspect),
    "bench": ("run the benchmarks (engine, bm25, lag) and print ratios", configure_bench, cmd_bench),
}


def _add(name: str, subparsers) -> argparse.ArgumentParser:
    help_, configure, run = SCALE_COMMANDS[name]
    p = subparsers.add_parser(name, help=help_, description=help_)
    configure(p)
    p.set_defaults(_run=run)
    return p


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Register `export` on an argparse subparsers object."""
    return _add("export", subparsers)


def add_inspect_parser(subparsers) -> argparse.ArgumentParser:
    """Register `inspect` on an argparse subparsers object."""
    return _add("inspect", subparsers)


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on an argparse subparsers object."""
    return _add("bench", subparsers)
