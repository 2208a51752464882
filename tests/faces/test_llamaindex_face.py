"""The LlamaIndex face: retriever, LLM and query engine on the tiny model, with Settings untouched."""
from __future__ import annotations

import inspect

import asyncio
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from llama_index.core import Document as LIDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.llms import ChatMessage, CustomLLM
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import MetadataMode, TextNode
from llama_index.core.settings import _Settings

import llamaindex_polyprag
from conftest import random_poly_library
from fakes import word_embed
from llamaindex_polyprag import PolyPRAGLLM, PolyPRAGQueryEngine, PolyPRAGRetriever, to_documents
from polyprag import (AdapterLibrary, BM25Retriever, Document, InvalidInputError, LoRAMixingLLM, ModelLoadError,
                      ParametricRetriever, PolyPRAG, UnknownDocumentError)
from tiny import tiny_llm

ROOT = Path(__file__).resolve().parents[2]
TEXTS = {"zorvania": "the capital of zorvania is quellport", "krell": "the krell lighthouse was built by farrant",
         "marisol": "marisol invented the vase in 1998", "velt": "the velt is the currency of zorvania",
         "tamsin": "the lighthouse on tamsin island is painted purple"}
DOCS = [Document(id=f"d{i}", text=t, title=w) for i, (w, t) in enumerate(TEXTS.items())]
QUESTIONS = ["what is the capital of zorvania", "who built the krell lighthouse", "what is the currency of zorvania",
             "who invented the vase", "which lighthouse is painted purple", "where is quellport",
             "when was the vase invented", "what is painted purple on tamsin island"]
N_TOKENS = 12


def spaced_llm() -> LoRAMixingLLM:
    """The tiny model with a decoder that puts spaces between words, as real tokenizers' output has."""
    return tiny_llm(spaced=True)


@pytest.fixture(scope="module")
def library() -> AdapterLibrary:
    """A Poly-PRAG library of 3 random (non-zero) adapters over DOCS, so every mixture changes the output."""
    return random_poly_library(spaced_llm(), DOCS, m=3, logit_seed=1, logit_scale=2.0)


@pytest.fixture(scope="module")
def engine(library) -> PolyPRAGQueryEngine:
    return PolyPRAGQueryEngine.from_library(library, mode="parametric", k=2, llm=PolyPRAGLLM(llm=library.llm, max_new_tokens=N_TOKENS))


@pytest.fixture(scope="module")
def core(library) -> PolyPRAG:
    return PolyPRAG(library.llm, ParametricRetriever(BM25Retriever(DOCS, k=2), library), max_new_tokens=N_TOKENS,
                   mode="parametric")


def test_classes_are_llamaindex_components():
    assert BaseRetriever in PolyPRAGRetriever.__mro__
    assert CustomLLM in PolyPRAGLLM.__mro__
    assert CustomQueryEngine in PolyPRAGQueryEngine.__mro__ and BaseQueryEngine in PolyPRAGQueryEngine.__mro__


def test_all_is_pinned():
    assert llamaindex_polyprag.__all__ == ["PolyPRAGEmbedding", "PolyPRAGLLM", "PolyPRAGQueryEngine",
                                           "PolyPRAGRetriever", "to_documents"]


def test_query_returns_bm25_top_nodes_with_scores_routing_and_the_parametric_answer(engine, core, library):
    q = QUESTIONS[1]
    response = engine.query(q)
    assert isinstance(response, Response)
    best = BM25Retriever(DOCS, k=2).retrieve(q)
    assert [n.node.node_id for n in response.source_nodes] == [s.document.id for s in best] == ["d1", "d4"]
    assert [n.score for n in response.source_nodes] == pytest.approx([s.score for s in best])
    assert response.source_nodes[0].node.text == TEXTS["krell"]
    routing = library.routing_weights(["d1", "d4"])  # [2, m]
    for node, row in zip(response.source_nodes, routing.tolist()):
        assert node.node.metadata["routing_weights"] == pytest.approx(row)
        assert "routing_weights" not in node.node.get_content(MetadataMode.LLM)  # never pasted into prompts
    assert response.metadata["mode"] == "parametric"
    assert response.metadata["mixture_weights"] == [pytest.approx(routing.mean(0).tolist())]
    assert response.response == core.answer(q).text  # the same answer as the core, mixture applied
    assert response.response != core.answer(q, mode="closed_book").text


def test_modes_as_the_core(library, core):
    q = QUESTIONS[0]
    llm = PolyPRAGLLM(llm=library.llm, max_new_tokens=N_TOKENS)
    for mode in ("combine", "recite", "in_context", "closed_book"):
        r = PolyPRAGQueryEngine.from_library(library, k=2, llm=llm, mode=mode).query(q)
        assert r.response == core.answer(q, mode=mode).text and r.metadata["mode"] == mode
        assert (r.metadata["mixture"] is None) == (mode != "combine")
        assert ("Passage 1:" in r.metadata["prompt"]) == (mode != "closed_book")
        assert [n.node.node_id for n in r.source_nodes] == ([] if mode == "closed_book" else ["d0", "d3"])


def test_retriever_builds_from_llamaindex_documents_and_text_nodes(library):
    items = [LIDocument(text=d.text, id_=d.id, metadata={"title": d.title}) for d in DOCS[:3]]
    items += [TextNode(text=d.text, id_=d.id, metadata={"title": d.title}) for d in DOCS[3:]]
    q = QUESTIONS[4]
    plain = PolyPRAGRetriever.from_documents(items, k=3).retrieve(q)
    best = BM25Retriever(DOCS, k=3).retrieve(q)
    assert [(n.node.node_id, n.score) for n in plain] == [(s.document.id, pytest.approx(s.score)) for s in best]
    assert plain[0].node.metadata == {"title": "tamsin"}  # no library: no routing weights
    routed = PolyPRAGRetriever.from_documents(items, library, k=3).retrieve(q)
    assert routed[0].node.metadata["routing_weights"] == pytest.approx(library.routing_weights(["d4"])[0].tolist())


def test_bad_inputs_are_refused_with_advice(library):
    with pytest.raises(InvalidInputError, match="LlamaIndex Documents/TextNodes"):
        PolyPRAGRetriever.from_documents([DOCS[0], 42])
    with pytest.raises(InvalidInputError, match="from_documents"):
        PolyPRAGRetriever(DOCS)
    with pytest.raises(InvalidInputError, match="ParametricRetriever"):  # no library, parametric mode
        PolyPRAGQueryEngine(PolyPRAGRetriever.from_documents(DOCS), llm=PolyPRAGLLM(llm=library.llm))
    with pytest.raises(InvalidInputError, match="mode must be one of"):
        PolyPRAGQueryEngine.from_library(library, mode="telepathy")
    with pytest.raises(InvalidInputError, match="encoded on"):
        PolyPRAGQueryEngine.from_library(library, llm=PolyPRAGLLM(llm=tiny_llm()))
    with pytest.raises(InvalidInputError, match="PolyPRAGLLM"):
        PolyPRAGQueryEngine.from_library(library, llm="gpt-4")
    with pytest.raises(InvalidInputError, match="empty"):
        PolyPRAGQueryEngine.from_library(library).query("   ")


def test_streaming_yields_several_tokens_that_join_to_the_answer(engine, library):
    q = QUESTIONS[2]
    streaming = PolyPRAGQueryEngine.from_library(library, mode="parametric", k=2, llm=engine.llm, streaming=True)
    response = streaming.query(q)
    assert isinstance(response, StreamingResponse)
    pieces = list(response.response_gen)
    assert len(pieces) >= 3
    assert "".join(pieces) == engine.query(q).response
    assert [n.node.node_id for n in response.source_nodes] == ["d3", "d0"]


async def test_async_streaming_query(engine, library):
    q = QUESTIONS[3]
    response = await PolyPRAGQueryEngine.from_library(library, mode="parametric", k=2, llm=engine.llm, streaming=True).aquery(q)
    assert isinstance(response, AsyncStreamingResponse)
    pieces = [p async for p in response.async_response_gen()]
    assert len(pieces) >= 3 and "".join(pieces) == engine.query(q).response


async def test_concurrent_aquery_gives_the_sequential_answers(engine):
    sequential = [engine.query(q) for q in QUESTIONS]
    concurrent = await asyncio.gather(*(engine.aquery(q) for q in QUESTIONS))
    assert [r.response for r in concurrent] == [r.response for r in sequential]
    assert [[n.node.node_id for n in r.source_nodes] for r in concurrent] == \
           [[n.node.node_id for n in r.source_nodes] for r in sequential]
    assert len({r.response for r in sequential}) > 1  # each row really got its own question and mixture


def test_llm_metadata_complete_chat_and_mixture_per_call(library):
    llm = PolyPRAGLLM(llm=library.llm, max_new_tokens=N_TOKENS)
    meta = llm.metadata
    assert (meta.context_window, meta.num_output, meta.model_name, meta.is_chat_model) == \
           (512, N_TOKENS, "tiny-llama", True)
    assert PolyPRAGLLM(llm=library.llm, context_window=300).metadata.context_window == 300
    q = QUESTIONS[0]
    mixing = library.llm
    bare = llm.complete(q).text
    assert bare == mixing.generate([mixing.chat(q)], max_new_tokens=N_TOKENS)[0]  # a user turn, chat template
    mixture = library.mixture(["d0"])
    assert llm.complete(q, mixture=mixture).text == mixing.generate([mixing.chat(q)], [mixture],
                                                                    max_new_tokens=N_TOKENS)[0] != bare
    messages = [ChatMessage(role="system", content="answer briefly"), ChatMessage(role="user", content=q)]
    chat = llm.chat(messages, mixture=mixture).message.content
    rendered = mixing.chat_messages([{"role": "system", "content": "answer briefly"}, {"role": "user", "content": q}])
    assert chat == mixing.generate([rendered], [mixture], max_new_tokens=N_TOKENS)[0]
    streamed = list(llm.stream_complete(q, mixture=mixture))
    assert len(streamed) >= 3 and "".join(r.delta for r in streamed) == streamed[-1].text == \
           llm.complete(q, mixture=mixture).text
    assert "".join(r.delta for r in llm.stream_chat(messages, mixture=mixture)) == chat


async def test_async_llm_matches_sync_and_leaves_the_loop_free(library):
    llm = PolyPRAGLLM(llm=library.llm, max_new_tokens=48)
    q, mixture = QUESTIONS[1], library.mixture(["d1"])
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    answer = await llm.acomplete(q, mixture=mixture)
    done.set()
    await task
    assert ticks >= 3  # the loop kept running while the model generated
    assert answer.text == llm.complete(q, mixture=mixture).text
    pieces = [r.delta async for r in await llm.astream_complete(q, mixture=mixture)]
    assert len(pieces) >= 3 and "".join(pieces) == answer.text
    messages = [ChatMessage(role="user", content=q)]
    achat = await llm.achat(messages, mixture=mixture)
    assert achat.message.content == llm.chat(messages, mixture=mixture).message.content
    assert "".join([r.delta async for r in await llm.astream_chat(messages, mixture=mixture)]) == \
           achat.message.content


def test_llm_loads_lazily_and_once(monkeypatch, tmp_path):
    broken = PolyPRAGLLM(model=str(tmp_path / "missing"))  # construction must not touch it
    assert not broken.loaded
    with pytest.raises(ModelLoadError):
        broken.complete("hello")
    loads = []
    tiny = tiny_llm()

    def load(model=None, device=None):
        loads.append(model)
        return tiny

    monkeypatch.setattr(LoRAMixingLLM, "from_pretrained", staticmethod(load))
    llm = PolyPRAGLLM(model="my-model", max_new_tokens=4)
    assert not llm.loaded and loads == []
    threads = [threading.Thread(target=llm.complete, args=(q,)) for q in QUESTIONS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["my-model"] and llm.mixing_llm is tiny


def test_works_with_settings_untouched_and_no_network(engine, monkeypatch):
    def refuse(*_):
        raise AssertionError("polyprag must not fall back to LlamaIndex Settings (OpenAI defaults)")

    def no_network(*_a, **_k):
        raise AssertionError("no network access expected")

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(_Settings, "llm", property(refuse))
    monkeypatch.setattr(_Settings, "embed_model", property(refuse))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    r = engine.query(QUESTIONS[0])
    assert r.response and r.source_nodes
    assert asyncio.run(engine.aquery(QUESTIONS[0])).response == r.response
    assert PolyPRAGRetriever.from_documents(DOCS).retrieve(QUESTIONS[0])


def test_callbacks_see_retrieval_and_generation(library):
    debug = LlamaDebugHandler()
    engine = PolyPRAGQueryEngine.from_library(library, mode="parametric", k=2, callback_manager=CallbackManager([debug]),
                                              llm=PolyPRAGLLM(llm=library.llm, max_new_tokens=4))
    engine.query(QUESTIONS[0])
    (retrieve_start, retrieve_end), = debug.get_event_pairs(CBEventType.RETRIEVE)
    assert [n.node.node_id for n in retrieve_end.payload["nodes"]] == ["d0", "d3"]
    assert len(debug.get_llm_inputs_outputs()) == 1


def test_import_needs_no_langchain():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0].startswith('langchain'):\n"
        "            raise ImportError('langchain is blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import llamaindex_polyprag\n"
        "assert not [m for m in sys.modules if m.startswith('langchain')]\n"
        "print(sorted(llamaindex_polyprag.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "PolyPRAGQueryEngine" in out.stdout


# ---- bring your own retriever: a VectorStoreIndex's -----------------------------------------------------
class WordEmbedding(BaseEmbedding):
    """Deterministic bag-of-words embeddings: fast, no model, and similar texts really are close."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return word_embed([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return word_embed([text])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def vector_index(docs=DOCS) -> VectorStoreIndex:
    """A VectorStoreIndex built the usual way: LlamaIndex Documents, split into nodes with new ids."""
    documents = [LIDocument(text=d.text, id_=d.id, metadata={"title": d.title}) for d in docs]
    return VectorStoreIndex.from_documents(documents, embed_model=WordEmbedding())


def by_id(library, ids_of):
    """The core pipeline's retriever, fed the library's documents by id."""
    return ParametricRetriever(lambda q: [library.document(i) for i in ids_of(q)], library)


@pytest.mark.parametrize("mode", ["parametric", "combine"])
def test_vector_index_retriever_drives_the_mixtures_of_the_same_documents_by_id(library, mode):
    index = vector_index()
    llm = PolyPRAGLLM(llm=library.llm, max_new_tokens=N_TOKENS)
    engine = PolyPRAGQueryEngine.from_index(index, library, k=2, llm=llm, mode=mode)
    plain = index.as_retriever(similarity_top_k=2)

    def ids_of(q):
        return [n.node.ref_doc_id for n in plain.retrieve(q)]

    core = PolyPRAG(library.llm, by_id(library, ids_of), mode=mode, max_new_tokens=N_TOKENS)
    same = PolyPRAGQueryEngine(retriever=plain, library=library, llm=llm, mode=mode)
    answers = set()
    for q in QUESTIONS[:4]:
        response = engine.query(q)
        ids = ids_of(q)
        assert [n.node.node_id for n in response.source_nodes] == [n.node.node_id for n in plain.retrieve(q)]
        assert all(n.node.node_id not in library for n in response.source_nodes)  # the index's own nodes
        assert response.metadata["mixture_weights"] == [pytest.approx(library.mixture(ids).weights[0, 0].tolist())]
        for node, row in zip(response.source_nodes, library.routing_weights(ids).tolist()):
            assert node.node.metadata["routing_weights"] == pytest.approx(row)
            assert "routing_weights" not in node.node.get_content(MetadataMode.LLM)
        assert response.response == core.answer(q).text == same.query(q).response
        assert (TEXTS[library.document(ids[0]).title] in response.metadata["prompt"]) == (mode == "combine")
        answers.add(response.response)
    assert len(answers) > 1
    assert "routing_weights" not in plain.retrieve(QUESTIONS[0])[0].node.metadata  # the user's nodes untouched


def test_nodes_without_source_ids_match_by_content(library):
    nodes = [TextNode(text=d.text, metadata={"title": d.title}) for d in DOCS]  # random ids, no ref_doc_id
    index = VectorStoreIndex(nodes, embed_model=WordEmbedding())
    engine = PolyPRAGQueryEngine.from_index(index, library, mode="parametric", k=1, llm=PolyPRAGLLM(llm=library.llm,
                                                                                 max_new_tokens=N_TOKENS))
    response = engine.query(QUESTIONS[1])
    assert response.source_nodes[0].node.text == TEXTS["krell"]
    assert response.metadata["mixture_weights"] == [pytest.approx(library.mixture(["d1"]).weights[0, 0].tolist())]


def test_unknown_index_nodes_follow_on_unknown(library):
    stranger = Document(id="x", text="the moon lake is green", title="moon")
    index = vector_index(DOCS + [stranger])
    llm = PolyPRAGLLM(llm=library.llm, max_new_tokens=N_TOKENS)
    question = "which lake is green"
    with pytest.raises(UnknownDocumentError, match=r"\(moon\).*on_unknown"):
        PolyPRAGQueryEngine.from_index(index, library, mode="parametric", k=2, llm=llm).query(question)
    kept = PolyPRAGQueryEngine.from_index(index, library, mode="parametric", k=2, llm=llm, on_unknown="in_context").query(question)
    assert kept.source_nodes[0].node.ref_doc_id == "x" and "routing_weights" not in kept.source_nodes[0].node.metadata
    assert "moon lake is green" in kept.metadata["prompt"] and kept.metadata["mixture"] is not None
    skipped = PolyPRAGQueryEngine.from_index(index, library, mode="parametric", k=2, llm=llm, on_unknown="skip").query(question)
    assert [n.node.ref_doc_id for n in skipped.source_nodes] == [kept.source_nodes[1].node.ref_doc_id]


async def test_vector_index_engine_streams_and_awaits_the_same_answers(library):
    index = vector_index()
    llm = PolyPRAGLLM(llm=library.llm, max_new_tokens=N_TOKENS)
    engine = PolyPRAGQueryEngine.from_index(index, library, k=2, llm=llm)
    sequential = [engine.query(q).response for q in QUESTIONS[:4]]
    concurrent = await asyncio.gather(*(engine.aquery(q) for q in QUESTIONS[:4]))
    assert [r.response for r in concurrent] == sequential
    streaming = PolyPRAGQueryEngine.from_index(index, library, k=2, llm=llm, streaming=True)
    assert "".join(streaming.query(QUESTIONS[0]).response_gen) == sequential[0]
    response = await streaming.aquery(QUESTIONS[1])
    assert "".join([p async for p in response.async_response_gen()]) == sequential[1]


def test_documents_and_parsed_nodes_are_ready_to_encode():
    documents = [LIDocument(text=d.text, id_=d.id, metadata={"title": d.title}) for d in DOCS]
    nodes = SentenceSplitter(chunk_size=64, chunk_overlap=0).get_nodes_from_documents(documents)
    encoded = to_documents(nodes)
    assert [d.metadata["ref_doc_id"] for d in encoded] == [d.id for d in DOCS]
    assert [(d.title, d.text) for d in encoded] == [(d.title, d.text) for d in DOCS]
    assert to_documents(documents) == DOCS
    with pytest.raises(InvalidInputError, match="BaseRetriever"):
        PolyPRAGQueryEngine(retriever=lambda q: [], library=None)


@pytest.mark.parametrize("mode", ["recite_ensemble", "combine_ensemble", "in_context_ensemble"])
def test_ensemble_modes_as_the_core(library, core, mode):
    """An ensemble mode answers through the engine exactly as the core answers it, streamed or not."""
    q = QUESTIONS[1]
    llm = PolyPRAGLLM(llm=library.llm, max_new_tokens=N_TOKENS)
    engine = PolyPRAGQueryEngine.from_library(library, k=2, llm=llm, mode=mode)
    expected = core.answer(q, mode=mode)
    r = engine.query(q)
    assert r.response == expected.text and r.metadata["mode"] == mode
    assert [n.node.node_id for n in r.source_nodes] == [s.document.id for s in expected.documents]
    streamed = PolyPRAGQueryEngine.from_library(library, k=2, llm=llm, mode=mode, streaming=True).query(q)
    assert "".join(streamed.response_gen) == expected.text
    assert asyncio.run(engine.aquery(q)).response == expected.text


# ---- the framework's habits ---------------------------------------------------------------------------
def test_similarity_top_k_is_the_number_of_nodes_and_k_its_alias(library):
    q = QUESTIONS[0]
    for make in (lambda **kw: PolyPRAGRetriever.from_library(library, **kw),
                 lambda **kw: PolyPRAGRetriever.from_documents(DOCS, library, **kw)):
        top1, top3 = make(similarity_top_k=1).retrieve(q), make(similarity_top_k=3).retrieve(q)
        assert len(top1) == 1 and len(top3) == 3 and top1[0].node.node_id == top3[0].node.node_id
        assert [n.node.node_id for n in make(k=3).retrieve(q)] == [n.node.node_id for n in top3]
    assert PolyPRAGRetriever.from_library(library, similarity_top_k=2).similarity_top_k is None  # its BM25's own k
    with pytest.raises(InvalidInputError, match="alias"):
        PolyPRAGRetriever.from_library(library, similarity_top_k=2, k=3)
    engine = PolyPRAGQueryEngine.from_library(library, similarity_top_k=1)
    assert len(engine.query(q).source_nodes) == 1
    index = vector_index()
    assert len(PolyPRAGQueryEngine.from_index(index, library, similarity_top_k=3).query(q).source_nodes) == 3


def test_from_defaults_builds_the_engine_from_what_is_at_hand(library, core):
    llm = PolyPRAGLLM(llm=library.llm, max_new_tokens=N_TOKENS)
    index = vector_index()
    plain = index.as_retriever(similarity_top_k=2)
    ours = PolyPRAGQueryEngine.from_defaults(retriever=plain, library=library, llm=llm)
    assert [n.node.node_id for n in ours.query(QUESTIONS[1]).source_nodes] == [
        n.node.node_id for n in plain.retrieve(QUESTIONS[1])]
    by_index = PolyPRAGQueryEngine.from_defaults(index=index, library=library, llm=llm, similarity_top_k=2)
    assert by_index.query(QUESTIONS[1]).response == ours.query(QUESTIONS[1]).response
    bm25 = PolyPRAGQueryEngine.from_defaults(library=library, llm=llm, similarity_top_k=2, mode="parametric")
    assert bm25.query(QUESTIONS[2]).response == core.answer(QUESTIONS[2]).text
    with pytest.raises(InvalidInputError, match="library="):
        PolyPRAGQueryEngine.from_defaults(index=index)


def test_chunks_of_one_document_are_one_source_and_one_mixture_term(library):
    splitter = SentenceSplitter(chunk_size=24, chunk_overlap=0)  # each document in several nodes
    documents = [LIDocument(text=f"{d.text}. {d.text} again and again", id_=d.id) for d in DOCS]
    index = VectorStoreIndex.from_documents(documents, embed_model=WordEmbedding(), transformations=[splitter])
    plain = index.as_retriever(similarity_top_k=4)
    nodes = plain.retrieve(QUESTIONS[1])
    assert len({n.node.ref_doc_id for n in nodes}) < len(nodes)  # the index returns chunks of one document twice
    engine = PolyPRAGQueryEngine(retriever=plain, library=library, mode="parametric", rule="sum",
                                 llm=PolyPRAGLLM(llm=library.llm, max_new_tokens=N_TOKENS))
    response = engine.query(QUESTIONS[1])
    refs = [n.node.ref_doc_id for n in response.source_nodes]
    assert refs == list(dict.fromkeys(n.node.ref_doc_id for n in nodes))  # each document once, at its best rank
    assert len(response.metadata["mixture_weights"]) == len(refs)  # one summed delta per document


def test_from_index_without_llm_answers_as_the_core_pipeline(library):
    index = vector_index()
    engine = PolyPRAGQueryEngine.from_index(index, library, similarity_top_k=2)  # no llm=
    plain = index.as_retriever(similarity_top_k=2)
    core = PolyPRAG(library.llm, by_id(library, lambda q: [n.node.ref_doc_id for n in plain.retrieve(q)]))
    for q in QUESTIONS[:3]:
        assert engine.query(q).response == core.answer(q).text


def test_the_engine_answers_in_the_librarys_default_mode_by_default(library):
    """The engine's default mode is polyprag's (combine_ensemble: each passage read with its own adapter)."""
    from polyprag import DEFAULT_MODE, PolyPRAG

    engine = PolyPRAGQueryEngine.from_library(library, k=2)
    assert engine.mode == DEFAULT_MODE == "combine_ensemble"
    assert inspect.signature(PolyPRAG).parameters["mode"].default == DEFAULT_MODE
    response = engine.query(QUESTIONS[0])
    assert response.metadata["mode"] == DEFAULT_MODE and len(response.source_nodes) == 2
