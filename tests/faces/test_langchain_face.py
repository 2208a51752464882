"""LangChain face: retriever metadata, chat model with bound mixtures, and the one-step RAG runnable."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document as LCDocument
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

import langchain_polyprag
from langchain_polyprag import ChatPolyPRAG, PolyPRAGRetriever, PolyPRAGRunnable, to_polyprag_documents
from polyprag import (AdapterLibrary, Document, InvalidInputError, ModelLoadError, ParametricRetriever, PolyPRAG,
                      UnknownDocumentError, passage_id)
from polyprag.library.state import LibraryConfig

from conftest import random_bank
from fakes import word_embed

ROOT = Path(__file__).resolve().parents[2]
# Each question retrieves (k=1) a different document of the `docs` fixture: d0, d1, d4, d2, d3, ...
QUESTIONS = ["what is the capital of zorvania", "who built the krell lighthouse", "what is painted purple",
             "what did marisol invent", "what is the velt", "which island has a purple lighthouse",
             "who was the engineer farrant", "quellport is the capital of which country"]


@pytest.fixture
def llm():
    """The tiny model with a decoder that spaces words, so token streams arrive in several pieces."""
    from tiny import tiny_llm

    return tiny_llm(spaced=True)


@pytest.fixture
def library(llm, docs):
    """A per-document library with strong random adapters: each retrieved document visibly changes the answer."""
    bank = random_bank(llm, len(docs), alpha=8.0)
    config = LibraryConfig(kind="prag", rank=2, alpha=8.0, m=len(docs),
                           target_modules=list(llm.target_modules), base_model=llm.fingerprint())
    return AdapterLibrary(llm, bank, docs, config)


@pytest.fixture
def rag(library):
    return PolyPRAGRunnable(retriever=PolyPRAGRetriever(library=library, k=1), mode="parametric", max_tokens=16)


def test_all_is_pinned_and_classes_have_langchain_bases():
    assert langchain_polyprag.__all__ == ["ChatPolyPRAG", "PolyPRAGEmbeddings", "PolyPRAGRetriever", "PolyPRAGRunnable",
                                          "to_polyprag_documents"]
    assert BaseChatModel in ChatPolyPRAG.__mro__
    assert BaseRetriever in PolyPRAGRetriever.__mro__
    assert Runnable in PolyPRAGRunnable.__mro__


def test_import_works_without_llama_index():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("llama_index", "llamaindex_polyprag"):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import langchain_polyprag
        from langchain_polyprag import PolyPRAGRetriever
        from polyprag import Document
        docs = [Document("a", "quellport city"), Document("b", "velt coin"), Document("c", "krell tower")]
        hits = PolyPRAGRetriever(documents=docs, k=1).invoke("velt")
        assert hits[0].metadata["id"] == "b", hits
        assert not [m for m in sys.modules if m.startswith("llama_index")]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---- retriever --------------------------------------------------------------------------------------
def test_retriever_metadata_carries_id_score_and_routing_weights(library):
    hits = PolyPRAGRetriever(library=library, k=3).invoke("capital of zorvania")
    assert [h.metadata["id"] for h in hits][0] == "d0" and hits[0].id == "d0"
    scores = [h.metadata["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    expected = library.routing_weights([h.id for h in hits]).tolist()
    assert [h.metadata["routing_weights"] for h in hits] == expected
    assert hits[0].page_content == "the capital of zorvania is quellport" and hits[0].metadata["title"] == "zorvania"


def test_retriever_k_from_constructor_and_call(docs):
    retriever = PolyPRAGRetriever(documents=docs, k=2)
    assert len(retriever.invoke("zorvania")) == 2
    assert len(retriever.invoke("zorvania", k=4)) == 4
    assert "routing_weights" not in retriever.invoke("zorvania")[0].metadata  # BM25 only: no library


def test_retriever_takes_langchain_documents_and_refuses_other_things():
    lc = [LCDocument(page_content="the velt is a currency", id="v"),
          LCDocument(page_content="quellport is a city", metadata={"id": "q", "title": "Quellport"}),
          LCDocument(page_content="the krell lighthouse is purple")]
    hits = PolyPRAGRetriever(documents=lc, k=1).invoke("quellport city")
    assert hits[0].id == "q" and hits[0].metadata["title"] == "Quellport"
    with pytest.raises(InvalidInputError, match="documents\\[0\\]"):
        PolyPRAGRetriever(documents=["just a string"])
    with pytest.raises(InvalidInputError, match="documents=\\[...\\] or a library"):
        PolyPRAGRetriever()


# ---- runnable ---------------------------------------------------------------------------------------
def test_batch_answers_like_invoke_with_different_documents_in_one_forward_pass(rag, monkeypatch):
    retrieved = [rag.retriever.invoke(q)[0].id for q in QUESTIONS[:4]]
    assert len(set(retrieved)) == 4
    alone = [rag.invoke(q) for q in QUESTIONS[:4]]
    assert len(set(alone)) == 4  # the documents' adapters shape the answers
    llm = rag.pipeline().llm
    calls = []
    original = llm.generate
    monkeypatch.setattr(llm, "generate", lambda prompts, *a, **kw: calls.append(len(prompts)) or
                        original(prompts, *a, **kw))
    assert rag.batch(QUESTIONS[:4]) == alone
    assert calls == [4]
    calls.clear()
    assert rag.batch(QUESTIONS[:4], {"max_concurrency": 3}) == alone
    assert calls == [3, 1]


async def test_concurrent_ainvoke_and_abatch_match_sequential(rag):
    sequential = [rag.invoke(q) for q in QUESTIONS]
    assert await asyncio.gather(*(rag.ainvoke(q) for q in QUESTIONS)) == sequential
    assert await rag.abatch(QUESTIONS) == sequential


async def test_stream_and_astream_join_to_invoke(rag):
    answer = rag.invoke(QUESTIONS[0])
    chunks = list(rag.stream(QUESTIONS[0]))
    assert len(chunks) > 1 and "".join(chunks) == answer
    achunks = [c async for c in rag.astream(QUESTIONS[0])]
    assert len(achunks) > 1 and "".join(achunks) == answer


def test_return_documents_gives_answer_and_sources_also_when_streamed(library):
    rag = PolyPRAGRunnable(retriever=PolyPRAGRetriever(library=library, k=2), return_documents=True, max_tokens=16)
    out = rag.invoke({"question": QUESTIONS[1]})
    assert out["question"] == QUESTIONS[1] and isinstance(out["answer"], str) and out["answer"]
    assert [d.id for d in out["documents"]] == [d.id for d in rag.retriever.invoke(QUESTIONS[1], k=2)]
    assert out["documents"][0].metadata["routing_weights"] == library.routing_weights(["d1"]).tolist()[0]
    total = None
    for chunk in rag.stream({"question": QUESTIONS[1]}):
        total = chunk if total is None else total + chunk
    assert total == out


def test_modes_change_what_the_model_sees(library, docs):
    retriever = PolyPRAGRetriever(library=library, k=1)
    out = {mode: PolyPRAGRunnable(retriever=retriever, mode=mode, max_tokens=12, return_documents=True)
           .invoke(QUESTIONS[0]) for mode in ("parametric", "in_context", "closed_book")}
    assert [d.id for d in out["parametric"]["documents"]] == [d.id for d in out["in_context"]["documents"]] == ["d0"]
    assert out["closed_book"]["documents"] == []
    assert out["parametric"]["answer"] != out["closed_book"]["answer"]  # the adapter of d0 was applied
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        PolyPRAGRunnable(retriever=retriever, mode="telepathy")
    with pytest.raises(InvalidInputError, match="needs a ParametricRetriever"):
        PolyPRAGRunnable(retriever=PolyPRAGRetriever(documents=docs), llm=library.llm, mode="parametric")


class Recorder(BaseCallbackHandler):
    def __init__(self):
        self.starts, self.ends = [], []

    def on_chain_start(self, serialized, inputs, *, tags=None, metadata=None, **kw):
        self.starts.append((kw.get("name"), inputs, tuple(tags or ()), dict(metadata or {})))

    def on_chain_end(self, outputs, **kw):
        self.ends.append(outputs)


def test_composes_with_lcel_and_respects_callbacks_and_config(rag):
    chain = RunnableLambda(lambda d: d["q"]) | rag | StrOutputParser()
    seen = Recorder()
    config = {"callbacks": [seen], "tags": ["face"], "metadata": {"user": "u1"}}
    out = chain.batch([{"q": q} for q in QUESTIONS[:3]], config)
    assert out == [rag.invoke(q) for q in QUESTIONS[:3]]
    mine = [s for s in seen.starts if s[0] == "PolyPRAGRunnable"]
    assert [s[1] for s in mine] == QUESTIONS[:3]
    assert all("face" in s[2] and s[3]["user"] == "u1" for s in mine)
    assert all(a in seen.ends for a in out)
    named = Recorder()
    rag.invoke(QUESTIONS[0], {"callbacks": [named], "run_name": "parametric-rag"})
    assert named.starts[0][0] == "parametric-rag"


def test_bad_inputs_get_polyprag_errors(rag):
    with pytest.raises(InvalidInputError, match="empty"):
        rag.invoke("   ")
    with pytest.raises(InvalidInputError, match="keys"):
        rag.invoke({"prompt": "x"})
    out = rag.batch([QUESTIONS[0], ""], return_exceptions=True)
    assert out[0] == rag.invoke(QUESTIONS[0]) and isinstance(out[1], InvalidInputError)


# ---- chat model -------------------------------------------------------------------------------------
def test_chat_model_is_lazy_and_reports_a_bad_model_on_first_use():
    chat = ChatPolyPRAG(model="/nonexistent/model-dir")
    assert chat.llm is None
    with pytest.raises(ModelLoadError, match="nonexistent"):
        chat.invoke("hello")


def test_chat_uses_the_chat_template_and_bound_documents(llm, library):
    chat = ChatPolyPRAG(llm=llm, library=library, max_tokens=12)
    messages = [SystemMessage("be brief"), HumanMessage("what is the capital of zorvania")]
    prompt = llm.chat_messages([{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "what is the capital of zorvania"}])
    assert chat.invoke(messages).content == llm.generate([prompt], max_new_tokens=12)[0]
    with_doc = chat.bind(documents=["d0"]).invoke(messages).content
    assert with_doc == llm.generate([prompt], [library.mixture(["d0"])], max_new_tokens=12)[0]
    assert with_doc != chat.invoke(messages).content
    hits = PolyPRAGRetriever(library=library, k=1).invoke("capital of zorvania")  # LangChain docs bind too
    assert chat.invoke(messages, documents=hits).content == with_doc
    assert ChatPolyPRAG(llm=llm, library=library, documents=["d0"], max_tokens=12).invoke(messages).content == with_doc


def test_chat_accepts_a_polyprag_and_its_options(llm, library):
    chat = ChatPolyPRAG(llm=PolyPRAG(llm, mode="closed_book"), max_tokens=12)
    assert chat.llm is llm and chat._get_ls_params()["ls_model_name"] == "tiny-llama"
    full = chat.invoke("capital of zorvania", max_tokens=20).content
    assert len(full) > len(chat.invoke("capital of zorvania").content)
    word = full.split()[1] if len(full.split()) > 1 else full[3:6]
    assert chat.invoke("capital of zorvania", max_tokens=20, stop=[word]).content == full[:full.find(word)].strip()
    with pytest.raises(InvalidInputError, match="per-call options"):
        chat.invoke("hi", top_k=3)
    with pytest.raises(InvalidInputError, match="text only"):
        chat.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "x"}}])])


async def test_chat_streams_and_does_not_block_the_event_loop(llm, library):
    chat = ChatPolyPRAG(llm=llm, library=library, max_tokens=16).bind(documents=["d0"])
    answer = chat.invoke(QUESTIONS[0]).content
    chunks = [c.content for c in chat.stream(QUESTIONS[0])]
    assert len([c for c in chunks if c]) > 1 and "".join(chunks) == answer
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    achunks = [c.content async for c in chat.astream(QUESTIONS[0])]
    results = await asyncio.gather(*(chat.ainvoke(q) for q in QUESTIONS))
    task.cancel()
    assert "".join(achunks) == answer and results[0].content == answer
    assert [r.content for r in results] == [chat.invoke(q).content for q in QUESTIONS]
    assert ticks > 10  # the loop kept running while the model worked


def test_chat_model_in_a_typical_rag_chain(llm, library):
    retriever = PolyPRAGRetriever(library=library, k=2)
    prompt = ChatPromptTemplate.from_messages([("system", "Context: {context}"), ("human", "{question}")])
    chat = ChatPolyPRAG(llm=llm, max_tokens=12)
    chain = ({"context": retriever | (lambda ds: "\n".join(d.page_content for d in ds)),
              "question": RunnablePassthrough()} | prompt | chat | StrOutputParser())
    out = chain.batch(QUESTIONS[:2])
    assert out == [chain.invoke(q) for q in QUESTIONS[:2]] and all(isinstance(o, str) for o in out)


# ---- bring your own retriever: a vector store's ---------------------------------------------------------
class WordEmbeddings(Embeddings):
    """Deterministic bag-of-words embeddings: fast, no model, and similar texts really are close."""

    def embed_documents(self, texts):
        return word_embed(texts).tolist()

    def embed_query(self, text):
        return word_embed([text])[0].tolist()


def as_loaded(docs):
    """The documents as a loader gives them: no ids, the title in the metadata."""
    return [LCDocument(page_content=d.text, metadata={"title": d.title, "source": "facts.txt"}) for d in docs]


def vector_retriever(docs, k=2):
    store = InMemoryVectorStore(WordEmbeddings())
    store.add_documents(as_loaded(docs))  # the store gives each document a random id
    return store.as_retriever(search_kwargs={"k": k})


def same_documents_by_id(library, retriever):
    """The core pipeline fed, for each question, the library's documents with the ids the retriever matched."""
    def by_id(query):
        return [library.document(i) for i in [passage_to_id(library, d) for d in retriever.invoke(query)]]
    return by_id


def passage_to_id(library, lc):
    return next(d.id for d in library.documents if passage_id(d.title, d.text) ==
                passage_id(lc.metadata["title"], lc.page_content))


def test_recite_mode_with_a_users_vector_store_recites_the_same_documents_by_id(library, docs):
    retriever = vector_retriever(docs, k=2)
    rag = PolyPRAGRunnable(retriever=retriever, library=library, mode="recite", max_tokens=8)
    core = PolyPRAG(library.llm, ParametricRetriever(same_documents_by_id(library, retriever), library), mode="recite")
    for q in QUESTIONS[:2]:  # long random recitals fill the tiny context: both fit prompts to the default budget
        expected = core.answer(q, max_new_tokens=8)
        assert len(expected.recitals) == 2 and expected.mixture is None
        assert rag.invoke(q) == expected.text == "".join(rag.stream(q))


@pytest.mark.parametrize("mode", ["parametric", "combine"])
def test_vector_store_retriever_drives_the_mixtures_of_the_same_documents_by_id(library, docs, mode):
    retriever = vector_retriever(docs, k=2)
    rag = PolyPRAGRunnable(retriever=retriever, library=library, mode=mode, max_tokens=16, return_documents=True)
    core = PolyPRAG(library.llm, ParametricRetriever(same_documents_by_id(library, retriever), library), mode=mode,
                    max_new_tokens=16)
    answers = set()
    for q in QUESTIONS[:4]:
        out = rag.invoke(q)
        ids = [passage_to_id(library, d) for d in out["documents"]]
        assert len(ids) == 2  # the user's retriever's own k
        prepared = rag.pipeline().prepare(q)
        assert prepared.mixture.weights.tolist() == library.mixture(ids).weights.tolist()
        assert out["answer"] == core.answer(q).text
        answers.add(out["answer"])
        assert all(d.id not in library for d in out["documents"])  # the user's documents, their store's ids
        assert [d.metadata["routing_weights"] for d in out["documents"]] == library.routing_weights(ids).tolist()
        assert all(d.metadata["source"] == "facts.txt" for d in out["documents"])
        assert (docs[int(ids[0][1])].text in prepared.prompt) == (mode == "combine")
    assert len(answers) > 1


def test_vector_store_runnable_batch_stream_and_async_equal_invoke(library, docs):
    rag = PolyPRAGRunnable(retriever=vector_retriever(docs), library=library, max_tokens=16)
    alone = [rag.invoke(q) for q in QUESTIONS[:4]]
    assert rag.batch(QUESTIONS[:4]) == alone
    assert "".join(rag.stream(QUESTIONS[0])) == alone[0]

    async def run():
        streamed = "".join([c async for c in rag.astream(QUESTIONS[1])])
        return await asyncio.gather(*(rag.ainvoke(q) for q in QUESTIONS[:4])), await rag.abatch(QUESTIONS[:4]), streamed

    concurrent, abatch, astreamed = asyncio.run(run())
    assert concurrent == abatch == alone and astreamed == alone[1]


def test_unknown_vector_store_documents_follow_on_unknown(library, docs):
    stranger = Document(id="x", text="the moon lake is green", title="moon")
    retriever = vector_retriever(docs + [stranger], k=2)
    question = "which lake is green"
    with pytest.raises(UnknownDocumentError, match=r"\(moon\).*on_unknown"):
        PolyPRAGRunnable(retriever=retriever, library=library, max_tokens=8).invoke(question)
    kept = PolyPRAGRunnable(retriever=retriever, library=library, on_unknown="in_context", max_tokens=8,
                            return_documents=True).invoke(question)
    assert [d.page_content for d in kept["documents"]][0] == stranger.text
    assert "routing_weights" not in kept["documents"][0].metadata and "routing_weights" in kept["documents"][1].metadata
    prompt = PolyPRAGRunnable(retriever=retriever, library=library, on_unknown="in_context").pipeline().prepare(
        question).prompt
    assert "moon lake is green" in prompt and docs[0].text not in prompt and docs[3].text not in prompt
    skipped = PolyPRAGRunnable(retriever=retriever, library=library, on_unknown="skip", max_tokens=8,
                               return_documents=True).invoke(question)
    assert len(skipped["documents"]) == 1 and skipped["documents"][0].page_content != stranger.text


class RetrieverRecorder(BaseCallbackHandler):
    def __init__(self):
        self.queries = []

    def on_retriever_start(self, serialized, query, **kw):
        self.queries.append((query, kw.get("parent_run_id") is not None))


def test_the_users_retriever_runs_inside_the_runnables_callbacks(library, docs):
    rag = PolyPRAGRunnable(retriever=vector_retriever(docs), library=library, max_tokens=4)
    seen = RetrieverRecorder()
    rag.invoke(QUESTIONS[0], {"callbacks": [seen]})
    rag.batch(QUESTIONS[1:3], {"callbacks": [seen]})
    list(rag.stream(QUESTIONS[3], {"callbacks": [seen]}))
    assert seen.queries == [(q, True) for q in QUESTIONS[:4]]  # each a child run of the runnable's


def test_loader_and_splitter_documents_encode_with_kept_ids_or_stable_hashes():
    loaded = [LCDocument(page_content="quellport is a city", metadata={"title": "Quellport"}),
              LCDocument(page_content="the velt is money", id="velt"),
              LCDocument(page_content="a chunk", metadata={"id": "c1"}),
              LCDocument(page_content="quellport is a city", metadata={"title": "Quellport"})]  # a repeated chunk
    docs = to_polyprag_documents(loaded)
    assert [d.id for d in docs] == [passage_id("Quellport", "quellport is a city"), "velt", "c1"]
    assert to_polyprag_documents(loaded)[0].id == docs[0].id and docs[0].title == "Quellport"
    with pytest.raises(InvalidInputError, match="id 'velt' of an earlier document"):
        to_polyprag_documents([loaded[1], LCDocument(page_content="other", id="velt")])


def test_runnable_needs_a_library_for_a_plain_retriever(library, docs):
    with pytest.raises(InvalidInputError, match="library=AdapterLibrary"):
        PolyPRAGRunnable(retriever=vector_retriever(docs))
    in_context = PolyPRAGRunnable(retriever=vector_retriever(docs), llm=library.llm, mode="in_context",
                                  return_documents=True, max_tokens=4).invoke(QUESTIONS[1])
    assert in_context["documents"] and "routing_weights" not in in_context["documents"][0].metadata


@pytest.mark.parametrize("mode", ["recite_ensemble", "combine_ensemble", "parametric_ensemble"])
def test_ensemble_modes_answer_as_the_core(library, mode):
    """The runnable's ensemble modes give the core's answer: invoke, batch and stream."""
    retriever = PolyPRAGRetriever(library=library, k=2)
    runnable = PolyPRAGRunnable(retriever=retriever, library=library, mode=mode, max_tokens=8)
    core = runnable.pipeline()
    expected = [core.answer(q, mode=mode, max_new_tokens=8).text for q in QUESTIONS[:3]]
    assert [runnable.invoke(q) for q in QUESTIONS[:3]] == expected
    assert runnable.batch(QUESTIONS[:3]) == expected
    assert "".join(runnable.stream(QUESTIONS[0])) == expected[0]


# ---- the framework's habits ---------------------------------------------------------------------------
def prompts_seen(llm, monkeypatch) -> list[str]:
    """The prompts the model is given from now on (each ``generate`` call's)."""
    seen: list[str] = []
    original = llm.generate
    monkeypatch.setattr(llm, "generate", lambda prompts, *a, **kw: seen.extend(prompts) or original(prompts, *a, **kw))
    return seen


def test_a_chat_prompt_template_in_front_gives_the_question_and_its_text_reaches_the_prompt(library, monkeypatch):
    template = ChatPromptTemplate.from_messages([("system", "answer in few words"), ("human", "question: {question}")])
    for mode in ("combine", "in_context", "parametric"):
        rag = PolyPRAGRunnable(retriever=PolyPRAGRetriever(library=library, k=1), mode=mode, max_tokens=8,
                               return_documents=True)
        seen = prompts_seen(library.llm, monkeypatch)
        out = (template | rag).invoke({"question": QUESTIONS[1]})
        assert [d.id for d in out["documents"]] == ["d1"]  # retrieved with the human message: the krell document
        assert out["question"] == "question: " + QUESTIONS[1]
        if mode == "parametric":  # no passages: the bare question, as the adapters were trained
            assert "answer in few words" not in seen[-1]
            assert out["answer"] == rag.invoke("question: " + QUESTIONS[1])["answer"]
        else:  # the user's template text and the passage are both in the model's prompt
            assert "answer in few words" in seen[-1] and "krell lighthouse was built by farrant" in seen[-1]
        monkeypatch.undo()
    plain = PolyPRAGRunnable(retriever=PolyPRAGRetriever(library=library, k=1), max_tokens=8)
    string = PromptTemplate.from_template("{question}") | plain  # a StringPromptValue: its text is the question
    assert string.batch([{"question": q} for q in QUESTIONS[:3]]) == plain.batch(QUESTIONS[:3])
    with pytest.raises(InvalidInputError, match="no human message"):
        (ChatPromptTemplate.from_messages([("system", "{question}")]) | plain).invoke({"question": "x"})


def test_return_documents_output_reads_with_pick_and_a_string_parser(library):
    kw = dict(retriever=PolyPRAGRetriever(library=library, k=2), max_tokens=12)
    answers = PolyPRAGRunnable(**kw).batch(QUESTIONS[:3])
    chain = PolyPRAGRunnable(**kw, return_documents=True).pick("answer") | StrOutputParser()
    assert chain.batch(QUESTIONS[:3]) == answers
    assert "".join(chain.stream(QUESTIONS[0])) == answers[0]


def test_lag_field_gives_the_lag_modes_their_router(library):
    router = library.mixture(["d2"])  # any mixture serves as a router on the tiny model
    retriever = PolyPRAGRetriever(library=library, k=1)
    for mode in ("lag", "lag_in_context", "lag_parametric"):
        rag = PolyPRAGRunnable(retriever=retriever, mode=mode, lag=router, max_tokens=10)
        core = PolyPRAG(library.llm, ParametricRetriever(retriever.core.retriever, library), mode=mode, lag=router,
                        max_new_tokens=10)
        assert rag.invoke(QUESTIONS[0]) == core.answer(QUESTIONS[0]).text
    with pytest.raises(InvalidInputError, match="LAG router"):
        PolyPRAGRunnable(retriever=retriever, mode="lag")


def test_the_mode_field_names_every_mode():
    import ast
    import inspect

    from polyprag import MODES

    tree = ast.parse(inspect.getsource(PolyPRAGRunnable))
    body = tree.body[0].body
    at = next(i for i, node in enumerate(body) if isinstance(node, ast.AnnAssign) and node.target.id == "mode")
    doc = body[at + 1].value.value
    assert all(mode in doc.replace("\n", " ").split() for mode in MODES), doc
