"""PolyPRAGEmbedding: offline sentence embeddings for LlamaIndex indexes, from polyprag's SentenceEmbedder."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Optional

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from polyprag import SentenceEmbedder


class PolyPRAGEmbedding(BaseEmbedding):
    """Sentence embeddings that need no hub and no API key (LlamaIndex ``Settings`` stay untouched): the
    all-MiniLM-L6-v2 bundled by ``polyprag[dense]``, or any local sentence-transformers folder; loads on first use.

    Example:
        index = VectorStoreIndex.from_documents(documents, embed_model=PolyPRAGEmbedding())
        engine = PolyPRAGQueryEngine.from_index(index, library)
    """

    model: Optional[str] = Field(default=None, description="A local sentence-transformers folder (default: the "
                                                           "bundled all-MiniLM-L6-v2).")
    device: Optional[str] = Field(default=None, description="Where to run the embedding model (default: CPU).")

    _embedder: Optional[SentenceEmbedder] = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, model: Optional[str] = None, device: Optional[str] = None, **kwargs: Any):
        kwargs.setdefault("model_name", model or "all-MiniLM-L6-v2")
        super().__init__(model=model, device=device, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "PolyPRAGEmbedding"

    def embedder(self) -> SentenceEmbedder:
        """The polyprag SentenceEmbedder underneath, loaded once."""
        with self._lock:
            if self._embedder is None:
                self._embedder = SentenceEmbedder(self.model, device=self.device, batch_size=self.embed_batch_size)
        return self._embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.embedder()([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.embedder()([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self.embedder()(texts).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)
