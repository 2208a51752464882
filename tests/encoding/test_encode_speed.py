"""Encoding faster: LoRA on the last layers only (a shorter backward pass) and PRAG's per-document early stop."""
from __future__ import annotations

import pytest
import torch

from polyprag import InvalidInputError, PolyPRAGEncoder, PRAGEncoder
from polyprag.encoding.training import layer_index


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
    from polyprag.encoding.augment import PassageAugmenter
    from polyprag.engine import LoRABank
    from polyprag.methods.prag.training import train_per_document
    from polyprag.encoding.training import TrainConfig

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


def _train(llm, docs, prefix_on: bool, method=PRAGEncoder, **options):
    import polyprag.encoding.training as training

    real = training.FrozenPrefix.of
    if not prefix_on:
        training.FrozenPrefix.of = classmethod(lambda cls, llm, bank, max_bytes=0: None)
    try:
        torch.manual_seed(0)
        return method(llm, augmenter="passage", progress=False, **options).fit(docs)
    finally:
        training.FrozenPrefix.of = real


@pytest.mark.parametrize("method,options", [(PRAGEncoder, dict(epochs=3)),
                                            (PolyPRAGEncoder, dict(epochs=3, num_adapters=2))])
def test_the_frozen_prefix_trains_the_same_adapters(llm, docs, one_thread, method, options):
    """Layers below the adapters served from the cache: the same adapters as full forward passes every step."""
    cached = _train(llm, docs, True, method, layers=1, **options)
    full = _train(llm, docs, False, method, layers=1, **options)
    for name, t in full.bank.tensors().items():
        assert torch.allclose(cached.bank.tensors()[name], t, atol=1e-5, rtol=1e-4), name


def test_the_frozen_prefix_runs_the_lower_layers_once_per_text(llm, docs, one_thread):
    """Over 4 epochs the first layer runs once per document (its text is the same each epoch); the trained
    layer runs every epoch. Without ``layers`` nothing is skipped."""
    counts = {0: 0, 1: 0}
    layers = llm.model.base_model.layers
    hooks = [layers[i].register_forward_hook(lambda m, a, o, i=i: counts.__setitem__(i, counts[i] + a[0].shape[0]))
             for i in (0, 1)]
    try:
        PRAGEncoder(llm, epochs=4, augmenter="passage", layers=1, progress=False).fit(docs)
        first = dict(counts)
        counts.update({0: 0, 1: 0})
        PRAGEncoder(llm, epochs=4, augmenter="passage", progress=False).fit(docs)
    finally:
        for h in hooks:
            h.remove()
    assert first[1] >= 4 * len(docs)
    assert first[0] <= len(docs) + 2  # + one row twice: the first batch's check (full and split forward)
    assert counts[0] == counts[1] >= 4 * len(docs)


def test_a_model_that_cannot_be_split_trains_with_full_passes(llm, docs, one_thread):
    """If the split forward differs from the full one, training warns and runs every layer, with the same result."""
    from polyprag.encoding.training import FrozenPrefix

    real = FrozenPrefix._check

    def broken(self, batch):
        self._checked = True
        self._top = lambda **kw: (_ for _ in ()).throw(RuntimeError("unsplittable"))
        real(self, batch)

    FrozenPrefix._check = broken
    try:
        with pytest.warns(UserWarning, match="every layer"):
            split = _train(llm, docs, True, layers=1, epochs=2)
    finally:
        FrozenPrefix._check = real
    full = _train(llm, docs, False, layers=1, epochs=2)
    for name, t in full.bank.tensors().items():
        assert torch.allclose(split.bank.tensors()[name], t, atol=1e-6), name


def test_the_prefix_cache_stays_within_its_bytes(llm, docs, one_thread):
    from polyprag.encoding.augment import PassageAugmenter
    from polyprag.encoding.training import FrozenPrefix, collate, tokenize

    enc = PRAGEncoder(llm, layers=1, progress=False)
    from polyprag.engine import LoRABank

    bank = LoRABank.initialised(enc.trained_modules(), 2, 2, 32.0, seed=0)
    rows = [tokenize(llm, ex, 256) for exs in PassageAugmenter(("passage",))(docs) for ex in exs]
    one_row = None
    prefix = FrozenPrefix.of(llm, bank)
    assert prefix is not None and prefix.first == 1
    batch = collate(rows[:1], llm.tokenizer.pad_token_id, llm.device)
    with llm.compute(None):
        prefix.top(batch, rows[:1])
    one_row = prefix.bytes
    small = FrozenPrefix.of(llm, bank, max_bytes=one_row)
    batch = collate(rows, llm.tokenizer.pad_token_id, llm.device)
    with llm.compute(None):
        out = small.top(batch, rows)
        ref = llm.model.base_model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).last_hidden_state
    assert small.bytes <= one_row and len(small._cache) <= 1
    mask = batch["attention_mask"].bool()
    assert torch.allclose(out[mask], ref[mask], atol=1e-5)
    assert FrozenPrefix.of(llm, LoRABank.initialised(PRAGEncoder(llm, progress=False).trained_modules(), 1, 2, 32.0)) is None


def test_lr_decay_falls_linearly_and_changes_training(llm, docs, one_thread):
    from polyprag.encoding.training import TrainConfig, set_lr

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p], "lr": 0.4}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2.0}])
    seen = []
    for t in range(4):
        set_lr(opt, [0.4, 2.0], TrainConfig(lr_decay=True), t, 4)
        seen += [g["lr"] for g in opt.param_groups]
    assert seen == pytest.approx([0.4, 2.0, 0.3, 1.5, 0.2, 1.0, 0.1, 0.5])
    set_lr(opt, [0.4, 2.0], TrainConfig(), 3, 4)
    assert [g["lr"] for g in opt.param_groups] == [0.4, 2.0]
    flat = PRAGEncoder(llm, epochs=3, augmenter="passage", lr_decay=False, progress=False).fit(docs)
    decayed = PRAGEncoder(llm, epochs=3, augmenter="passage", lr_decay=True, progress=False).fit(docs)
    one = PRAGEncoder(llm, epochs=1, augmenter="passage", lr_decay=True, progress=False).fit(docs)
    first = PRAGEncoder(llm, epochs=1, augmenter="passage", lr_decay=False, progress=False).fit(docs)
    assert decayed.config.training["lr_decay"] is True
    assert any(not torch.equal(a, b) for a, b in zip(flat.bank.tensors().values(), decayed.bank.tensors().values()))
    for a, b in zip(one.bank.tensors().values(), first.bank.tensors().values()):
        assert torch.equal(a, b)  # step 0 of 1 runs at the full rate
