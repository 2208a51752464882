"""The default recipe sizes the Poly-PRAG bank by the corpus; a bank size given by hand wins."""
from __future__ import annotations

import pytest

from polyprag import PolyPRAGEncoder
from polyprag.encoding.augment import PassageAugmenter
from polyprag.errors import InvalidInputError
from polyprag.encoding.recipes import bank_size, get_recipe


@pytest.mark.parametrize("documents, m", [(1, 8), (20, 8), (33, 16), (217, 64), (256, 64), (257, 128),
                                          (10**6, 256)])
def test_bank_size_is_about_one_adapter_per_four_documents(documents, m):
    assert bank_size(documents) == m


def test_default_encoder_sizes_the_bank_and_a_given_size_wins(llm, docs, one_thread):
    assert get_recipe("default").num_adapters is None
    auto = PolyPRAGEncoder(llm, augmenter=PassageAugmenter(), epochs=1, progress=False).fit(docs)
    assert auto.bank.m == bank_size(len(docs)) == 8 and auto.config.m == 8
    given = PolyPRAGEncoder(llm, num_adapters=3, augmenter=PassageAugmenter(), epochs=1, progress=False).fit(docs)
    assert given.bank.m == 3
    with pytest.raises(InvalidInputError, match="routing_active"):
        PolyPRAGEncoder(llm, routing_active=9)
