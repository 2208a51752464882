"""PRAG-style augmentation: robust parsing of generated questions, retry-then-skip, and the disk cache."""
from __future__ import annotations

import pytest

from polyprag import Document, GeneratedQAAugmenter, UnknownDocumentError
from polyprag.encoding.augment import (Augmentation, FixedAugmenter, PassageAugmenter, clean_answer, clean_rewrite,
                                       examples_from, parse_questions)

pytestmark = pytest.mark.usefixtures("one_thread")  # generation-heavy: one torch thread


@pytest.mark.parametrize("text, expected", [
    ("1. Who built the lighthouse?\n2. What is the currency?\n3. Where is quellport?",
     ["Who built the lighthouse?", "What is the currency?", "Where is quellport?"]),
    ("Question 1: Who built it?  Question 2: Who painted it?", ["Who built it?", "Who painted it?"]),
    ("- who invented the vase\n* When was the vase made.\nAnswer: marisol?", ["who invented the vase?",
                                                                               "When was the vase made?"]),
    ("Here are three questions:\n1) Who built the lighthouse?\n2) who built the lighthouse?", ["Who built the lighthouse?"]),
    ("", []),
    ("The passage says the capital is quellport.\nSure!", []),
    ("1. What?\n2. Hi?", []),  # fragments too short to be questions
])
def test_parse_questions_from_malformed_output(text, expected):
    assert parse_questions(text, 3) == expected


def test_parse_questions_stops_at_n():
    text = "\n".join(f"{i}. What is item number {i}?" for i in range(1, 8))
    assert len(parse_questions(text, 3)) == 3


def test_clean_rewrite_and_answer():
    looped = "Zorvania's capital is quellport, a port city.\n\nZorvania's capital is quellport, a port city."
    assert clean_rewrite(looped) == "Zorvania's capital is quellport, a port city."
    assert clean_rewrite("Here is the rewrite:\nThe velt is the money of zorvania.") == \
        "The velt is the money of zorvania."
    assert clean_rewrite("Sure.") == ""  # nothing usable: retried, then skipped
    assert clean_answer("Answer: quellport\nIt is a city.") == "quellport"


def test_examples_follow_prag(docs):
    aug = Augmentation(rewrite="zorvania has quellport as capital", qa=[("what is the capital?", "quellport")])
    ex = examples_from(docs[0], aug)
    # passage, rewrite, and the QA with passage / rewrite / no context
    assert [e.target for e in ex] == [docs[0].full_text, aug.rewrite, "quellport", "quellport", "quellport"]
    assert [e.context for e in ex[2:]] == [docs[0].full_text, aug.rewrite, None]


class Scripted:
    """Wraps an LLM so generate() returns scripted text per prompt kind; counts the prompts it saw."""

    def __init__(self, llm, questions, rewrite="the capital of zorvania is quellport by the lake"):
        self.llm, self.questions, self.rewrite, self.calls = llm, list(questions), rewrite, 0

    def __getattr__(self, name):
        return getattr(self.llm, name)

    def generate(self, prompts, mixtures=None, config=None, **kw):
        self.calls += len(prompts)
        out = []
        for p in prompts:
            if "Write 3 different questions" in p:
                out.append(self.questions.pop(0) if self.questions else "no questions here")
            elif "Rewrite the following" in p:
                out.append(self.rewrite)
            else:
                out.append("quellport")
        return out


def test_failed_parse_is_retried_then_skipped_and_counted(llm, docs, tmp_path):
    # doc 0: malformed then good on retry; doc 1: malformed twice -> skipped
    scripted = Scripted(llm, ["blah", "nothing", "1. What is the capital of zorvania?", "still nothing"])
    aug = GeneratedQAAugmenter(scripted, cache=tmp_path, batch_size=2)
    a0, a1 = aug.generate(docs[:2])
    assert aug.stats.retries == 2 and aug.stats.qa_failures == 1 and aug.failures == 1
    good, bad = (a0, a1) if a0.qa else (a1, a0)
    assert good.qa == [("What is the capital of zorvania?", "quellport")] and not good.failed
    assert bad.qa == [] and bad.failed and bad.rewrite  # still trained on passage + rewrite


def test_cache_is_hit_on_second_run(llm, docs, tmp_path):
    first = GeneratedQAAugmenter(Scripted(llm, ["1. Who built the krell lighthouse?"] * 5), cache=tmp_path)
    ex1 = first(docs)
    assert first.stats.generated == len(docs) and first.stats.cache_hits == 0
    scripted = Scripted(llm, [])
    second = GeneratedQAAugmenter(scripted, cache=tmp_path)
    ex2 = second(docs)
    assert second.stats.cache_hits == len(docs) and second.stats.generated == 0
    assert scripted.calls == 0 and ex2 == ex1


def test_cache_key_depends_on_model_passage_and_prompt_settings(llm, docs, tmp_path):
    from tiny import tiny_llm

    a = GeneratedQAAugmenter(llm, cache=tmp_path)
    assert a.cache_path(docs[0]) != a.cache_path(docs[1])
    assert a.cache_path(docs[0]) != GeneratedQAAugmenter(tiny_llm(seed=1), cache=tmp_path).cache_path(docs[0])
    assert a.cache_path(docs[0]) != GeneratedQAAugmenter(llm, cache=tmp_path, n_qa=2).cache_path(docs[0])


def test_real_generation_on_tiny_model_fills_cache(llm, docs, tmp_path):
    aug = GeneratedQAAugmenter(llm, cache=tmp_path, batch_size=3, max_new_tokens=12, max_rewrite_tokens=12)
    examples = aug(docs)
    assert len(examples) == len(docs) and all(e[0].target == d.full_text for e, d in zip(examples, docs))
    assert aug.stats.generated == len(docs)
    assert len(list(tmp_path.rglob("*.json"))) == len(docs)


def test_fixed_augmenter_refuses_unknown_document(docs):
    fixed = FixedAugmenter({docs[0].id: []})
    assert fixed(docs[:1]) == [[]]
    with pytest.raises(UnknownDocumentError, match="augment them first"):
        fixed([Document(id="new", text="a new passage")])


def test_sentences_answer_the_recall_question_one_sentence_each():
    doc = Document(id="e", title="Izhar Elias",
                   text="Izhar Elias is a Dutch guitarist. He studied with J. Smith in St. Louis.\nHe won prizes!")
    ex = examples_from(doc, Augmentation(rewrite="", qa=[]), ("sentences",))
    assert [e.target for e in ex] == ["Izhar Elias is a Dutch guitarist.", "He studied with J. Smith in St. Louis.",
                                      "He won prizes!"]
    assert {e.question for e in ex} == {"What do you know about Izhar Elias?"} and not any(e.context for e in ex)
    assert PassageAugmenter(("passage", "sentences"))([doc])[0][1:] == ex  # no generation needed
