"""Blocking iterators (a model's token stream) made async for both faces, the event loop left free."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


async def iterate_in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Items of a blocking iterator, made and advanced in worker threads; closed when the caller stops."""
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
