"""The benchmarks run from a clone alone: no ../shared beside it, the tests' tiny model, seconds."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is a folder of the clone, not part of the installed package

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """The clone as a user has it: nothing at ../shared/data."""
    from bench import common

    monkeypatch.setattr(common, "SHARED_DATA", tmp_path / "shared" / "data" / "popqa")
    return tmp_path


def test_every_engine_figure_runs_from_the_clone_alone(no_shared):
    from bench.__main__ import main

    out = no_shared / "results"
    assert main(["--quick", "--random-llama", "tiny", "--out", str(out)]) == 0
    report = json.loads((out / "cpu-tiny-llama-quick.json").read_text())
    assert set(report["figures"]) == {
        "1_parametric_vs_in_context", "G1_tokens_per_s", "G2_mixtures_16_vs_1", "G3_captured_vs_eager",
        "2_mixture_vs_bare",
        "3_switch_vs_peft", "4_batched_vs_one_by_one", "5_storage_per_document", "6_add_document_vs_prag",
        "7_add_document_vs_reencode", "memory_library_vs_model"}
    assert "invented facts" in report["machine"]["data"]
    assert all(f["ratio"] > 0 for f in report["figures"].values())


def test_generation_section_writes_its_own_results(no_shared):
    from bench.generation import main

    out = no_shared / "results"
    assert main(["--quick", "--random-llama", "tiny", "--out", str(out)]) == 0
    figures = json.loads((out / "cpu-tiny-llama-generation-quick.json").read_text())["figures"]
    assert set(figures) == {"1_parametric_vs_in_context", "G1_tokens_per_s", "G2_mixtures_16_vs_1",
                            "G3_captured_vs_eager"}
    assert figures["G1_tokens_per_s"]["polyprag_tokens_per_s_16"] > 0


def test_a_data_folder_that_does_not_exist_is_refused_not_replaced(no_shared):
    from bench.common import corpus_and_questions

    with pytest.raises(FileNotFoundError, match="leave --data out"):
        corpus_and_questions(4, no_shared / "typo")


def test_bm25_benchmark_runs_on_a_zipf_corpus_without_shared_data(no_shared, capsys):
    from bench.bench_bm25 import main

    out = no_shared / "bm25.json"
    assert main(["--data", str(no_shared / "shared" / "data"), "--sizes", "300", "--queries", "5",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["passages"] == "zipf" and report["sizes"][0]["same_top_k"] == 5
    assert "Zipf" in capsys.readouterr().out


def test_retrieval_benchmark_falls_back_to_the_facts_that_ship(no_shared):
    from bench.bench_retrieval import slices

    found = slices(no_shared / "shared" / "data")
    docs, questions = found["invented"]
    assert len(docs) == len(questions) == 14
    assert all(g in {d.id for d in docs} for q in questions for g in q.gold)


def test_bench_command_of_an_installed_package_says_what_it_needs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not inside a clone either
    from polyprag import cli

    monkeypatch.setattr(cli, "REPO", tmp_path)  # site-packages: no bench/ beside the package
    assert cli.cmd_bench(argparse.Namespace(suite="engine", passthrough=["--quick"])) == 1
    assert "clone the repository" in capsys.readouterr().err


def test_bench_command_of_an_installed_package_runs_the_clone_it_is_called_in(tmp_path, monkeypatch):
    from polyprag import cli

    monkeypatch.setattr(cli, "REPO", tmp_path)  # installed into site-packages, called inside a clone
    monkeypatch.chdir(ROOT)
    out = tmp_path / "bm25.json"
    args = argparse.Namespace(suite="bm25", passthrough=["--data", str(tmp_path), "--sizes", "200", "--queries",
                                                         "3", "--out", str(out)])
    assert cli.cmd_bench(args) == 0
    assert json.loads(out.read_text())["sizes"][0]["documents"] == 200


def test_each_figure_is_printed_as_it_is_measured_and_the_budget_skips_the_rest(no_shared, capsys):
    from bench.__main__ import main

    out = no_shared / "results"
    assert main(["--quick", "--random-llama", "tiny", "--out", str(out), "--only", "5_storage_per_document"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("5_storage")]
    assert "measuring" in lines[0] and "ratio" in lines[1]  # announced, then its figure the moment it is done
    assert main(["--quick", "--random-llama", "tiny", "--out", str(out), "--budget-s", "0"]) == 0
    printed = capsys.readouterr().out
    assert "1_parametric_vs_in_context   skipped: the suite's 0 s budget is spent" in printed
    assert "measuring" not in printed


def test_the_prepared_gpu_run_runs_end_to_end_on_the_cpu(no_shared):
    """bench/gpu.py on the tiny model: every step measured (none failed or skipped), one JSON."""
    from bench.gpu import main

    out = no_shared / "gpu.json"
    assert main(["--random-llama", "tiny", "--device", "cpu", "--questions", "2", "--epochs", "1",
                 "--eval-methods", "closed_book,in_context,prag", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert set(steps) == {"1_convert_and_load", "2_prag_encode", "3_poly_encode", "4_captured_vs_eager", "5_eval"}
    assert not report["skipped"] and not [s for s in steps.values() if "error" in s]
    assert [r["size"] for r in steps["2_prag_encode"]["sizes"]] == [2, 4]
    assert all(r["s_per_doc"] > 0 for r in steps["3_poly_encode"]["sizes"])
    assert steps["4_captured_vs_eager"]["4"]["captured_tokens_per_s"] > 0
    assert set(steps["5_eval"]["results"]) == {"closed_book", "in_context", "prag", "best_reading"}
