"""``python -m bench.bench_bm25``: BM25 query latency, rank-bm25 vs bm25s, at 10k and 100k documents.

Corpora this large do not ship here, so they are synthesised from the shared QA passages
(../shared/data/*/corpus.jsonl beside the clone, or ``--data``): each document is a real title plus
2–4 sentences drawn from random passages, so the vocabulary and length statistics are those of
Wikipedia text. Queries are the shared questions. A clone without them draws its passages and
questions from a Zipf vocabulary instead (word frequency ∝ 1/rank, as in natural text). Both backends run in this one process, on the same corpus and
queries, so the ratio (rank-bm25 seconds / bm25s seconds per query) is measured in one run; the
top-k ids of both are compared on every query as well (they must agree: same Okapi scores).
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import re
import statistics
import time
from pathlib import Path

from polyprag import BM25Retriever, Document, load_corpus, load_questions

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def shared_passages(data: Path = DATA) -> tuple[list[Document], list[str]]:
    """Every passage and every question text in the shared QA folders (none when there are none)."""
    docs, questions = [], []
    folders = sorted(p for p in data.iterdir() if (p / "corpus.jsonl").is_file()) if data.is_dir() else []
    for folder in folders:
        docs += load_corpus(folder / "corpus.jsonl")
        if (folder / "questions.jsonl").is_file():
            questions += [q.question for q in load_questions(folder / "questions.jsonl")]
    return docs, questions


def zipf_passages(n: int = 2000, vocabulary: int = 30000, seed: int = 0) -> tuple[list[Document], list[str]]:
    """n passages of 3–5 sentences of 8–20 words from a Zipf vocabulary, and one 6-word question per passage
    drawn from its own words (what a clone without the shared QA folders measures on)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocabulary)]
    cum = list(itertools.accumulate(1 / (rank + 1) ** 1.07 for rank in range(vocabulary)))  # Zipf, s ≈ 1.07

    def sentence() -> str:
        return " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(8, 20))) + "."

    docs = [Document(id=f"z{i}", title=" ".join(rng.choices(words, cum_weights=cum, k=2)),
                     text=" ".join(sentence() for _ in range(rng.randint(3, 5)))) for i in range(n)]
    questions = [" ".join(rng.sample(d.text.rstrip(".").replace(".", "").split(), 6)) for d in docs]
    return docs, questions


def synthetic_corpus(passages: list[Document], n: int, seed: int = 0) -> list[Document]:
    """n documents recombined from the passages: a real title and 2–4 sentences from random passages."""
    rng = random.Random(seed)
    sentences = [s for d in passages for s in _SENTENCE.split(d.text) if len(s.split()) >= 4]
    titles = [d.title for d in passages]
    return [Document(id=f"s{i}", title=rng.choice(titles),
                     text=" ".join(rng.choice(sentences) for _ in range(rng.randint(2, 4)))) for i in range(n)]


def time_queries(retriever: BM25Retriever, queries: list[str], k: int) -> tuple[list[float], list[list[str]]]:
    """Seconds per query (one warm-up query first) and the top-k ids of each query."""
    retriever.retrieve(queries[0], k)
    times, tops = [], []
    for q in queries:
        t = time.perf_counter()
        hits = retriever.retrieve(q, k)
        times.append(time.perf_counter() - t)
        tops.append([h.document.id for h in hits])
    return times, tops


def measure(n: int, passages: list[Document], queries: list[str], k: int) -> dict:
    """Index time and median query latency of both backends on one n-document corpus."""
    docs = synthetic_corpus(passages, n)
    out: dict = {"documents": n, "queries": len(queries), "k": k}
    tops = {}
    for backend in BM25Retriever.BACKENDS:
        t = time.perf_counter()
        retriever = BM25Retriever(docs, k=k, backend=backend)
        out[f"{backend}_index_s"] = time.perf_counter() - t
        times, tops[backend] = time_queries(retriever, queries, k)
        out[f"{backend}_query_s_median"] = statistics.median(times)
        out[f"{backend}_query_s_mean"] = statistics.fmean(times)
        del retriever
    out["same_top_k"] = sum(a == b for a, b in zip(tops["rank_bm25"], tops["bm25s"]))
    out["ratio"] = out["rank_bm25_query_s_median"] / out["bm25s_query_s_median"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_bm25", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated corpus sizes")
    ap.add_argument("--queries", type=int, default=100, help="questions timed per size")
    ap.add_argument("--k", type=int, default=3, help="documents retrieved per query")
    ap.add_argument("--data", default=str(DATA), help="folder of QA sets with corpus.jsonl/questions.jsonl")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bm25.json"))
    args = ap.parse_args(argv)
    passages, questions = shared_passages(Path(args.data))
    source = "shared"
    if not passages:
        print(f"no QA folders with corpus.jsonl in {args.data}: passages and questions from a Zipf vocabulary "
              "(pass --data for real text)", flush=True)
        passages, questions = zipf_passages()
        source = "zipf"
    queries = random.Random(1).sample(questions, min(args.queries, len(questions)))
    print(f"{len(passages)} {source} passages recombined; {len(queries)} questions; k={args.k}; "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}", flush=True)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        r = measure(n, passages, queries, args.k)
        rows.append(r)
        print(f"{n:>7,} docs: rank_bm25 {r['rank_bm25_query_s_median'] * 1e3:8.2f} ms/query, "
              f"bm25s {r['bm25s_query_s_median'] * 1e3:7.3f} ms/query, ratio {r['ratio']:6.1f}x; "
              f"index {r['rank_bm25_index_s']:.1f} s vs {r['bm25s_index_s']:.1f} s; "
              f"same top-{args.k} on {r['same_top_k']}/{r['queries']} queries", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"processor": platform.processor(), "machine": platform.machine(),
                                           "python": platform.python_version(),
                                           "date": time.strftime("%Y-%m-%d")},
                               "passages": source, "sizes": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
