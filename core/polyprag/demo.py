"""The quickstart demo: encode invented facts into a Poly-PRAG library, then ask with no passages in the prompt.

The bundled corpus (polyprag/data/invented_facts.jsonl) holds facts no model can know; each
question is answered closed-book (the bare model) and in parametric mode (the retrieved
documents' adapter mixture, no passage in the prompt), side by side.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).parent / "data"


def contains_answer(text: str, answers) -> bool:
    """Whether any answer alias appears in the generated text (case-insensitive)."""
    return any(a.lower() in text.lower() for a in answers)


def demo_encoder(llm, adapters: int | None = None, epochs: int | None = None, recipe: str = "default"):
    """The library's own Poly-PRAG encoder with its default recipe (nothing hand-picked for the demo)."""
    from polyprag import PolyPRAGEncoder

    return PolyPRAGEncoder(llm, num_adapters=adapters, epochs=epochs, recipe=recipe, seed=0)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns 0 when parametric mode answered more questions than closed-book."""
    from polyprag import BM25Retriever, LoRAMixingLLM, ParametricRetriever, PolyPRAG, load_corpus, load_questions
    from polyprag.models import cache_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="HF folder or hub id (default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--adapters", type=int, default=None, help="LoRA adapters in the shared bank (m; default: the recipe's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--recipe", default="default", help="training recipe: default or prag-paper")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--library", default=str(cache_dir() / "demo-library"), help="where the library is saved")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    llm = LoRAMixingLLM.from_pretrained(args.model, compute_dtype="auto")  # bf16 where the CPU/GPU has it
    print(f"model {llm.name} on {llm.device} loaded in {time.time() - t0:.1f}s")
    docs = load_corpus(DATA / "invented_facts.jsonl")
    questions = load_questions(DATA / "invented_questions.jsonl")

    t0 = time.time()
    library = demo_encoder(llm, args.adapters, args.epochs, args.recipe).fit(docs)
    library.save(args.library)
    print(f"encoded {len(docs)} documents into {library.bank.m} shared adapters in {time.time() - t0:.0f}s "
          f"-> {args.library} ({library.storage_bytes()['per_document']} bytes of routing per document)")

    retriever = ParametricRetriever(BM25Retriever(docs, k=1), library)
    closed = PolyPRAG(llm, retriever, mode="closed_book").answer_batch([q.question for q in questions])
    param = PolyPRAG(llm, retriever, mode="parametric").answer_batch([q.question for q in questions])
    hits = {"closed_book": 0, "parametric": 0}
    for q, c, a in zip(questions, closed, param):
        hits["closed_book"] += contains_answer(c.text, q.answers)
        hits["parametric"] += contains_answer(a.text, q.answers)
        print(f"\nQ: {q.question}   (expected: {q.answers[0]})")
        print(f"  closed-book: {c.text}")
        print(f"  parametric : {a.text}   [routing from {a.documents[0].document.id}]")
    n = len(questions)
    print(f"\ncorrect: closed-book {hits['closed_book']}/{n}, parametric (no passage in the prompt) "
          f"{hits['parametric']}/{n}")
    return 0 if hits["parametric"] > hits["closed_book"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
