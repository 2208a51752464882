"""The recitals of mode "recite": what each document's own mixture writes back, kept so that a document retrieved
again is not recited again.

A recital depends only on the library state, the document, the token budget and the compute dtype. The Reciter
keys its cache by the state object itself (held weakly, by identity): a live update makes a new state, whose
recitals are written anew, and a state nobody holds any more takes its recitals with it. Each state keeps at
most ``max_recitals`` recitals, the least recently read dropped first, so a long-running server stays bounded.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Sequence

from ..errors import InvalidInputError
from ..generation.llm import GenerationConfig, LoRAMixingLLM
from ..library.state import LibraryState


class Reciter:
    """Recites documents of library states in one batch and keeps their recitals; safe to share between threads
    (questions answered beside an update). Two threads that recite the same document at once may both decode it;
    greedy decoding writes the same recital either way.

    Example:
        reciter = Reciter(llm, max_new_tokens=160)
        reciter.recite([(library.snapshot(), "d0")])  # ["the krell lighthouse was built by …"]
    """

    def __init__(self, llm: LoRAMixingLLM, max_new_tokens: int = 160, max_recitals: int = 4096):
        if max_new_tokens < 1:
            raise InvalidInputError(f"recite_tokens must be >= 1, got {max_new_tokens}.")
        if max_recitals < 1:
            raise InvalidInputError(f"max_recitals must be >= 1, got {max_recitals}.")
        self.llm = llm
        # a recital is greedy and decodes to its end-of-text token (or this budget): the passage, not a sentence
        self.config = GenerationConfig(max_new_tokens=max_new_tokens, short=False)
        self.max_recitals = max_recitals
        self._kept: weakref.WeakKeyDictionary[LibraryState, OrderedDict[tuple, str]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def key(self, doc_id: str) -> tuple:
        """What a recital of a state's document depends on besides the state: the document, budget and dtype."""
        return doc_id, self.config.max_new_tokens, str(self.llm.compute_dtype)

    def recite(self, wanted: Sequence[tuple[LibraryState, str]]) -> list[str]:
        """The recital of each (state, document id), in order: kept ones are read, the others recited in one batch
        (each row applies its own document's mixture to the recital prompt and decodes greedily)."""
        keys = [(state, self.key(doc)) for state, doc in wanted]
        found = self._read(keys)
        todo = list({(id(state), key): (state, key) for state, key in keys if (id(state), key) not in found}.values())
        if todo:
            texts = self.llm.generate([self.llm.recital_prompt] * len(todo),
                                      [state.mixture([key[0]]) for state, key in todo], config=self.config)
            self._keep(list(zip(todo, texts)))
            found |= {(id(state), key): text for (state, key), text in zip(todo, texts)}
        return [found[id(state), key] for state, key in keys]

    def recited(self, state: LibraryState) -> list[str]:
        """Ids of the documents whose recitals this state keeps, least recently read first."""
        with self._lock:
            return [key[0] for key in self._kept.get(state, ())]

    def clear(self) -> None:
        """Forget every recital (the next question recites its documents again)."""
        with self._lock:
            self._kept.clear()

    def _read(self, keys: Sequence[tuple[LibraryState, tuple]]) -> dict[tuple[int, tuple], str]:
        """The kept recitals among ``keys``, by (state identity, key); each read is marked most recent."""
        found = {}
        with self._lock:
            for state, key in keys:
                kept = self._kept.get(state)
                if kept is not None and key in kept:
                    kept.move_to_end(key)
                    found[id(state), key] = kept[key]
        return found

    def _keep(self, recited: Sequence[tuple[tuple[LibraryState, tuple], str]]) -> None:
        """Keep new recitals, dropping a state's least recently read beyond ``max_recitals``."""
        with self._lock:
            for (state, key), text in recited:
                kept = self._kept.setdefault(state, OrderedDict())
                kept[key] = text
                while len(kept) > self.max_recitals:
                    kept.popitem(last=False)
