"""Encoding faster: LoRA on the last layers only (a shorter backward pass) and PRAG's per-document early stop."""
from __future__ import annotations

import pytest
import torch

from polyprag import InvalidInputError, PolyPRAGEncoder, PRAGEncoder
from polyprag.encoder import layer_index


def test_layer_index_reads_the_module_name():
    assert layer_index("model.layers.12.mlp.up_proj") == 12
    assert layer_index("transformer.h.3.mlp.c_fc") == 3
    assert layer_index("lm_head") is None


def test_layers_trains_the_last_layers_only(llm, docs, one_thread):
    library = PRAGEncoder(llm, epochs=2, augmenter="passage", layers=1, progress=False).fit(docs)
    names = library.bank.names
    assert names and all(layer_index(n) == 1 for n in names)  # the tiny model has layers 0 and 1
    assert {n.rsplit(".", 1)[-1] for n in names} == {"gate_proj", "up_proj", "down_proj"}
    full = PRAGEncoder(llm, epochs=2, augmenter="passage", progress=False).fit(docs)
    assert len(full.bank.names) == 2 * len(names)
    assert library.config.training["layers"] == 1
    poly = PolyPRAGEncoder(llm, num_adapters=2, epochs=1, augmenter="passage", layers=1, progress=False).fit(docs)
    assert set(poly.bank.names) == set(names)
    with pytest.raises(InvalidInputError, match="layers"):
        PRAGEncoder(llm, layers=0)


def test_a_document_that_learned_its_text_stops_training(llm, docs, one_thread):
    """stop_loss above every loss: each adapter stops after its first epoch, exactly as one epoch leaves it."""
    one = PRAGEncoder(llm, epochs=1, augmenter="passage", progress=False).fit(docs)
    stopped = PRAGEncoder(llm, epochs=6, augmenter="passage", stop_loss=1e6, progress=False).fit(docs)
    six = PRAGEncoder(llm, epochs=6, augmenter="passage", progress=False).fit(docs)
    for a, b, c in zip(one.bank.tensors().values(), stopped.bank.tensors().values(), six.bank.tensors().values()):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    with pytest.raises(InvalidInputError, match="stop_loss"):
        PRAGEncoder(llm, stop_loss=0)


def test_stopped_adapters_stay_while_the_others_train(llm, docs, one_thread):
    """A threshold between the documents' first-epoch losses: the documents under it keep their first-epoch
    adapters exactly, the others go on training."""
    from polyprag.augment import PassageAugmenter
    from polyprag.engine import LoRABank
    from polyprag.methods.prag.training import train_per_document
    from polyprag.training import TrainConfig

    modules = PRAGEncoder(llm, progress=False).trained_modules()
    data = PassageAugmenter(("passage",))(docs)  # one text per document: one step per epoch
    init = LoRABank.initialised(modules, 1, 2, 32.0, seed=0)

    def bank(n):
        return LoRABank(modules, n, 2, 32.0, A=[a.expand(n, -1, -1).clone() for a in init.A])

    # each document's first-epoch loss, trained alone (batched PRAG equals one by one)
    first = [train_per_document(llm, bank(1), [d], TrainConfig(lr=2e-3, epochs=1, progress=False))[0] for d in data]
    ranked = sorted(first)
    cut = (ranked[len(first) // 2 - 1] + ranked[len(first) // 2]) / 2  # halfway between two documents
    stops = [loss < cut for loss in first]
    assert any(stops) and not all(stops)
    one, trained = bank(len(docs)), bank(len(docs))
    train_per_document(llm, one, data, TrainConfig(lr=2e-3, epochs=1, progress=False))
    train_per_document(llm, trained, data, TrainConfig(lr=2e-3, epochs=4, stop_loss=cut, progress=False))
    for a, b in zip(one.parameters(), trained.parameters()):
        for g, stopped in enumerate(stops):
            assert torch.equal(a[g], b[g]) == stopped
