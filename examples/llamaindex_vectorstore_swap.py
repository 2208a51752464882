"""LlamaIndex vector-store swap: a VectorStoreIndex query engine (passages pasted into the prompt), then
PolyPRAGQueryEngine over the same index, so the same retrieved nodes answer as parameters instead.

    before: index.as_query_engine(llm=llm, similarity_top_k=1)
    after : PolyPRAGQueryEngine.from_index(index, library, llm=llm, similarity_top_k=1)

The index embeds with real sentence embeddings (all-MiniLM-L6-v2, bundled offline by `polyprag[dense]`,
through ``PolyPRAGEmbedding``); the model is the bundled SmolLM2-135M-Instruct. No hub, no OpenAI key,
LlamaIndex ``Settings`` untouched. The library is encoded from the same LlamaIndex Documents; each retrieved
node is matched to its adapters through the document it was parsed from (``ref_doc_id``).

Run from the repository root: `.venv/bin/python examples/llamaindex_vectorstore_swap.py`. It encodes five
documents first and takes about 0:48 (CPU time of one thread on this 2-core CPU, the
time on an idle core; measured while higher-priority jobs held the CPU, its wall time was 635 s).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from llama_index.core import Document, VectorStoreIndex

from llamaindex_polyprag import PolyPRAGEmbedding, PolyPRAGLLM, PolyPRAGQueryEngine, to_documents
from polyprag import PolyPRAGEncoder, load_corpus, load_questions

DATA = Path(__file__).resolve().parents[1] / "core" / "polyprag" / "demo" / "data"


def load_facts(n: int) -> tuple[list[Document], list[str]]:
    """The first n invented facts as LlamaIndex Documents, and a question about each."""
    facts = load_corpus(DATA / "invented_facts.jsonl")[:n]
    docs = [Document(text=f.text, id_=f.id, metadata={"title": f.title}) for f in facts]
    kept = {f.id for f in facts}
    return docs, [q.question for q in load_questions(DATA / "invented_questions.jsonl") if q.gold[0] in kept]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--documents", type=int, default=5, help="how many invented facts to index and encode")
    documents, questions = load_facts(p.parse_args(argv).documents)
    torch.manual_seed(0)

    # The user's pipeline: a vector index with real embeddings, and a query engine over it.
    index = VectorStoreIndex.from_documents(documents, embed_model=PolyPRAGEmbedding())  # all-MiniLM-L6-v2, offline
    llm = PolyPRAGLLM(max_new_tokens=24)  # the default model (SmolLM2-135M-Instruct), loaded on first use
    rag = index.as_query_engine(llm=llm, similarity_top_k=1)

    # The swap: encode the same documents once, then change one object; the index and its retriever stay.
    t0 = time.time()
    library = PolyPRAGEncoder(llm.mixing_llm).fit(to_documents(documents))
    print(f"encoded {len(library)} documents in {time.time() - t0:.0f}s")
    parametric = PolyPRAGQueryEngine.from_index(index, library, llm=llm, similarity_top_k=1)  # mode="parametric"

    for q in questions:
        before, after = rag.query(q), parametric.query(q)
        print(f"\nQ: {q}   (retrieved: {after.source_nodes[0].node.metadata['title']})")
        print(f"  VectorStoreIndex query engine, passage in the prompt: {str(before.response).strip()}")
        print(f"  PolyPRAGQueryEngine, no passage                    : {after.response}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
