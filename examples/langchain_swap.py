"""LangChain swap: a typical LCEL RAG chain, then the same chain with the parametric step swapped in.

The usual chain pastes retrieved passages into the prompt:
    {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm
The swap replaces that one object with PolyPRAGRunnable, which retrieves the same documents but applies
their knowledge as a mixture of LoRA adapters (no passage in the prompt). Everything after it is unchanged.

Run from the repository root: `.venv/bin/python examples/langchain_swap.py`. The first run encodes the bundled
invented-facts corpus into a small Poly-PRAG library and takes about 0:47 (CPU time of one thread on this 2-core
CPU, the time on an idle core; measured while higher-priority jobs held the CPU, its wall time was 766 s); later
runs load the library.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from langchain_polyprag import ChatPolyPRAG, PolyPRAGRetriever, PolyPRAGRunnable
from polyprag import AdapterLibrary, LibraryError, load_corpus, load_questions
from polyprag.demo.quickstart import demo_encoder
from polyprag.generation.models import cache_dir

DATA = Path(__file__).resolve().parents[1] / "core" / "polyprag" / "demo" / "data"
PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question with a short answer of a few words, using the context.\n\n{context}"),
    ("human", "{question}"),
])


def format_docs(docs) -> str:
    """Retrieved LangChain documents as one context block."""
    return "\n\n".join(f"{d.metadata.get('title', '')}: {d.page_content}" for d in docs)


def library_for(chat: ChatPolyPRAG, docs, path: Path, epochs: int) -> AdapterLibrary:
    """The Poly-PRAG library of the corpus: loaded when saved before on this model, else encoded and saved."""
    llm = chat.load()
    try:
        return AdapterLibrary.load(path, llm)
    except LibraryError:
        pass
    t0 = time.time()
    library = demo_encoder(llm, epochs=epochs).fit(docs)  # the library's default recipe
    library.save(path)
    print(f"encoded {len(docs)} documents into 8 shared adapters in {time.time() - t0:.0f}s -> {path}")
    return library


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--library", default=str(cache_dir() / "langchain-swap-library"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    docs = load_corpus(DATA / "invented_facts.jsonl")
    questions = [q.question for q in load_questions(DATA / "invented_questions.jsonl")][:4]
    chat = ChatPolyPRAG(max_tokens=24)  # the default model (SmolLM2-135M-Instruct), loaded on first use
    retriever = PolyPRAGRetriever(documents=docs, k=1)

    # 1. The usual LCEL RAG chain: retrieved passages go into the prompt.
    rag_step = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | chat
    chain = rag_step | StrOutputParser()
    in_context = chain.batch(questions)

    # 2. The same chain with the parametric step swapped in: one changed object.
    library = library_for(chat, docs, Path(args.library), args.epochs)
    rag_step = PolyPRAGRunnable(retriever=PolyPRAGRetriever(library=library, k=1), llm=chat, mode="parametric")
    chain = rag_step | StrOutputParser()
    parametric = chain.batch(questions)  # one forward pass, a different adapter mixture per question

    for q, a, b in zip(questions, in_context, parametric):
        print(f"\nQ: {q}\n  in-context RAG (passage in the prompt): {a}\n  parametric RAG (no passage)        : {b}")


if __name__ == "__main__":
    main()
