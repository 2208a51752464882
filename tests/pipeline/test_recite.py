"""Mode "recite": each retrieved document's own mixture writes back its passage, then the model reads the recitals."""
from __future__ import annotations

import pytest

from conftest import random_poly_library
from polyprag import BM25Retriever, Document, ParametricRetriever, PolyPRAG, PRAGEncoder
from polyprag.encoding.augment import PassageAugmenter
from polyprag.encoding.augment import TrainingExample
from polyprag.encoding.training import tokenize


def _rag(llm, docs, **kw):
    library = random_poly_library(llm, docs, m=3)
    retriever = ParametricRetriever(BM25Retriever(docs, k=2), library, **kw)
    return library, PolyPRAG(llm, retriever, mode="recite", max_new_tokens=4, recite_tokens=6)


def test_each_document_is_recited_by_its_own_mixture_and_read_without_one(llm, docs, one_thread):
    library, rag = _rag(llm, docs)
    answer = rag.answer("who built the krell lighthouse")
    ids = [s.document.id for s in answer.documents]
    expected = llm.generate([llm.recital_prompt] * len(ids), [library.mixture([i]) for i in ids],
                            max_new_tokens=6, short=False)
    assert answer.recitals == expected and len(expected) == 2
    assert answer.mixture is None  # the answer reads the recitals; no adapter is applied to it
    assert answer.prompt == llm.question_prompt("who built the krell lighthouse", expected)
    assert answer.text == llm.generate([answer.prompt], max_new_tokens=4)[0]
    assert not any(d.text in answer.prompt for d in docs)  # no document text reaches the prompt


def test_a_recital_depends_on_the_document(llm, docs, one_thread):
    library, _ = _rag(llm, docs)
    texts = llm.generate([llm.recital_prompt] * 3, [library.mixture([d.id]) for d in docs[:3]],
                         max_new_tokens=6, short=False)
    assert len(set(texts)) > 1


def test_batched_recitals_equal_one_by_one(llm, docs, one_thread):
    _, rag = _rag(llm, docs)
    questions = ["who built the krell lighthouse", "what is the currency of zorvania", "who invented the vase"]
    batch = rag.answer_batch(questions)
    for q, a in zip(questions, batch):
        one = rag.answer(q)
        assert (one.text, one.recitals) == (a.text, a.recitals)


def test_unknown_documents_go_in_as_text_and_known_ones_are_recited(llm, docs, one_thread):
    library = random_poly_library(llm, docs, m=3)
    stranger = Document(id="x", text="the moon lake is green", title="moon")
    retriever = ParametricRetriever(lambda q: [stranger, docs[0]], library, on_unknown="in_context")
    rag = PolyPRAG(llm, retriever, mode="recite", max_new_tokens=3, recite_tokens=5)
    answer = rag.answer("what is green")
    assert len(answer.recitals) == 1
    assert answer.prompt == llm.question_prompt("what is green", [stranger.full_text, answer.recitals[0]])


def test_stream_joins_to_the_answer(llm, docs, one_thread):
    _, rag = _rag(llm, docs)
    assert "".join(rag.stream("who built the krell lighthouse")) == rag.answer("who built the krell lighthouse").text


def test_recite_needs_a_library(llm, docs):
    with pytest.raises(Exception, match="ParametricRetriever"):
        PolyPRAG(llm, BM25Retriever(docs, k=2), mode="recite")


def test_a_plain_training_text_starts_where_a_recitation_starts(llm):
    row = tokenize(llm, TrainingExample(target="the velt is the currency of zorvania"), max_length=32)
    assert llm.tokenizer.convert_ids_to_tokens(row.ids[0]) == llm.recital_prompt


def test_a_trained_adapter_recites_its_passage(llm, docs, one_thread):
    """PRAG on the tiny model: each document's adapter, applied to the recital prompt, writes back words of its
    own passage (its recital is closer to it than to any other passage), which the bare model does not."""
    from polyprag.evaluation import f1_score

    library = PRAGEncoder(llm, augmenter=PassageAugmenter(("passage",)), epochs=60, lr=3e-2, rank=8,
                          progress=False).fit(docs[:3])
    texts = llm.generate([llm.recital_prompt] * 3, [library.mixture([d.id]) for d in docs[:3]],
                         max_new_tokens=12, short=False)
    bare = llm.generate([llm.recital_prompt], max_new_tokens=12, short=False)[0]
    for i, t in enumerate(texts):
        overlap = [f1_score(t, [d.full_text]) for d in docs[:3]]
        assert overlap.index(max(overlap)) == i and overlap[i] > f1_score(bare, [docs[i].full_text])


def test_eval_recite_methods_and_their_controls(llm, docs, tmp_path, one_thread):
    """The recite methods run with the oracle, wrong-document and routing controls, compared with each."""
    from slices import QUESTIONS, write_slice

    from polyprag.evaluation import EvalConfig, run_evaluation

    methods = ("closed_book", "prag_recite_oracle", "prag_recite_wrong", "polyprag_recite_oracle",
               "polyprag_recite_oracle_shuffled", "polyprag_recite")
    cfg = EvalConfig(data=str(write_slice(tmp_path / "data", docs)), n=4, k=2, methods=methods, num_adapters=3,
                     epochs=1, prag_epochs=1, texts="passage", max_new_tokens=3, recite_tokens=4,
                     latency_samples=0, bootstrap=200, progress=False)
    report = run_evaluation(cfg, llm=llm)
    by = {r.method: r for r in report.results}
    for i, (_, _, gold) in enumerate(QUESTIONS[:4]):
        assert by["prag_recite_oracle"].predictions[i]["documents"] == gold
        assert not set(by["prag_recite_wrong"].predictions[i]["documents"]) & set(gold)
    assert report.comparison("polyprag_recite_oracle", "polyprag_recite_oracle_shuffled") is not None
    assert report.comparison("prag_recite_oracle", "prag_recite_wrong") is not None
    assert report.injection_efficiency("prag_recite_oracle") is None or "prag_recite_oracle" in report.markdown()


def test_recitals_are_memoised_per_library_state(llm, docs, monkeypatch, one_thread):
    """A document retrieved again is not recited again; an update gives the next state a fresh memo, so an
    answer never reads a recital of an older state."""
    library = PRAGEncoder(llm, augmenter=PassageAugmenter(("passage",)), epochs=1, progress=False).fit(docs[:3])
    rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(docs[:3], k=1), library), mode="recite", recite_tokens=4)
    recitations = _count_recitations(llm, monkeypatch)
    first = rag.answer("who built the krell lighthouse")
    doc_id = first.documents[0].document.id
    state = library.snapshot()
    assert rag.reciter.recited(state) == [doc_id] and recitations == [1]
    assert rag.answer("who built the krell lighthouse").recitals == first.recitals
    assert recitations == [1]  # read from the memo, not recited again
    library.update_documents([Document(id=doc_id, text="the krell lighthouse was built by marisol", title="krell")],
                             progress=False)
    assert library.snapshot() is not state and not rag.reciter.recited(library.snapshot())
    again = rag.answer("who built the krell lighthouse")
    assert recitations == [1, 1]  # the new state's document is recited anew
    assert rag.reciter.recited(library.snapshot()) == [doc_id]
    assert again.recitals == llm.generate([llm.recital_prompt], [library.mixture([doc_id])], max_new_tokens=4,
                                          short=False)


def _count_recitations(llm, monkeypatch) -> list[int]:
    """A list that grows by the number of rows of each recitation batch ``llm`` generates from now on."""
    batches, generate = [], llm.generate

    def counting(prompts, *args, **kwargs):
        if prompts and prompts[0] == llm.recital_prompt:
            batches.append(len(prompts))
        return generate(prompts, *args, **kwargs)

    monkeypatch.setattr(llm, "generate", counting)
    return batches


def test_the_recital_memo_is_bounded_and_lets_go_of_old_states(llm, docs, one_thread):
    """Each state keeps at most max_recitals recitals (least recently read dropped first), and the memo does not
    keep a state alive: a long-running server's memo does not grow without bound."""
    import gc
    import weakref

    from polyprag.pipeline.recite import Reciter

    library = random_poly_library(llm, docs, m=3)
    reciter = Reciter(llm, max_new_tokens=3, max_recitals=2)
    state = library.snapshot()
    texts = reciter.recite([(state, "d0"), (state, "d1"), (state, "d0")])
    assert texts[0] == texts[2] and reciter.recited(state) == ["d0", "d1"]
    assert reciter.recite([(state, "d0"), (state, "d2")])[0] == texts[0]
    assert reciter.recited(state) == ["d0", "d2"]  # d1, read least recently, was dropped
    held = weakref.ref(state)
    del library, state
    gc.collect()
    assert held() is None  # nothing but the memo knew the state: it went, and its recitals with it


def test_pipelines_sharing_a_reciter_recite_a_document_once(llm, docs, monkeypatch, one_thread):
    """The evaluation's methods share one Reciter: an oracle and an ensemble method over the same library state
    recite each document once between them; a reciter made with another model wrapper is refused."""
    from polyprag import InvalidInputError, LoRAMixingLLM
    from polyprag.pipeline.recite import Reciter

    library = random_poly_library(llm, docs, m=3)
    retriever = ParametricRetriever(BM25Retriever(docs, k=1), library)
    reciter = Reciter(llm, max_new_tokens=4)
    recitations = _count_recitations(llm, monkeypatch)
    one = PolyPRAG(llm, retriever, mode="recite", max_new_tokens=3, reciter=reciter)
    other = PolyPRAG(llm, retriever, mode="recite_ensemble", max_new_tokens=3, reciter=reciter)
    first = one.answer("who built the krell lighthouse")
    assert other.answer("who built the krell lighthouse").recitals == first.recitals
    assert recitations == [1]  # the second pipeline read the first one's recital
    assert PolyPRAG(llm, retriever, mode="recite").reciter is not reciter  # unshared by default
    twin = LoRAMixingLLM(llm.model, llm.tokenizer)
    with pytest.raises(InvalidInputError, match="another model wrapper"):
        PolyPRAG(twin, ParametricRetriever(BM25Retriever(docs, k=1), library), mode="recite", reciter=reciter)
