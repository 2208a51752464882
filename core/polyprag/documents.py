"""Documents and questions, and the JSONL files that hold them."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import CorpusFormatError, DuplicateDocumentError, InvalidInputError


def passage_id(title: str, text: str) -> str:
    """The corpus id convention of shared/data: first 12 hex digits of sha1(title + "\\n" + text)."""
    return hashlib.sha1(f"{title}\n{text}".encode("utf-8")).hexdigest()[:12]


def content_keys(document: "Document") -> set[str]:
    """The ``passage_id``s a copy of this document may carry: of (title, text), of the text alone and of
    "title: text", so a copy that lost its title, or carries it inside its text, is still recognised."""
    return {passage_id(document.title, document.text), passage_id("", document.text),
            passage_id("", document.full_text)}


@dataclass(frozen=True)
class Document:
    """One passage of knowledge: an id, its text, an optional title and free metadata."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise InvalidInputError(f"Document id must be a non-empty string, got {self.id!r}.")
        if not isinstance(self.text, str):
            hint = " (decode it first, e.g. data.decode('utf-8'))" if isinstance(self.text, (bytes, bytearray)) else ""
            raise InvalidInputError(f"Document {self.id!r} has text of type {type(self.text).__name__}; give a "
                                    f"string{hint}.")
        if not self.text.strip():
            raise InvalidInputError(f"Document {self.id!r} has empty text; drop it or give it content.")
        if not isinstance(self.title, str):
            raise InvalidInputError(f"Document {self.id!r} has a title of type {type(self.title).__name__}; "
                                    "give a string (or leave it out).")
        for part in ("id", "title", "text"):
            check_text(getattr(self, part), f"Document {part}")

    @classmethod
    def from_text(cls, text: str, title: str = "", **metadata: Any) -> "Document":
        """A document whose id is derived from its content, as in shared/data."""
        return cls(id=passage_id(title, text), text=text, title=title, metadata=metadata)

    @property
    def full_text(self) -> str:
        """Title and text as one passage, the way it is shown to the model and to BM25."""
        return f"{self.title}: {self.text}" if self.title else self.text


@dataclass(frozen=True)
class Question:
    """A benchmark question with its answer aliases and the ids of its gold passages."""

    id: str
    question: str
    answers: tuple[str, ...] = ()
    gold: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def check_text(value: str, what: str) -> str:
    """``value``, refused when it cannot be written as UTF-8 (lone surrogates from a bad decode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(f"{what} holds characters that are not valid Unicode ({e.reason} at position "
                                f"{e.start}); decode the source text as UTF-8, e.g. with errors='replace'.") from None
    return value


def check_unique(docs: Iterable[Document]) -> list[Document]:
    """The documents as a list, refusing duplicate ids (and one document or a string given instead of a list)."""
    if isinstance(docs, (Document, str, bytes, dict)):
        raise InvalidInputError(f"Expected a list of polyprag.Document, got one {type(docs).__name__}; pass a list, "
                                "e.g. [document].")
    try:
        out = list(docs)
    except TypeError:
        raise InvalidInputError(f"Expected a list of polyprag.Document, got {type(docs).__name__}.") from None
    seen: dict[str, int] = {}
    for i, d in enumerate(out):
        if not isinstance(d, Document):
            raise InvalidInputError(f"Expected polyprag.Document at position {i}, got {type(d).__name__}.")
        if d.id in seen:
            raise DuplicateDocumentError(
                f"Document id {d.id!r} appears twice (positions {seen[d.id]} and {i}); ids must be unique."
            )
        seen[d.id] = i
    return out


def _read_jsonl(path: str | Path) -> Iterable[tuple[int, dict]]:
    path = Path(path)
    if not path.is_file():
        raise CorpusFormatError(f"{path}: no such file.")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusFormatError(
                    f"{path}, line {lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                    "re-encode the file as UTF-8."
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusFormatError(f"{path}, line {lineno}: not valid JSON ({e.msg}).") from None
            if not isinstance(row, dict):
                raise CorpusFormatError(f"{path}, line {lineno}: expected a JSON object per line.")
            yield lineno, row


def load_corpus(path: str | Path) -> list[Document]:
    """Read a corpus JSONL file of {"id", "title", "text"} rows (id optional: derived from content)."""
    docs = []
    for lineno, row in _read_jsonl(path):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise CorpusFormatError(f"{path}, line {lineno}: missing or empty \"text\".")
        title = row.get("title") or ""
        doc_id = str(row["id"]) if row.get("id") is not None else passage_id(title, text)
        extra = {k: v for k, v in row.items() if k not in ("id", "title", "text")}
        docs.append(Document(id=doc_id, text=text, title=title, metadata=extra))
    if not docs:
        raise CorpusFormatError(f"{path}: the corpus is empty.")
    return check_unique(docs)


def load_questions(path: str | Path) -> list[Question]:
    """Read a questions JSONL file of {"id", "question", "answers", "gold"} rows."""
    out = []
    for lineno, row in _read_jsonl(path):
        q = row.get("question")
        if not isinstance(q, str) or not q.strip():
            raise CorpusFormatError(f"{path}, line {lineno}: missing or empty \"question\".")
        answers = row.get("answers") or []
        if isinstance(answers, str):
            answers = [answers]
        extra = {k: v for k, v in row.items() if k not in ("id", "question", "answers", "gold")}
        out.append(Question(id=str(row.get("id", lineno)), question=q, answers=tuple(map(str, answers)),
                            gold=tuple(map(str, row.get("gold") or [])), metadata=extra))
    return out


def save_jsonl(rows: Iterable[dict], path: str | Path) -> None:
    """Write rows as JSONL (UTF-8)."""
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
