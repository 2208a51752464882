"""PolyPRAGLLM: a LoRAMixingLLM as a LlamaIndex CustomLLM, with an adapter mixture per call."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Sequence

from llama_index.core.base.llms.types import (ChatMessage, ChatResponse, ChatResponseAsyncGen, ChatResponseGen,
                                              CompletionResponse, CompletionResponseAsyncGen,
                                              CompletionResponseGen, LLMMetadata, MessageRole)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, ValidationError
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from polyprag import GenerationConfig, InvalidInputError, LoRAMixingLLM, Mixture, iterate_in_thread

# Roles some chat templates do not know, mapped onto the three every template has.
_ROLE_ALIASES = {MessageRole.DEVELOPER.value: "system", MessageRole.CHATBOT.value: "assistant",
                 MessageRole.MODEL.value: "assistant"}


class PolyPRAGLLM(CustomLLM):
    """A polyprag LoRAMixingLLM for LlamaIndex: ``complete``/``chat`` (sync, async, streaming) take
    ``mixture=`` to answer with that adapter mixture applied; the model loads on first use.

    Example:
        llm = PolyPRAGLLM()                                  # bundled SmolLM2-135M-Instruct, loaded lazily
        llm = PolyPRAGLLM(llm=library.llm, max_new_tokens=32)  # or an already loaded LoRAMixingLLM
        llm.complete("Who built the Krell Lighthouse?", mixture=library.mixture(["krell-lighthouse"]))
        llm.chat([ChatMessage(role="user", content="Hi")])    # rendered with the model's chat template
    """

    model: Optional[str] = Field(default=None, description="HF causal-LM folder or hub id; None: the bundled "
                                                           "SmolLM2-135M-Instruct.")
    device: Optional[str] = Field(default=None, description="Torch device to load on; None: the best available.")
    max_new_tokens: int = Field(default=64, gt=0, description="Tokens generated per answer (LlamaIndex num_output).")
    temperature: float = Field(default=0.0, ge=0.0, description="0 decodes greedily; > 0 samples.")
    stop: list[str] = Field(default_factory=list, description="Strings that end the answer where they appear.")
    context_window: Optional[int] = Field(default=None, gt=0, description="Override of the model's context window.")

    _mixing: Optional[LoRAMixingLLM] = PrivateAttr(default=None)
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, llm: LoRAMixingLLM | None = None, **kwargs: Any):
        if llm is not None and not isinstance(llm, LoRAMixingLLM):
            raise InvalidInputError(f"llm must be a polyprag LoRAMixingLLM, got {type(llm).__name__}; "
                                    "or leave it out and name a model with model=... to load lazily.")
        own_chat = kwargs.get("messages_to_prompt") is not None
        own_completion = kwargs.get("completion_to_prompt") is not None
        try:
            super().__init__(**kwargs)
        except ValidationError as e:  # a bad setting is polyprag's InvalidInputError, as everywhere
            raise InvalidInputError(f"PolyPRAGLLM: {e}") from None
        GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature)
        self._mixing = llm
        # By default both prompt paths go through the model's own chat template.
        if not own_chat:
            self.messages_to_prompt = self._chat_template_prompt
        if not own_completion:
            self.completion_to_prompt = self._user_turn_prompt

    def __repr_args__(self):
        """Its settings by name, and the loaded model's (pydantic's own repr recursed without end)."""
        yield from ((name, getattr(self, name)) for name in ("model", "device", "max_new_tokens", "temperature",
                                                              "stop", "context_window"))
        yield "loaded", None if self._mixing is None else self._mixing.name

    @classmethod
    def class_name(cls) -> str:
        return "PolyPRAGLLM"

    # ---- the model -------------------------------------------------------------------------
    @property
    def mixing_llm(self) -> LoRAMixingLLM:
        """The underlying LoRAMixingLLM, loaded on first use (once, even from several threads)."""
        if self._mixing is None:
            with self._load_lock:
                if self._mixing is None:
                    self._mixing = LoRAMixingLLM.from_pretrained(self.model, device=self.device)
        return self._mixing

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded yet."""
        return self._mixing is not None

    @property
    def metadata(self) -> LLMMetadata:
        llm = self.mixing_llm
        return LLMMetadata(context_window=self.context_window or llm.context_window,
                           num_output=self.max_new_tokens, model_name=llm.name, is_chat_model=True)

    # ---- prompts ---------------------------------------------------------------------------
    def _chat_template_prompt(self, messages: Sequence[ChatMessage]) -> str:
        turns = [{"role": _ROLE_ALIASES.get(m.role.value, m.role.value), "content": m.content or ""}
                 for m in messages]
        return self.mixing_llm.chat_messages(turns)

    def _user_turn_prompt(self, prompt: str) -> str:
        return self.mixing_llm.chat(prompt, system=self.system_prompt)

    # ---- generation (undecorated: every public variant below fires its callback once) -------
    def _options(self, overrides: dict) -> dict:
        opts = dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, stop=tuple(self.stop))
        opts.update(overrides)
        return opts

    def _text(self, prompt: str, formatted: bool, mixture: Mixture | None, overrides: dict) -> str:
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        return self.mixing_llm.generate([prompt], [mixture], **self._options(overrides))[0]

    def _pieces(self, prompt: str, formatted: bool, mixture: Mixture | None, overrides: dict) -> Iterator[str]:
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        return self.mixing_llm.stream(prompt, mixture, **self._options(overrides))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, mixture: Mixture | None = None,
                 **kwargs: Any) -> CompletionResponse:
        return _completion(self._text(prompt, formatted, mixture, kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, mixture: Mixture | None = None,
                        **kwargs: Any) -> CompletionResponseGen:
        return _accumulate(self._pieces(prompt, formatted, mixture, kwargs), _completion)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], mixture: Mixture | None = None,
             **kwargs: Any) -> ChatResponse:
        return _chat(self._text(self.messages_to_prompt(messages), True, mixture, kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], mixture: Mixture | None = None,
                    **kwargs: Any) -> ChatResponseGen:
        return _accumulate(self._pieces(self.messages_to_prompt(messages), True, mixture, kwargs), _chat)

    # ---- async: model work runs in worker threads (they inherit the context), the loop stays free ----
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, mixture: Mixture | None = None,
                        **kwargs: Any) -> CompletionResponse:
        return _completion(await asyncio.to_thread(self._text, prompt, formatted, mixture, kwargs))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, mixture: Mixture | None = None,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return _aaccumulate(lambda: self._pieces(prompt, formatted, mixture, kwargs), _completion)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], mixture: Mixture | None = None,
                    **kwargs: Any) -> ChatResponse:
        prompt = await asyncio.to_thread(self.messages_to_prompt, messages)
        return _chat(await asyncio.to_thread(self._text, prompt, True, mixture, kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], mixture: Mixture | None = None,
                           **kwargs: Any) -> ChatResponseAsyncGen:
        prompt = await asyncio.to_thread(self.messages_to_prompt, messages)
        return _aaccumulate(lambda: self._pieces(prompt, True, mixture, kwargs), _chat)


def _completion(text: str, delta: str | None = None) -> CompletionResponse:
    return CompletionResponse(text=text, delta=delta)


def _chat(text: str, delta: str | None = None) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)


def _accumulate(pieces: Iterator[str], make: Callable[[str, str], Any]) -> Iterator[Any]:
    """Responses carrying the text so far and the new piece, as LlamaIndex streams expect."""
    text = ""
    for piece in pieces:
        text += piece
        yield make(text, piece)


async def _aaccumulate(pieces: Callable[[], Iterator[str]], make: Callable[[str, str], Any]) -> AsyncIterator[Any]:
    """The async twin of ``_accumulate`` over the stream ``pieces()`` makes, each step in a worker thread."""
    text = ""
    async for piece in iterate_in_thread(pieces):
        text += piece
        yield make(text, piece)
