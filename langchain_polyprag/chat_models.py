"""ChatPolyPRAG: polyprag's LoRA-mixing LLM as a LangChain chat model, with a mixture bound per model or per call."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Iterator, Optional

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, PrivateAttr, model_validator

from polyprag import (DEFAULT_MODEL, AdapterLibrary, GenerationConfig, InvalidInputError, LoRAMixingLLM, Mixture, PolyPRAG,
                      iterate_in_thread)

from .retrievers import document_ids

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}
_CALL_OPTIONS = ("mixture", "documents", "model", "temperature", "max_tokens")

_loaded: dict[tuple[str, Optional[str]], LoRAMixingLLM] = {}  # (model, device) -> model, shared by instances
_loading = threading.Lock()


def load_llm(model: str, device: Optional[str] = None) -> LoRAMixingLLM:
    """The LoRAMixingLLM for a model name or path, loaded once per process and device."""
    with _loading:
        key = (model, device)
        if key not in _loaded:
            _loaded[key] = LoRAMixingLLM.from_pretrained(model, device=device)
        return _loaded[key]


class ChatPolyPRAG(BaseChatModel):
    """A chat model whose answers can carry knowledge as parameters: a mixture of LoRA adapters, bound to the
    model (``mixture=``/``documents=``) or per call (``.bind(documents=retrieved)``); the model loads on first use.

    Example:
        chat = ChatPolyPRAG(library=library, max_tokens=32)          # or ChatPolyPRAG(model="path/to/hf-model")
        chat.invoke("What is the capital of Zorvania?", documents=["zorvania"]).content
        chain = prompt | chat.bind(documents=["zorvania"]) | StrOutputParser()
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = DEFAULT_MODEL
    """Model name, local Hugging Face folder or hub id, loaded on first use (default: bundled SmolLM2-135M)."""
    llm: Optional[LoRAMixingLLM] = None
    """An already loaded LoRAMixingLLM (or a PolyPRAG, whose llm is used); skips loading ``model``."""
    device: Optional[str] = None
    """Where to load the model: "cpu", "cuda", … (default: CUDA when there is one)."""
    temperature: float = 0.0
    """Sampling temperature; 0 decodes greedily."""
    max_tokens: int = 256
    """Most tokens generated per answer."""
    stop: Optional[list[str]] = None
    """Strings that end an answer where they first appear (not included)."""
    streaming: bool = False
    """Generate through ``_stream`` also in ``invoke`` (token callbacks fire)."""
    mixture: Optional[Mixture] = None
    """A mixture applied to every call unless a call names its own."""
    library: Optional[AdapterLibrary] = None
    """The adapter library that turns ``documents`` into a mixture (its llm is used when ``llm`` is not given)."""
    documents: Optional[list[Any]] = None
    """Documents (ids, polyprag or LangChain Documents) whose mixture every call applies; needs ``library``."""
    rule: Optional[str] = None
    """How the documents' adapters combine: "mean" or "sum" (the library's default when None)."""

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="before")
    @classmethod
    def _unwrap(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("llm"), PolyPRAG):
            values = {**values, "llm": values["llm"].llm}
        return values

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._check()  # after pydantic: our errors reach the caller as polyprag exceptions

    def _check(self) -> None:
        given = self.llm or (self.library.llm if self.library is not None else None)
        if given is not None and "model" not in self.model_fields_set:
            self.model = given.name
        if self.documents is not None and self.library is None:
            raise InvalidInputError("documents=... needs library=AdapterLibrary to turn them into a mixture.")
        if self.max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be >= 1, got {self.max_tokens}.")
        GenerationConfig(max_new_tokens=self.max_tokens, temperature=self.temperature)  # NaN or < 0: refused

    @property
    def _llm_type(self) -> str:
        return "polyprag-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: Optional[list[str]] = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="polyprag", ls_model_type="chat",
                                 ls_model_name=kwargs.get("model") or self.model,
                                 ls_temperature=kwargs.get("temperature", self.temperature),
                                 ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop)
        return params

    # ---- the model and what a call applies ------------------------------------------------------
    def load(self, model: Optional[str] = None) -> LoRAMixingLLM:
        """The LoRAMixingLLM this chat model runs (loaded now if needed; ``model`` picks another one)."""
        if model is not None and model != self.model:
            return load_llm(model, self.device)
        if self.llm is None and self.library is not None:
            return self.library.llm
        with self._lock:
            if self.llm is None:
                self.llm = load_llm(self.model, self.device)
        return self.llm

    def _call(self, messages: list[BaseMessage], stop: Optional[list[str]], kwargs: dict) -> tuple:
        unknown = sorted(set(kwargs) - set(_CALL_OPTIONS))
        if unknown:
            raise InvalidInputError(f"ChatPolyPRAG does not take {unknown}; per-call options are {_CALL_OPTIONS}.")
        llm = self.load(kwargs.get("model"))
        mixture = kwargs.get("mixture")
        if mixture is None:
            docs = kwargs.get("documents")
            mixture = self._documents_mixture(docs) if docs is not None else self.mixture
            if mixture is None and self.documents is not None:
                mixture = self._documents_mixture(self.documents)
        generation = dict(max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                          temperature=kwargs.get("temperature", self.temperature),
                          stop=tuple(stop if stop is not None else self.stop or ()))
        return llm, llm.chat_messages(to_chat_dicts(messages)), mixture, generation

    def _documents_mixture(self, documents: list[Any]) -> Optional[Mixture]:
        if self.library is None:
            raise InvalidInputError("documents=... needs ChatPolyPRAG(library=AdapterLibrary) to build a mixture.")
        return self.library.mixture(document_ids(documents), self.rule)

    def _metadata(self, llm: LoRAMixingLLM) -> dict[str, Any]:
        return {"model_name": llm.name, "model_provider": "polyprag"}

    # ---- LangChain's hooks ----------------------------------------------------------------------
    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        llm, prompt, mixture, generation = self._call(messages, stop, kwargs)
        text = llm.generate([prompt], [mixture], **generation)[0]
        message = AIMessage(content=text, response_metadata=self._metadata(llm))
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output=self._metadata(llm))

    def _pieces(self, messages: list[BaseMessage], stop: Optional[list[str]], kwargs: dict) -> Iterator[Any]:
        llm, prompt, mixture, generation = self._call(messages, stop, kwargs)
        for piece in llm.stream(prompt, mixture, **generation):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata=self._metadata(llm),
                                                         chunk_position="last"))

    def _stream(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for chunk in self._pieces(messages, stop, kwargs):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _agenerate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                         run_manager: Optional[AsyncCallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    async def _astream(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                       run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in iterate_in_thread(lambda: self._pieces(messages, stop, kwargs)):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def to_chat_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the role/content dicts a chat template takes (text content only)."""
    out = []
    for i, m in enumerate(messages):
        role = m.role if isinstance(m, ChatMessage) else _ROLES.get(m.type)
        if role is None:
            raise InvalidInputError(f"Message {i} has type {m.type!r}; use system, human, ai or tool messages.")
        out.append({"role": role, "content": _text(m.content, i)})
    return out


def _text(content: Any, position: int) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise InvalidInputError(f"Message {position} has a {kind!r} content block; ChatPolyPRAG reads text only.")
    return "".join(parts)
