"""``python -m bench.bench_retrieval``: recall@3 of BM25, dense and hybrid retrieval on the shared dev slices.

Each slice (../shared/data/{popqa,hotpotqa,2wikimultihopqa} beside the clone, or ``--data``) is retrieved over
its whole corpus; a clone without them measures the 14 invented facts that ship with it (the package's 8 and
tests/data's 6 added ones), a check that the benchmark runs rather than a recall worth quoting.
recall@3 of a question = share of its gold passage ids among the top 3 retrieved ids, averaged over
the questions that have gold ids (the eval runner's ``recall_at_k``). Dense is the bundled
all-MiniLM-L6-v2 (``polyprag[dense]``); hybrid fuses BM25 and dense by reciprocal rank (c = 60,
top 100 of each). The corpus is embedded once per slice and shared by dense and hybrid.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from polyprag import (BM25Retriever, DenseRetriever, Document, HybridRetriever, Question, SentenceEmbedder,
                      load_corpus, load_questions)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BUNDLED = ((ROOT / "core" / "polyprag" / "demo" / "data", "invented_facts.jsonl", "invented_questions.jsonl"),
           (ROOT / "tests" / "data", "added_facts.jsonl", "added_questions.jsonl"))
SLICES = ("popqa", "hotpotqa", "2wikimultihopqa")
OUT = Path(__file__).resolve().parent / "results" / "retrieval_recall.json"


def recall(retrieved: list[str], gold: tuple[str, ...]) -> float:
    """Share of the gold ids among the retrieved ids."""
    return len(set(retrieved) & set(gold)) / len(set(gold))


def slices(data: Path) -> dict[str, tuple[list[Document], list[Question]]]:
    """The dev slices found in ``data``, else the invented facts that ship with the clone."""
    found = {name: (load_corpus(data / name / "corpus.jsonl"), load_questions(data / name / "questions.jsonl"))
             for name in SLICES if (data / name / "corpus.jsonl").is_file()}
    if found:
        return found
    print(f"no dev slices in {data}: measuring the invented facts shipped with the clone", flush=True)
    docs = [d for folder, corpus, _ in BUNDLED for d in load_corpus(folder / corpus)]
    return {"invented": (docs, [q for folder, _, qs in BUNDLED for q in load_questions(folder / qs)])}


def measure(docs: list[Document], questions: list[Question], embed: SentenceEmbedder, k: int,
            n: int | None) -> dict:
    """recall@k of the three retrievers on one slice, with the seconds each took."""
    questions = [q for q in questions if q.gold][:n]
    t0 = time.perf_counter()
    bm25 = BM25Retriever(docs, k=k)
    t1 = time.perf_counter()
    dense = DenseRetriever(docs, k=k, embed=embed)
    t2 = time.perf_counter()
    retrievers = {"bm25": bm25, "dense": dense, "hybrid": HybridRetriever([bm25, dense], k=k)}
    row: dict = {"documents": len(docs), "questions": len(questions),
                 "index_s": {"bm25": round(t1 - t0, 2), "dense": round(t2 - t1, 2)}, "query_ms": {}}
    for name, retriever in retrievers.items():
        t = time.perf_counter()
        scores = [recall([s.document.id for s in retriever.retrieve(q.question)], q.gold) for q in questions]
        row["query_ms"][name] = round(1000 * (time.perf_counter() - t) / len(questions), 2)
        row[name] = round(100 * sum(scores) / len(scores), 1)
        row[f"{name}_first_100"] = round(100 * sum(scores[:100]) / len(scores[:100]), 1)
    return row


def table(results: dict) -> str:
    """The results as a Markdown table (recall in %, all questions of each slice)."""
    lines = ["| slice | questions | passages | BM25 | dense | hybrid |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['questions']} | {r['documents']} | {r['bm25']} | {r['dense']} | {r['hybrid']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA), help="folder holding the slices")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--n", type=int, default=None, help="first n questions of each slice (default: all)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the embedding model")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    embed = SentenceEmbedder()
    results = {name: measure(docs, questions, embed, args.k, args.n) for name, (docs, questions)
               in slices(Path(args.data)).items()}
    report = {"k": args.k, "embedding_model": embed.name, "rrf": {"c": 60, "depth": 100},
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")},
              "slices": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"recall@{args.k} (%), top {args.k} over each slice's whole corpus:\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
