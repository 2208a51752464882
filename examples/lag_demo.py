"""LAG demo: a small library of per-document LoRA adapters, questions routed to the right one with no retriever.

Each invented-fact document gets its own LoRA (PRAG's per-document encoder, the library's default recipe). LAG
then reads only the adapters' weights: the paper's rule (Fleshman & Van Durme 2025: per token and per layer, the
Arrow filter then SpectR) picks an adapter at every (token, layer) and spreads the question over all of them;
the variant that carries knowledge counts those same decisions over the question's tokens, keeps the adapter
that won most, and applies it whole for the answer (``LAGSelector``, "held").

    python examples/lag_demo.py

Takes about 0:36 with the default model (wall time, one thread on this 2-core CPU, the model converted already).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from polyprag import LoRAMixingLLM, PolyPRAG, PRAGEncoder, load_corpus, load_questions
from polyprag.methods.lag import LAGLibrary, LAGRouter, LAGSelector

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
    adapters = PRAGEncoder(llm, progress=False).fit(docs)  # the default recipe: rank 2, the passage, 8 epochs
    library = LAGLibrary.from_adapter_library(adapters)
    print(f"LAG library: {len(library)} adapters, {library.storage_bytes()['factors'] / 1e6:.1f} MB of factors")

    router = LAGRouter(library, k=args.k)                    # the paper's rule: arrow_spectr, per token
    selector = LAGSelector(library, top=1, score="votes", k=args.k)  # its decisions counted, the winner held
    closed = PolyPRAG(llm, None, mode="closed_book")
    paper = PolyPRAG(llm, None, mode="lag", lag=router)
    asked = [q.question for q in questions]
    held = llm.generate([llm.question_prompt(q) for q in asked], selector.mixtures(asked))
    right = {"held": 0, "arrow_spectr": 0}
    for q, held_answer in zip(questions, held):
        with router.counting() as wins:  # every (token, layer) decision of the paper's rule while answering
            per_token = paper.answer(q.question).text
        top, n = wins.most_common(1)[0]
        chosen = library.names[int(selector.choose([q.question])[0, 0])]
        ok = {name: any(a.lower() in text.lower() for a in q.answers)
              for name, text in (("held", held_answer), ("arrow_spectr", per_token))}
        right = {k: right[k] + ok[k] for k in right}
        print(f"\nQ: {q.question}   (gold document: {q.gold[0]}, expected: {q.answers[0]})")
        print(f"   closed book:              {closed.answer(q.question).text}")
        print(f"   LAG held (votes, top 1):  {held_answer}{'  ✓' if ok['held'] else ''}   "
              f"[adapter {chosen}{' = gold' if chosen == q.gold[0] else ''}]")
        print(f"   LAG paper (arrow_spectr): {per_token}{'  ✓' if ok['arrow_spectr'] else ''}   "
              f"[most decisions: {top}, {n / sum(wins.values()):.0%}; the rest spread over the others]")
    print(f"\nRight answers: LAG held {right['held']}/{len(questions)}, "
          f"the paper's per-token rule {right['arrow_spectr']}/{len(questions)}")


if __name__ == "__main__":
    main()
