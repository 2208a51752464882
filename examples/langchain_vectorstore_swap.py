"""LangChain vector-store swap: the usual LCEL RAG chain over an in-memory vector store, then the same chain with
one object changed, so the same retriever's documents answer as parameters instead of as pasted passages.

    before: {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | chat | parser
    after : PolyPRAGRunnable(retriever=retriever, library=library, llm=chat) | parser

The vector store embeds with real sentence embeddings (all-MiniLM-L6-v2, bundled offline by
`polyprag[dense]`); the model is the bundled SmolLM2-135M-Instruct. No hub, no API key. The documents
come as a loader gives them (no ids, a title in the metadata); the library is encoded from those same
documents, and each retrieved document is matched to its adapters by content.

Run from the repository root: `.venv/bin/python examples/langchain_vectorstore_swap.py`. It encodes five
documents first and takes about 0:44 (CPU time of one thread on this 2-core CPU, the
time on an idle core; measured while higher-priority jobs held the CPU, its wall time was 665 s);
`--library DIR` saves the library there and reuses it next time.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_polyprag import ChatPolyPRAG, PolyPRAGEmbeddings, PolyPRAGRunnable, to_polyprag_documents
from polyprag import AdapterLibrary, LibraryError, PolyPRAGEncoder, load_corpus, load_questions

DATA = Path(__file__).resolve().parents[1] / "core" / "polyprag" / "demo" / "data"
PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question with a short answer of a few words, using the context.\n\n{context}"),
    ("human", "{question}"),
])


def load_facts(n: int) -> tuple[list[Document], list[str]]:
    """The first n invented facts as LangChain Documents (as a loader gives them), and a question about each."""
    facts = load_corpus(DATA / "invented_facts.jsonl")[:n]
    docs = [Document(page_content=f.text, metadata={"title": f.title, "source": "invented_facts.jsonl"}) for f in facts]
    kept = {f.id for f in facts}
    return docs, [q.question for q in load_questions(DATA / "invented_questions.jsonl") if q.gold[0] in kept]


def format_docs(docs: list[Document]) -> str:
    """Retrieved documents as one context block."""
    return "\n\n".join(f"{d.metadata.get('title', '')}: {d.page_content}" for d in docs)


def library_for(chat: ChatPolyPRAG, docs: list[Document], path: str | None) -> AdapterLibrary:
    """The adapter library of the documents: loaded from ``path`` when saved there before, else encoded."""
    llm = chat.load()
    if path and Path(path).is_dir():
        try:
            return AdapterLibrary.load(path, llm)
        except LibraryError as e:
            print(f"re-encoding: {e}")
    t0 = time.time()
    library = PolyPRAGEncoder(llm).fit(to_polyprag_documents(docs))  # ids: each document's content hash
    print(f"encoded {len(library)} documents in {time.time() - t0:.0f}s")
    if path:
        library.save(path)
    return library


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--documents", type=int, default=5, help="how many invented facts to index and encode")
    p.add_argument("--library", default=None, help="folder to save the encoded library to and reuse it from")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    docs, questions = load_facts(args.documents)

    # The user's pipeline: a vector store with real embeddings, its retriever, a chat model.
    store = InMemoryVectorStore(PolyPRAGEmbeddings())  # all-MiniLM-L6-v2, offline
    store.add_documents(docs)
    retriever = store.as_retriever(search_kwargs={"k": 1})
    chat = ChatPolyPRAG(max_tokens=24)  # the default model (SmolLM2-135M-Instruct), loaded on first use

    # 1. The usual LCEL RAG chain: the retrieved passage goes into the prompt.
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | chat | StrOutputParser()
    in_context = chain.batch(questions)

    # 2. The same retriever and model, one object changed: the passage's knowledge is applied as adapters.
    library = library_for(chat, docs, args.library)
    chain = PolyPRAGRunnable(retriever=retriever, library=library, llm=chat) | StrOutputParser()
    parametric = chain.batch(questions)  # one forward pass, each question with its own adapter mixture
    sources = [[d.metadata["title"] for d in retriever.invoke(q)] for q in questions]

    for q, a, b, s in zip(questions, in_context, parametric, sources):
        print(f"\nQ: {q}   (retrieved: {', '.join(s)})\n  LCEL chain, passage in the prompt : {a}\n"
              f"  PolyPRAGRunnable, no passage     : {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
