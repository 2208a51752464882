"""A fake embedding for tests: deterministic, instant, and similar texts really are close."""
from __future__ import annotations

import re
import zlib

import numpy as np


def word_embed(texts, dim: int = 64) -> np.ndarray:
    """A bag-of-words embedding [len(texts), dim]: each word adds 1 to a hashed coordinate."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            out[row, zlib.crc32(word.encode()) % dim] += 1.0
    return out
