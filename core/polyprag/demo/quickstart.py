"""The quickstart demo: encode invented facts into a Poly-PRAG library, then ask with no passages in the prompt.

The bundled corpus (polyprag/demo/data/invented_facts.jsonl) holds facts no model can know; each
question is answered closed-book (the bare model), in parametric mode (the retrieved document's adapter
applied to the question) and in recite mode (the adapter recites what it learned, the model reads that),
side by side; no passage is in any prompt.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).parent / "data"


def contains_answer(text: str, answers) -> bool:
    """Whether any answer alias appears in the generated text (case-insensitive)."""
    return any(a.lower() in text.lower() for a in answers)


MODES_SHOWN = ("closed_book", "parametric", "recite")


def demo_encoder(llm, adapters: int | None = None, epochs: int | None = None, recipe: str = "default"):
    """The library's own Poly-PRAG encoder with its default recipe (nothing hand-picked for the demo)."""
    from polyprag import PolyPRAGEncoder

    return PolyPRAGEncoder(llm, num_adapters=adapters, epochs=epochs, recipe=recipe, seed=0)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns 0 when a parametric mode answered more questions than closed-book."""
    from polyprag import BM25Retriever, LoRAMixingLLM, ParametricRetriever, PolyPRAG, load_corpus, load_questions
    from polyprag.generation.models import cache_dir

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
    from polyprag.library.storage import check_target

    check_target(args.library)  # refused now, not after the training
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
    asked = [q.question for q in questions]
    runs = {mode: PolyPRAG(llm, retriever, mode=mode).answer_batch(asked) for mode in MODES_SHOWN}
    hits = {mode: 0 for mode in MODES_SHOWN}
    for i, q in enumerate(questions):
        print(f"\nQ: {q.question}   (expected: {q.answers[0]})")
        for mode in MODES_SHOWN:
            a = runs[mode][i]
            hits[mode] += contains_answer(a.text, q.answers)
            where = f"   [adapter of {a.documents[0].document.id}]" if a.documents else ""
            print(f"  {mode:<11}: {a.text}{where}")
        print(f"  recited    : {runs['recite'][i].recitals[0][:120]!r}")
    n = len(questions)
    print(f"\ncorrect: closed-book {hits['closed_book']}/{n}, parametric (the mixture applied to the question) "
          f"{hits['parametric']}/{n}, recite (the adapter recites, the model reads it) {hits['recite']}/{n}; "
          "no passage is in any prompt")
    return 0 if max(hits["parametric"], hits["recite"]) > hits["closed_book"] else 1

if __name__ == "__main__":
    raise SystemExit(main())
