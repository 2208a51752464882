"""`polyprag inspect`: the routing heat map + bank-usage PNG and the numbers printed beside it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import random_bank
from tiny import tiny_model, tiny_tokenizer

from polyprag import AdapterLibrary, Document, InvalidInputError, LoRAMixingLLM
from polyprag.cli import main
from polyprag.library.state import LibraryConfig
from polyprag.library.plots import plot_routing, routing_summary, sample_rows


def _library(llm, n: int, m: int = 6, kind: str = "poly", collapsed: bool = False) -> AdapterLibrary:
    docs = [Document(id=f"doc{i}", text=f"passage {i} about zorvania", title=f"Title {i}") for i in range(n)]
    m = n if kind == "prag" else m
    routing = None
    if kind == "poly":
        routing = torch.full((n, m), -4.0)
        routing[torch.arange(n), torch.arange(n) % (1 if collapsed else m)] = 4.0  # each doc prefers one adapter
    cfg = LibraryConfig(kind=kind, rank=2, alpha=8.0, m=m, target_modules=list(llm.target_modules),
                        base_model=llm.fingerprint(), model_name=llm.name)
    return AdapterLibrary(llm, random_bank(llm, m), docs, cfg, routing_logits=routing)


def test_summary_tells_specialised_from_collapsed_routing(llm):
    spread = routing_summary(_library(llm, 12))
    collapsed = routing_summary(_library(llm, 12, collapsed=True))
    assert spread["top1_counts"] == [2] * 6 and spread["unused_adapters"] == 0
    assert collapsed["top1_counts"][0] == 12 and collapsed["unused_adapters"] == 5
    assert np.isclose(sum(spread["usage"]), 12)  # each document's weights sum to one
    assert spread["mean_normalised_entropy"] < 0.5


@pytest.mark.parametrize("n, kind", [(8, "poly"), (150, "poly"), (5, "prag")])
def test_png_is_written_and_readable(llm, tmp_path, n, kind):
    import matplotlib.image as mpimg

    out = plot_routing(_library(llm, n, kind=kind), tmp_path / "sub" / "routing.png")
    img = mpimg.imread(out)  # a real PNG decodes
    assert img.shape[0] > 200 and img.shape[1] > 600
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_many_documents_are_sampled_evenly():
    rows = sample_rows(1000, 60)
    assert len(rows) == 60 and rows[0] == 0 and rows[-1] == 999
    assert sample_rows(10, 60) == list(range(10))


def test_bad_output_name_is_refused(llm, tmp_path):
    with pytest.raises(InvalidInputError, match=".png"):
        plot_routing(_library(llm, 3), tmp_path / "routing.txt")


@pytest.fixture
def saved(tmp_path):
    """A library saved on a tiny model that itself is saved, so the CLI can load both by path."""
    tiny_model().save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    llm = LoRAMixingLLM.from_pretrained(str(tmp_path / "model"), device="cpu")
    _library(llm, 10).save(tmp_path / "lib")
    return tmp_path


def test_inspect_command_writes_png_and_json(saved, capsys):
    code = main(["inspect", "--library", str(saved / "lib"), "--out", str(saved / "r.png"), "--json"])
    assert code == 0 and (saved / "r.png").stat().st_size > 10_000
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 10 and summary["adapters"] == 6 and summary["picture"].endswith("r.png")


def test_export_command_by_question(saved, capsys):
    code = main(["export", "--library", str(saved / "lib"), "--question", "passage 7",
                 "--k", "2", "--rule", "sum", "--out", str(saved / "ad"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["rank"] == 4 and report["documents"][0] == "doc7"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(report["files"])


def test_commands_refuse_a_folder_that_is_not_a_library(tmp_path, capsys):
    assert main(["inspect", "--library", str(tmp_path), "--out", str(tmp_path / "r.png")]) == 2
    assert f"{tmp_path} is not an adapter library" in capsys.readouterr().err
    assert main(["export", "--library", str(tmp_path), "--docs", "d0", "--out", str(tmp_path / "ad")]) == 2
    assert "create one with `polyprag encode`" in capsys.readouterr().err
