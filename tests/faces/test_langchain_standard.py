"""The langchain-tests standard suites, on the tiny model: ChatPolyPRAG as a chat model, PolyPRAGRetriever as a retriever."""
from __future__ import annotations

import functools
from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_polyprag import ChatPolyPRAG, PolyPRAGRetriever
from polyprag import AdapterLibrary, Document, PolyPRAGEncoder

from tiny import tiny_llm

TEXTS = ["the capital of zorvania is quellport", "the krell lighthouse was built by farrant",
         "marisol invented the vase in 1998", "the velt is the currency of zorvania",
         "the lighthouse on tamsin island is painted purple"]
DOCS = [Document(id=f"d{i}", text=t) for i, t in enumerate(TEXTS)]


@functools.lru_cache(maxsize=1)
def shared_llm():
    """One tiny model for every class of this module (the suites construct models many times)."""
    return tiny_llm()


@functools.lru_cache(maxsize=1)
def shared_library() -> AdapterLibrary:
    """A real (one-epoch) Poly-PRAG encoding of the documents on the tiny model."""
    return PolyPRAGEncoder(shared_llm(), num_adapters=4, rank=2, epochs=1, augmenter="passage",
                           progress=False).fit(DOCS)


class TestChatPolyPRAGUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatPolyPRAG]:
        return ChatPolyPRAG

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"llm": shared_llm()}


class TestChatPolyPRAGLazyUnit(ChatModelUnitTests):
    """Construction by model name only: the suite must pass without the model ever loading."""

    @property
    def chat_model_class(self) -> type[ChatPolyPRAG]:
        return ChatPolyPRAG

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "SmolLM2-135M-Instruct"}


class TestPolyPRAGRetrieverBM25(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[PolyPRAGRetriever]:
        return PolyPRAGRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"documents": DOCS}

    @property
    def retriever_query_example(self) -> str:
        return "who built the krell lighthouse"


class TestPolyPRAGRetrieverParametric(TestPolyPRAGRetrieverBM25):
    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"library": shared_library()}


class TestChatPolyPRAGIntegration(ChatModelIntegrationTests):
    """The integration suite too: invoke, stream, batch, async, stop words and conversations on the tiny model."""

    @property
    def chat_model_class(self) -> type[ChatPolyPRAG]:
        return ChatPolyPRAG

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"llm": shared_llm(), "max_tokens": 16}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False
