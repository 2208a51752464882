"""LAG demo: a small library of per-document LoRA adapters, questions routed to the right one with no retriever.

Each invented-fact document gets its own LoRA (PRAG's per-document encoder); LAG then decides per
token and per layer which adapter to apply (Arrow filter + SpectR), from the adapters' weights alone.

    python examples/lag_demo.py

Takes about 0:17 with the default model (CPU time of one thread on this 2-core CPU, the
time on an idle core; measured while higher-priority jobs held the CPU, its wall time was 177 s).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from polyprag import LoRAMixingLLM, PolyPRAG, PRAGEncoder, load_corpus, load_questions
from polyprag.methods.lag import LAGLibrary, LAGRouter

DATA = Path(__file__).resolve().parents[1] / "core" / "polyprag" / "demo" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--documents", type=int, default=4, help="how many invented-fact documents (adapters)")
    p.add_argument("--k", type=int, default=3, help="Arrow filter: adapters kept per token before SpectR")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    docs = load_corpus(DATA / "invented_facts.jsonl")[: args.documents]
    questions = [q for q in load_questions(DATA / "invented_questions.jsonl") if q.gold[0] in {d.id for d in docs}]
    llm = LoRAMixingLLM.from_pretrained()
    print(f"Encoding {len(docs)} documents, one LoRA adapter each ...")
    adapters = PRAGEncoder(llm, rank=6, alpha=12, lr=1e-3, epochs=4).fit(docs)  # the LAG paper's rank 6
    library = LAGLibrary.from_adapter_library(adapters)
    print(f"LAG library: {len(library)} adapters, {library.storage_bytes()['factors'] / 1e6:.1f} MB of factors")

    router = LAGRouter(library, k=args.k)
    closed = PolyPRAG(llm, None, mode="closed_book")
    lag = PolyPRAG(llm, None, mode="lag", lag=router)
    for q in questions:
        with router.counting() as wins:  # every (token, layer) decision while answering
            answer = lag.answer(q.question).text
        top, n = wins.most_common(1)[0]
        share = n / sum(wins.values())
        print(f"\nQ: {q.question}   (gold document: {q.gold[0]}, expected: {q.answers[0]})")
        print(f"   closed book: {closed.answer(q.question).text}")
        print(f"   LAG:         {answer}")
        print(f"   adapter winning most tokens: {top} ({share:.0%} of decisions)"
              f"{'  <- right document' if top == q.gold[0] else ''}")


if __name__ == "__main__":
    main()
