"""PolyPRAGEmbeddings: offline sentence embeddings for LangChain vector stores, from polyprag's SentenceEmbedder."""
from __future__ import annotations

import threading
from typing import Optional

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, PrivateAttr

from polyprag import SentenceEmbedder


class PolyPRAGEmbeddings(BaseModel, Embeddings):
    """Sentence embeddings that need no hub and no API key: the all-MiniLM-L6-v2 bundled by ``polyprag[dense]``,
    or any local sentence-transformers folder; the model loads on first use.

    Example:
        store = InMemoryVectorStore(PolyPRAGEmbeddings())
        store.add_documents(docs)
        retriever = store.as_retriever(search_kwargs={"k": 3})
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: Optional[str] = None
    """A local sentence-transformers folder (default: the bundled all-MiniLM-L6-v2)."""
    device: Optional[str] = None
    """Where to run the embedding model: "cpu", "cuda", … (default: CPU)."""
    batch_size: int = 64
    """Texts embedded per forward pass."""

    _embedder: Optional[SentenceEmbedder] = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def embedder(self) -> SentenceEmbedder:
        """The polyprag SentenceEmbedder underneath, loaded once."""
        with self._lock:
            if self._embedder is None:
                self._embedder = SentenceEmbedder(self.model, device=self.device, batch_size=self.batch_size)
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder()(texts).tolist() if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self.embedder()([text])[0].tolist()
