"""Library capacity: answers against documents held. Each point is one ``polyprag eval`` run whose library holds the
questions' documents plus others of the corpus (``--library N``) or the whole corpus (``--library corpus``); the
retriever always searches the whole corpus. PRAG keeps one adapter per document, so its answers cannot depend on
what else the library holds; Poly-PRAG shares a bank of m adapters, so they can.

    python -m bench.capacity run popqa-corpus-m256     # one point (its eval folder: bench/results/capacity/NAME)
    python -m bench.capacity table                     # every finished point as a markdown table
    python -m bench.capacity plan                      # the points and the `polyprag eval` command of each

Questions: PopQA place of birth rows 457-499 (the issue-25 slice: 43 questions, 26 whose evidence states the
answer) and HotpotQA dev's 60; recitation on the answerable ones with oracle documents, and the library mode that
won under BM25 (k = 3) with its wrong-documents control.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

OUT = Path(__file__).parent / "results" / "capacity"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
POPQA = {"prag": ["in_context", "prag_recite_oracle", "prag_recite_ensemble", "prag_recite_ensemble_wrong"],
         "poly": ["polyprag_recite_oracle", "polyprag_recite_oracle_shuffled", "polyprag_recite_ensemble",
                  "polyprag_recite_ensemble_wrong"]}
HOTPOT = {"prag": ["in_context", "prag_recite_oracle", "prag_combine_ensemble", "prag_combine_ensemble_wrong"],
          "poly": ["polyprag_recite_oracle", "polyprag_recite_oracle_shuffled", "polyprag_combine_ensemble",
                   "polyprag_combine_ensemble_wrong"]}
# Poly-PRAG at corpus scale: LoRA on the last 12 layers, 8 epochs at a constant 6e-3 (the 20-passage probe in
# bench/results/encode_speed_sweep.jsonl: recital F1 65.4 against 66.6 for every layer / 15 epochs, in about half
# the time; every layer would cost about 2.4 h for 617 passages on one thread here)
POLY_FAST = ["--layers", "12", "--epochs", "8", "--lr", "0.006"]
_POP = dict(data="popqa", start=457, n=43)
_HOT = dict(data="hotpotqa", start=0, n=None)
# name -> (slice, library, Poly-PRAG bank size m (None: recipes.bank_size), rank (None: the recipe's), methods)
POINTS = {
    "popqa-prag-corpus": (_POP, "corpus", None, None, POPQA["prag"]),
    "popqa-poly-questions": (_POP, "questions", None, None, POPQA["poly"]),
    "popqa-poly-300": (_POP, "200", None, None, POPQA["poly"]),
    "popqa-poly-corpus": (_POP, "corpus", None, None, POPQA["poly"]),
    "popqa-poly-corpus-m64": (_POP, "corpus", 64, None, POPQA["poly"]),
    "hotpotqa-prag-corpus": (_HOT, "corpus", None, None, HOTPOT["prag"]),
    "hotpotqa-poly-corpus": (_HOT, "corpus", None, None, HOTPOT["poly"]),
}


# earlier runs on the same questions, shown beside the points: the issue-25 evaluation (the `full` recipe, then the
# default; its libraries held the questions' BM25 top-3 and gold passages). Its Poly-PRAG bank (m = 32) was trained
# on the 104 documents of the k = 5 run and reused, which that run's facts do not record
EARLIER = {"popqa-questions (full recipe)": Path(__file__).parent / "results" / "eval" / "issue25" / "popqa-pob-k3",
           "hotpotqa-questions (full recipe)": Path(__file__).parent / "results" / "eval" / "issue25" / "hotpotqa-k3"}
EARLIER_POLY = {"popqa-questions (full recipe)": (32, 104)}  # (m, documents held)


def command(name: str) -> list[str]:
    """The ``polyprag eval`` arguments of a point."""
    where, library, m, rank, methods = POINTS[name]
    args = ["--data", str(DATA / where["data"]), "--start", str(where["start"]), "--k", "3", "--library", library,
            "--methods", ",".join(methods), "--latency-samples", "0", "--threads", "1",
            "--libraries", "runs/libcache", "--out", str(OUT / name)]
    if where["n"]:
        args += ["--n", str(where["n"])]
    if m:
        args += ["--num-adapters", str(m)]
    if rank:
        args += ["--rank", str(rank)]
    if methods is POPQA["poly"] or methods is HOTPOT["poly"]:
        args += POLY_FAST
    return args


def rows() -> list[dict]:
    """One row per (point, library method) that has finished."""
    out = []
    folders = {**EARLIER, **{name: OUT / name for name in POINTS}}
    for name, folder in folders.items():
        path = folder / "results.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text(encoding="utf-8"))
        facts, train = r["facts"], r["facts"]["training"]
        by = {x["method"]: x for x in r["results"]}
        for method in ("prag", "polyprag"):
            oracle = by.get(f"{method}_recite_oracle")
            found = [by[f"{method}_{mode}"] for mode in ("recite_ensemble", "combine_ensemble") if f"{method}_{mode}" in by]
            best = max(found, key=lambda x: x["accuracy"]) if found else None  # the better ensemble mode run
            if oracle is None and best is None:
                continue
            wrong = by.get(f"{best['method']}_wrong") if best else None
            anyone = oracle or best
            m = facts.get("adapters", {}).get("prag" if method == "prag" else "poly",
                                              facts["documents"] if method == "prag" else None)
            held = facts["documents"]
            if method == "polyprag" and name in EARLIER_POLY:
                m, held = EARLIER_POLY[name]
            out.append({"point": name, "data": Path(r["config"]["data"]).name, "documents": held,
                        "corpus": facts["corpus"], "method": "PRAG" if method == "prag" else "Poly-PRAG",
                        "m": m, "rank": train["rank"],
                        "layers": train.get("prag_layers", train.get("layers")) if method == "prag"
                        else train.get("layers"), "epochs": train["prag_epochs" if method == "prag" else "epochs"],
                        "oracle_questions": facts.get("oracle_questions"),
                        "recite_oracle": oracle and oracle["accuracy"],
                        "shuffled": by.get("polyprag_recite_oracle_shuffled", {}).get("accuracy")
                        if method == "polyprag" else None,
                        "bm25_mode": best and best["method"], "bm25": best and best["accuracy"],
                        "bm25_wrong": wrong and wrong["accuracy"],
                        "in_context": by.get("in_context", {}).get("accuracy"),
                        "bytes_per_doc": anyone["storage_bytes_per_doc"],
                        "encode_s_per_doc": anyone["encode_s_per_doc"]})
    return out


def table() -> str:
    head = ("point", "documents held", "method", "m", "rank", "layers / epochs", "recite oracle", "shuffled",
            "BM25 best library mode", "its _wrong", "in_context", "bytes / doc", "encode s / doc")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    f = lambda v, spec=".1f": "–" if v is None else format(v, spec)  # noqa: E731
    for r in rows():
        out.append("| " + " | ".join((
            r["point"], f"{r['documents']} of {r['corpus']}", r["method"], str(r["m"] or "–"), str(r["rank"]),
            f"{r['layers'] or 'all'} / {r['epochs']}", f(r["recite_oracle"]), f(r["shuffled"]),
            f"{r['bm25_mode'] or '–'} {f(r['bm25'])}", f(r["bm25_wrong"]), f(r["in_context"]),
            f(r["bytes_per_doc"], ",.0f"), f(r["encode_s_per_doc"], ".2f"))) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("run", "table", "plan"))
    p.add_argument("names", nargs="*", help="points to run (default: all)")
    args = p.parse_args(argv)
    if args.action == "table":
        print(table())
        return 0
    names = args.names or list(POINTS)
    unknown = [n for n in names if n not in POINTS]
    if unknown:
        p.error(f"unknown point(s) {unknown}; choose from {list(POINTS)}")
    for name in names:
        if args.action == "plan":
            print(f"{name}: polyprag eval " + " ".join(shlex.quote(a) for a in command(name)))
            continue
        from polyprag.cli import main as cli

        code = cli(["eval", *command(name)])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
