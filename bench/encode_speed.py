"""Encode speed at equal recitation quality: the same documents encoded with today's default and with candidate
settings, in one run, on one machine; each timed, and each library's recitations read back on the documents' own
questions (oracle retrieval, PolyPRAG mode "recite"). Prints documents/s, tokens/s and the ratio to the default.

    python -m bench.encode_speed --method prag --n 100 --no-default --candidate recipe=full --candidate recipe=default
    python -m bench.encode_speed --method prag --n 20 --compute-dtype float32     # a CPU without native bf16

Speed-ups are against the first settings run (the default, unless --no-default).

The documents: the gold passages of PopQA dev questions (rows --rows) whose evidence states the answer.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "encode_speed.jsonl"


def parse_settings(text: str) -> dict:
    """``key=value,key=value`` as encoder options (numbers parsed)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, value = part.split("=", 1)
        out[key] = None if value == "None" else _number(value)
    return out


def _number(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value  # a name, e.g. recipe=thorough


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "popqa"))
    p.add_argument("--rows", default="380:500")
    p.add_argument("--n", type=int, default=100, help="documents (questions whose evidence states the answer)")
    p.add_argument("--method", choices=("prag", "poly"), default="prag")
    p.add_argument("--candidate", action="append", default=[], help="encoder options, e.g. layers=10,epochs=8")
    p.add_argument("--no-default", action="store_true", help="skip the default (its figures from an earlier line)")
    p.add_argument("--compute-dtype", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log", default=str(OUT))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from polyprag import LoRAMixingLLM, ParametricRetriever, PolyPRAG, PolyPRAGEncoder, PRAGEncoder
    from polyprag.evaluation import accuracy, f1_score, load_slice
    from polyprag.evaluation.questions import evidence, states_answer
    from polyprag.evaluation.runner import FixedRetriever

    docs, questions = load_slice(args.data)
    a, b = map(int, args.rows.split(":"))
    by_id = {d.id: d for d in docs}
    qs, chosen = [], {}
    for q in questions[a:b]:
        gold = [g for g in evidence(q) if g in by_id]
        if states_answer(q) and gold and gold[0] not in chosen:
            qs.append(q)
            chosen[gold[0]] = q
        if len(qs) == args.n:
            break
    enc_docs = [by_id[g] for g in chosen]
    llm = LoRAMixingLLM.from_pretrained(compute_dtype=args.compute_dtype)
    tokens = sum(len(llm.tokenizer(d.full_text)["input_ids"]) for d in enc_docs)
    runs = ([("default", {})] if not args.no_default else []) + [(c, parse_settings(c)) for c in args.candidate]
    rows = []
    for name, options in runs:
        Encoder = PRAGEncoder if args.method == "prag" else PolyPRAGEncoder
        torch.manual_seed(0)
        t0 = time.perf_counter()
        library = Encoder(llm, augmenter="passage", progress=False, **options).fit(enc_docs)
        seconds = time.perf_counter() - t0
        per_q = {q.question: [g] for g, q in chosen.items()}
        rag = PolyPRAG(llm, ParametricRetriever(FixedRetriever(enc_docs, per_q), library), mode="recite")
        answers = rag.answer_batch([q.question for q in qs])
        acc = 100.0 * sum(accuracy(x.text, q.answers) for x, q in zip(answers, qs)) / len(qs)
        recital_f1 = 100.0 * sum(f1_score(x.recitals[0], [by_id[g].text]) for x, g in zip(answers, chosen)) / len(qs)
        row = {"method": args.method, "settings": name, "options": options, "documents": len(enc_docs),
               "tokens": tokens, "encode_s": round(seconds, 1), "docs_per_s": round(len(enc_docs) / seconds, 3),
               "tokens_per_s": round(tokens / seconds, 1), "recite_oracle_acc": round(acc, 1),
               "recital_f1": round(recital_f1, 1), "compute_dtype": str(llm.compute_dtype or llm.dtype),
               "threads": args.threads, "rows": args.rows, "date": time.strftime("%Y-%m-%d")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(args.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    if rows:
        base = rows[0]
        print(f"\n| settings | encode s | docs/s | speed-up vs {base['settings']} | recite oracle acc | recital F1 |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['settings']} | {r['encode_s']} | {r['docs_per_s']} | {base['encode_s'] / r['encode_s']:.2f}× | "
                  f"{r['recite_oracle_acc']} | {r['recital_f1']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
