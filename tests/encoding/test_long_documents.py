"""Long documents are kept whole: a text longer than one training window (max_length) is trained on windows over
all of its tokens, by PRAG and Poly-PRAG alike, so what comes after the first window is learned too."""
from __future__ import annotations

import pytest
import torch

from polyprag import BM25Retriever, Document, ParametricRetriever, PolyPRAG, PolyPRAGEncoder, PRAGEncoder
from polyprag.encoding.augment import PassageAugmenter, TrainingExample

WORDS = "the capital of zorvania is quellport and the krell lighthouse was built by farrant".split()


def long_text(n_words: int, tail: str = "") -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words)) + (" " + tail if tail else "")


def test_every_token_of_a_50000_word_document_is_learned_once(llm):
    from polyprag.encoding.training import windows

    text = long_text(50_000)
    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"] + [llm.tokenizer.eos_token_id]
    rows = windows(llm, TrainingExample(target=text), 256)
    assert all(len(r.ids) <= 256 for r in rows)
    assert [t for r in rows for t in r.labels if t != -100] == ids  # all ~100,000 tokens, each once, in order
    assert len(rows) == 1 + -(-(len(ids) - 255) // (255 - 63))  # windows of 255 tokens, 63 of them context
    assert all(r.ids[0] == rows[0].ids[0] for r in rows)  # each window starts as a text does
    short = windows(llm, TrainingExample(target="the capital of zorvania is quellport"), 256)
    assert len(short) == 1  # a text that fits is one row, as before


@pytest.mark.parametrize("encoder", [PRAGEncoder, PolyPRAGEncoder])
def test_what_follows_the_first_window_changes_the_adapter(llm, encoder):
    """Two documents equal in their first 400 tokens (past the 256 of a window) and different after them get
    different adapters: the tail was trained on. Cut to one window, they would be trained identically."""
    opts = dict(augmenter="passage", epochs=1, progress=False, seed=0, rank=2)
    if encoder is PolyPRAGEncoder:
        opts["num_adapters"] = 2
    a = encoder(llm, **opts).fit([Document(id="d", text=long_text(300, "the moon is red"))])
    b = encoder(llm, **opts).fit([Document(id="d", text=long_text(300, "the lake is blue"))])
    assert len(llm.tokenizer(long_text(300))["input_ids"]) > 400
    assert not all(torch.equal(x, y) for x, y in zip(a.bank.B, b.bank.B))


FILLER = [
    "Harrowgate is a small market town on the northern bank of the river Lune, and its first charter was "
    "granted by a travelling bishop who stayed for one winter.",
    "The town grew around a wool exchange, and its square still holds the old weighing stones.",
    "In spring the meadows to the east flood, and the farmers move their sheep to the hills.",
    "A narrow stone bridge with seven arches links the town to the villages on the southern bank.",
    "The parish church has a squat tower and a bell that was recast after a fire.",
    "Every autumn a fair fills the square with stalls of apples, cheese and woven blankets.",
    "The railway arrived late, and the station sits a mile outside the town among birch trees.",
    "Most houses are built of grey stone quarried from the ridge behind the church.",
    "The local school teaches about three hundred children from the town and the farms around it.",
    "A museum in the old tannery shows tools, looms and photographs of the wool trade.",
    "Walkers come in summer to follow the river path up to the waterfalls at the head of the valley.",
    "The town council meets in a hall above the covered market, which opens on Tuesdays and Saturdays.",
    "Two inns face each other across the square, and each claims to be the older one.",
    "The winters are long and wet, and snow closes the high road a few days each year.",
    "A cooperative dairy on the edge of town buys milk from most of the valley's farms.",
]
FACT = "The keeper of the Harrowgate lighthouse is Oswin Tarrow."
TAIL = ["The lighthouse stands on a rock at the mouth of the estuary, far below the town.",
        "Its lamp was once fed with whale oil and is now electric."]
QUESTION = "Who is the keeper of the Harrowgate lighthouse?"


@pytest.mark.model
def test_a_fact_after_the_first_window_is_answered(real_llm):
    """A fact placed after the first 256 tokens of a document is answered from its adapter (parametric mode, no
    passage in the prompt); the same document cut to its first window, as training once cut it, cannot answer.

    Read through the recipe's texts plus "sentences" (each sentence answers the recall question): with the
    passage alone, the 135M model recites a document but does not answer questions about its middle."""
    tok = real_llm.tokenizer
    text = " ".join(FILLER + [FACT] + TAIL)
    full = f"Harrowgate: {text}"
    assert len(tok(full[:full.index(FACT)], add_special_tokens=False)["input_ids"]) > 256
    whole = Document(id="town", title="Harrowgate", text=text)
    cut = Document(id="town", title="Harrowgate", text=tok.decode(tok(text, add_special_tokens=False)["input_ids"][:250]))
    assert "Oswin" not in cut.text
    answers = {}
    for name, doc in (("whole", whole), ("cut", cut)):
        library = PRAGEncoder(real_llm, progress=False, augmenter=PassageAugmenter(("passage", "sentences"))).fit([doc])
        rag = PolyPRAG(real_llm, ParametricRetriever(BM25Retriever([doc], k=1), library), mode="parametric",
                       max_new_tokens=24)
        answers[name] = rag.answer(QUESTION).text
    print(answers)
    assert "Oswin Tarrow" in answers["whole"]
    assert "Oswin" not in answers["cut"] and "Tarrow" not in answers["cut"]
