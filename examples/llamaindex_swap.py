"""LlamaIndex swap: a typical RetrieverQueryEngine (passages pasted into the prompt), then the same
questions with PolyPRAGQueryEngine swapped in (knowledge applied as an adapter mixture).

Everything runs offline on the bundled SmolLM2-135M-Instruct: no OpenAI key, LlamaIndex ``Settings``
untouched. Run from the repository root: `.venv/bin/python examples/llamaindex_swap.py`; it encodes the
bundled invented facts and takes about 0:52 (CPU time of one thread on this 2-core CPU, the
time on an idle core; measured while higher-priority jobs held the CPU, its wall time was 680 s).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from llama_index.core import Document, get_response_synthesizer
from llama_index.core.query_engine import RetrieverQueryEngine

from llamaindex_polyprag import PolyPRAGLLM, PolyPRAGQueryEngine, PolyPRAGRetriever
from polyprag import load_corpus
from polyprag.demo.quickstart import demo_encoder

DATA = Path(__file__).resolve().parents[1] / "core" / "polyprag" / "demo" / "data"


def read_documents(path: Path) -> list[Document]:
    """The corpus as LlamaIndex Documents, the way a LlamaIndex user already holds it."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Document(text=r["text"], id_=r["id"], metadata={"title": r["title"]}) for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="HF folder or hub id (default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--recipe", default="default", help="training recipe: default or prag-paper")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    documents = read_documents(DATA / "invented_facts.jsonl")
    questions = [json.loads(line)["question"] for line in
                 (DATA / "invented_questions.jsonl").read_text(encoding="utf-8").splitlines()[:4]]
    llm = PolyPRAGLLM(model=args.model, max_new_tokens=24)  # loads on first use

    # 1. The usual LlamaIndex pipeline: retriever + a synthesizer that pastes the passages into the prompt.
    retriever = PolyPRAGRetriever.from_documents(documents, similarity_top_k=1)  # BM25; any LlamaIndex retriever works here
    rag = RetrieverQueryEngine(retriever=retriever,
                               response_synthesizer=get_response_synthesizer(llm=llm, response_mode="compact"))

    # 2. The swap: encode the same documents into a Poly-PRAG library once, then change one object.
    t0 = time.time()
    encoder = demo_encoder(llm.mixing_llm, epochs=args.epochs, recipe=args.recipe)  # the library's default recipe
    encoder.train.progress = False
    library = encoder.fit(load_corpus(DATA / "invented_facts.jsonl"))
    print(f"encoded {len(library)} documents into {library.bank.m} shared adapters in {time.time() - t0:.0f}s")
    parametric = PolyPRAGQueryEngine.from_documents(documents, library, similarity_top_k=1, llm=llm)  # mode="parametric"

    for q in questions:
        before, after = rag.query(q), parametric.query(q)
        print(f"\nQ: {q}")
        print(f"  RetrieverQueryEngine (passage in prompt): {before.response.strip()}")
        print(f"  PolyPRAGQueryEngine  (adapter mixture)  : {after.response}")
        print(f"  sources: {[n.node.node_id for n in before.source_nodes]} / "
              f"{[(n.node.node_id, round(n.score, 2)) for n in after.source_nodes]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
