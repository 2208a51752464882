"""A 10-question evaluation slice over the conftest documents, written as corpus.jsonl and questions.jsonl."""
from __future__ import annotations

from polyprag.documents import save_jsonl

QUESTIONS = [
    ("what is the capital of zorvania", ["quellport"], ["d0"]),
    ("who built the krell lighthouse", ["farrant"], ["d1"]),
    ("who invented the vase", ["marisol"], ["d2"]),
    ("what is the currency of zorvania", ["velt", "the velt"], ["d3"]),
    ("which lighthouse is painted purple", ["tamsin"], ["d4"]),
    ("when was the vase invented", ["1998"], ["d2"]),
    ("what city is the capital of zorvania", ["quellport"], ["d0"]),
    ("what is the krell lighthouse", ["lighthouse"], ["d1"]),
    ("where is the purple lighthouse", ["tamsin island"], ["d4"]),
    ("what is the velt", ["currency"], ["d3", "d0"]),
]


def write_slice(folder, docs):
    folder.mkdir(parents=True, exist_ok=True)
    save_jsonl([{"id": d.id, "title": d.title, "text": d.text} for d in docs], folder / "corpus.jsonl")
    save_jsonl([{"id": f"q{i}", "question": q, "answers": a, "gold": g} for i, (q, a, g) in enumerate(QUESTIONS)],
               folder / "questions.jsonl")
    return folder
