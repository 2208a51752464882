"""Streaming helper shared by the chat model and the runnable: sync iterators made async."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


async def iterate_in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Items of a blocking iterator, each ``next`` run in a worker thread so the event loop stays free."""
    iterator = await asyncio.to_thread(make)  # to_thread copies the context: mixtures stay per call
    try:
        while True:
            item = await asyncio.to_thread(next, iterator, _END)
            if item is _END:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
