"""The default recipe sizes the Poly-PRAG bank by the corpus; a bank size given by hand wins; every recipe
setting has its help text, and the recipes keep their values."""
from __future__ import annotations

from dataclasses import fields

import pytest

from polyprag import PolyPRAGEncoder
from polyprag.encoding.augment import PassageAugmenter
from polyprag.errors import InvalidInputError
from polyprag.encoding.recipes import (RECIPES, PolyPRAGConfig, PRAGConfig, Recipe, bank_size, get_recipe,
                                       setting)
from polyprag.evaluation.config import RECIPE_SETTINGS


@pytest.mark.parametrize("documents, m", [(1, 8), (20, 8), (33, 16), (217, 64), (256, 64), (257, 128),
                                          (617, 256), (4096, 1024), (10**6, 1024)])
def test_bank_size_is_about_one_adapter_per_four_documents(documents, m):
    assert bank_size(documents) == m


def test_a_bank_past_its_measured_capacity_is_warned_of(llm, docs, one_thread):
    """More than 4 documents per adapter (where recitation fell from 42% to 15%) warns and says what to do;
    the default size for this corpus does not."""
    import warnings

    with pytest.warns(UserWarning, match=r"documents per adapter.*num_adapters >= 2 or use PRAGEncoder"):
        PolyPRAGEncoder(llm, num_adapters=1, augmenter=PassageAugmenter(), epochs=1, progress=False).fit(docs[:5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PolyPRAGEncoder(llm, augmenter=PassageAugmenter(), epochs=1, progress=False).fit(docs[:5])


def test_default_encoder_sizes_the_bank_and_a_given_size_wins(llm, docs, one_thread):
    assert get_recipe("default").poly.num_adapters is None
    auto = PolyPRAGEncoder(llm, augmenter=PassageAugmenter(), epochs=1, progress=False).fit(docs)
    assert auto.bank.m == bank_size(len(docs)) == 8 and auto.config.m == 8
    given = PolyPRAGEncoder(llm, num_adapters=3, augmenter=PassageAugmenter(), epochs=1, progress=False).fit(docs)
    assert given.bank.m == 3
    with pytest.raises(InvalidInputError, match="routing_active"):
        PolyPRAGEncoder(llm, routing_active=9)


def test_every_recipe_setting_has_its_help():
    for config in (Recipe, PRAGConfig, PolyPRAGConfig):
        for f in fields(config):
            assert f.metadata.get("help"), f"{config.__name__}.{f.name} has no help"
    # the evaluation's flat names cover every setting once (results.json's "training" facts keep their keys)
    paths = [f.name for f in fields(Recipe) if f.type not in ("PRAGConfig", "PolyPRAGConfig")]
    paths += [f"prag.{f.name}" for f in fields(PRAGConfig)] + [f"poly.{f.name}" for f in fields(PolyPRAGConfig)]
    assert sorted(RECIPE_SETTINGS.values()) == sorted(paths)


def test_the_recipes_keep_their_settings():
    """Each recipe's values as the one flat Recipe held them before PRAG and Poly-PRAG got their own configs."""
    shared = dict(temperature=1.0, layers=None, lr_decay=False, stop_loss=None)
    want = {"default": dict(texts=("passage",), rank=2, alpha=32.0, prag_lr=6e-3, prag_epochs=8, lr=2e-3,
                            routing_lr=0.1, epochs=15, num_adapters=None, routing_active=2, prag_layers=12,
                            prag_lr_decay=True, **shared),
            "distill": dict(texts=("passage", "distill"), rank=2, alpha=32.0, prag_lr=6e-3, prag_epochs=8, lr=2e-3,
                            routing_lr=0.1, epochs=15, num_adapters=None, routing_active=2, prag_layers=12,
                            prag_lr_decay=True, **shared),
            "full": dict(texts=("passage",), rank=2, alpha=32.0, prag_lr=2e-3, prag_epochs=15, lr=2e-3,
                         routing_lr=0.1, epochs=15, num_adapters=None, routing_active=2, prag_layers=None,
                         prag_lr_decay=False, **shared),
            "corpus": dict(texts=("passage",), rank=2, alpha=32.0, prag_lr=6e-3, prag_epochs=8, lr=6e-3,
                           routing_lr=0.1, epochs=8, num_adapters=None, routing_active=2, prag_layers=12,
                           prag_lr_decay=True, **{**shared, "layers": 12}),
            "prag-paper": dict(texts=("passage", "rewrite", "qa", "qa_context"), rank=2, alpha=32.0, prag_lr=3e-4,
                               prag_epochs=1, lr=3e-4, routing_lr=3e-4, epochs=1, num_adapters=8, routing_active=0,
                               prag_layers=None, prag_lr_decay=False, **shared)}
    got = {name: {flat: setting(r, path) for flat, path in RECIPE_SETTINGS.items()} for name, r in RECIPES.items()}
    assert got == want


def test_a_method_config_refuses_bad_settings():
    with pytest.raises(InvalidInputError, match="stop_loss"):
        PRAGConfig(lr=1e-3, epochs=1, stop_loss=0)
    with pytest.raises(InvalidInputError, match="num_adapters"):
        PolyPRAGConfig(lr=1e-3, routing_lr=0.1, epochs=1, num_adapters=0)
    with pytest.raises(InvalidInputError, match="routing_active"):
        PolyPRAGConfig(lr=1e-3, routing_lr=0.1, epochs=1, num_adapters=2, routing_active=3)
