"""A library mixture exported as a peft folder reproduces polyprag's own logits through plain peft."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import random_bank
from tiny import tiny_model

from polyprag import AdapterLibrary, InvalidInputError, UnknownDocumentError
from polyprag.library.export import CONFIG_FILE, WEIGHTS_FILE, export_peft
from polyprag.library.state import LibraryConfig

PROMPTS = ["the capital of zorvania is", "who built the krell lighthouse"]


def _library(llm, docs, kind: str) -> AdapterLibrary:
    m = len(docs) if kind == "prag" else 4
    bank = random_bank(llm, m, rank=2, alpha=8.0, seed=3)
    cfg = LibraryConfig(kind=kind, rank=2, alpha=8.0, m=m, target_modules=list(llm.target_modules),
                        base_model=llm.fingerprint(), model_name="tiny-llama")
    routing = torch.randn(len(docs), m, generator=torch.Generator().manual_seed(1)) * 2 if kind == "poly" else None
    return AdapterLibrary(llm, bank, docs, cfg, routing_logits=routing)


def _peft_logits(llm, folder, ids, mask):
    from peft import PeftModel

    base = tiny_model()  # a fresh copy of the base weights: no polyprag hooks
    base.load_state_dict(llm.model.state_dict())
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("kind, combine, ids", [("poly", "mean", ["d0", "d2", "d4"]),
                                                 ("poly", "sum", ["d1", "d3"]),
                                                 ("prag", "sum", ["d0", "d2", "d3"])])
def test_exported_adapter_reproduces_polyprag_logits_through_peft(llm, docs, tmp_path, kind, combine, ids):
    library = _library(llm, docs, kind)
    enc = llm.encode(PROMPTS)
    ours = llm.logits(enc["input_ids"], enc["attention_mask"], library.mixture(ids, combine))
    bare = llm.logits(enc["input_ids"], enc["attention_mask"])
    assert (ours - bare).abs().max() > 1e-2  # the mixture matters, so matching it means something
    folder = export_peft(library, ids, tmp_path / "adapter", rule=combine)
    theirs = _peft_logits(llm, folder, enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    terms = 1 if combine == "mean" else len(ids)
    assert cfg["r"] == terms * library.bank.rank  # a sum concatenates the documents' ranks
    assert cfg["target_modules"] == sorted(llm.target_modules)


def test_export_uses_peft_key_names(llm, docs, tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    folder = export_peft(_library(llm, docs, "poly"), ["d0"], tmp_path / "a")
    reference = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=list(llm.target_modules)))
    reference.save_pretrained(tmp_path / "ref")
    assert set(load_file(str(folder / WEIGHTS_FILE))) == set(load_file(str(tmp_path / "ref" / WEIGHTS_FILE)))


def test_zero_padded_rank_changes_nothing(llm, docs, tmp_path):
    library = _library(llm, docs, "poly")
    enc = llm.encode(PROMPTS[:1])
    ours = llm.logits(enc["input_ids"], enc["attention_mask"], library.mixture(["d1", "d2"], "sum"))
    folder = export_peft(library, ["d1", "d2"], tmp_path / "p", rule="sum", pad_rank=8)
    assert json.loads((folder / CONFIG_FILE).read_text())["r"] == 8
    torch.testing.assert_close(_peft_logits(llm, folder, enc["input_ids"], enc["attention_mask"]), ours,
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(InvalidInputError, match="pad_rank"):
        export_peft(library, ["d1", "d2"], tmp_path / "q", rule="sum", pad_rank=3)


def test_bad_requests_are_refused(llm, docs, tmp_path):
    library = _library(llm, docs, "poly")
    with pytest.raises(InvalidInputError, match="at least one document"):
        export_peft(library, [], tmp_path / "e")
    with pytest.raises(UnknownDocumentError, match="nope"):
        export_peft(library, ["d0", "nope"], tmp_path / "e")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        export_peft(library, ["d0"], tmp_path / "file")
