"""The `polyprag` command: encode, ask, eval and demo on the tiny model saved as a local model folder."""
from __future__ import annotations

import json

import pytest

from polyprag.cli import COMMANDS, build_parser, main
from polyprag.documents import save_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")  # generation-heavy: one torch thread


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model and tokenizer saved as an HF folder, so `--model PATH` loads it like any model."""
    from tiny import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture
def corpus(tmp_path, docs):
    path = tmp_path / "corpus.jsonl"
    save_jsonl([{"id": d.id, "title": d.title, "text": d.text} for d in docs], path)
    return str(path)


def test_every_registered_command_parses():
    parser = build_parser()
    assert {"encode", "add", "delete", "ask", "eval", "demo"} <= set(COMMANDS)
    args = parser.parse_args(["eval", "--data", "d", "--n", "5", "--methods", "prag,polyprag_sum",
                              "--compute-dtype", "bfloat16"])
    assert args.methods == ("prag", "polyprag_sum") and args.n == 5 and args.compute_dtype == "bfloat16"


@pytest.mark.parametrize("method", ["poly", "prag"])
def test_encode_then_ask(method, model_dir, corpus, tmp_path, capsys):
    lib = tmp_path / "lib"
    assert main(["encode", corpus, str(lib), "--method", method, "--model", model_dir, "--augment", "passage",
                 "--epochs", "1", "-q"]) == 0
    assert "Encoded 5 documents" in capsys.readouterr().out
    assert json.loads((lib / "config.json").read_text())["kind"] == ("poly" if method == "poly" else "prag")
    assert main(["ask", str(lib), "what is the capital of zorvania", "--k", "2", "--max-new-tokens", "3",
                 "--json"]) == 0  # the model is found from the library's config
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "combine_ensemble" and len(out["documents"]) == 2  # polyprag's default mode
    assert out["documents"][0]["id"] == "d0"  # BM25 puts the zorvania capital passage first
    assert main(["ask", str(lib), "who built the krell lighthouse", "--mode", "in_context", "--corpus", corpus,
                 "--max-new-tokens", "2"]) == 0


def test_encode_takes_the_options_left_unset_from_the_recipe(model_dir, corpus, tmp_path, capsys):
    from polyprag.encoding.recipes import RECIPES

    lib = tmp_path / "lib"
    assert main(["encode", corpus, str(lib), "--model", model_dir, "--recipe", "prag-paper", "--augment", "passage",
                 "-q"]) == 0
    config = json.loads((lib / "config.json").read_text())
    paper = RECIPES["prag-paper"]
    assert (config["m"], config["rank"], config["alpha"]) == (paper.poly.num_adapters, paper.rank, paper.alpha)
    assert config["training"]["recipe"] == "prag-paper"
    assert (config["training"]["epochs"], config["training"]["lr"]) == (paper.poly.epochs, paper.poly.lr)
    assert main(["encode", corpus, str(tmp_path / "lib2"), "--model", model_dir, "--recipe", "prag-paper",
                 "--augment", "passage", "--num-adapters", "3", "--rank", "4", "--lr", "0.01", "-q"]) == 0
    config = json.loads((tmp_path / "lib2" / "config.json").read_text())
    assert (config["m"], config["rank"], config["training"]["lr"]) == (3, 4, 0.01)  # a flag given wins


@pytest.mark.parametrize("method", ["poly", "prag"])
def test_add_and_delete_update_the_library_folder(method, model_dir, docs, tmp_path, capsys):
    first, more = tmp_path / "first.jsonl", tmp_path / "more.jsonl"
    save_jsonl([{"id": d.id, "title": d.title, "text": d.text} for d in docs[:3]], first)
    save_jsonl([{"id": d.id, "title": d.title, "text": d.text} for d in docs[3:]], more)
    lib = tmp_path / "lib"
    assert main(["encode", str(first), str(lib), "--method", method, "--model", model_dir, "--augment", "passage",
                 "--epochs", "1", "--num-adapters", "2", "-q"]) == 0
    capsys.readouterr()
    assert main(["add", str(lib), str(more), "--epochs", "1", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["added"] == ["d3", "d4"] and out["documents"] == 5 and out["new_adapters"] == 2
    assert not (tmp_path / ".lib.checkpoints").exists()  # the default checkpoints go once the library is saved
    assert main(["add", str(lib), str(more), "-q"]) == 2  # ids already there: refused, with the way out
    assert "pass --replace" in capsys.readouterr().err
    assert main(["add", str(lib), str(more), "--replace", "--epochs", "1", "-q"]) == 0
    assert "Added 0 and replaced 2 document(s)" in capsys.readouterr().out
    assert main(["delete", str(lib), "d1", "d3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["deleted"] == ["d1", "d3"] and out["documents"] == 3
    assert [json.loads(line)["id"] for line in (lib / "documents.jsonl").read_text().splitlines()] == ["d0", "d2", "d4"]
    assert main(["ask", str(lib), "who built the krell lighthouse", "--corpus", str(first), "--k", "2",
                 "--max-new-tokens", "2", "--json"]) == 0  # the corpus still holds d1: never retrieved again
    assert "d1" not in [d["id"] for d in json.loads(capsys.readouterr().out)["documents"]]
    assert main(["delete", str(lib), "d1"]) == 2
    assert "'d1' was deleted" in capsys.readouterr().err


def test_eval_writes_table(model_dir, corpus, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.jsonl").write_text(open(corpus).read())
    save_jsonl([{"id": "q0", "question": "what is the capital of zorvania", "answers": ["quellport"], "gold": ["d0"]},
                {"id": "q1", "question": "who invented the vase", "answers": ["marisol"], "gold": ["d2"]}],
               data / "questions.jsonl")
    rc = main(["eval", "--data", str(data), "--k", "1", "--methods", "closed_book,in_context,polyprag",
               "--model", model_dir, "--texts", "passage", "--epochs", "1", "--num-adapters", "2",
               "--max-new-tokens", "2", "--latency-samples", "1", "--max-length", "64", "--out", str(tmp_path / "out"), "-q"])
    assert rc == 0
    assert "| in_context |" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "results.json").read_text())["facts"]["documents"] == 2


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path), "-q"]) == 2
    assert "corpus.jsonl" in capsys.readouterr().err
    assert main(["ask", str(tmp_path), "a question?"]) == 2
    assert "not an adapter library" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path), "--methods", "closed_book,magic"]) == 2
    assert "Unknown method" in capsys.readouterr().err


def test_demo_runs_or_explains(capsys, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("polyprag.demo.quickstart") is None:
        assert main(["demo"]) == 1
        assert "polyprag.demo.quickstart is missing" in capsys.readouterr().err
    else:
        import polyprag.demo.quickstart

        seen = []
        monkeypatch.setattr(polyprag.demo.quickstart, "main", lambda argv: seen.append(argv) or 0)
        assert main(["demo", "--epochs", "2"]) == 0
        assert seen == [["--epochs", "2"]]  # the demo's own options reach it


def test_unknown_command_or_option_is_refused(capsys):
    for argv in (["teleport"], ["eval", "--data", "d", "--bogus"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_encode_holds_the_questions_documents_and_prints_its_throughput(model_dir, corpus, tmp_path, capsys):
    from polyprag import AdapterLibrary
    from polyprag.generation.llm import LoRAMixingLLM

    questions = tmp_path / "q.jsonl"
    save_jsonl([{"id": "q0", "question": "who built the krell lighthouse", "answers": ["farrant"], "gold": ["d1"]}],
               questions)
    lib = tmp_path / "lib"
    assert main(["encode", corpus, str(lib), "--method", "prag", "--model", model_dir, "--augment", "passage",
                 "--epochs", "1", "--library", "questions", "--questions", str(questions), "--k", "1",
                 "--layers", "1", "--stop-loss", "0.5", "-q"]) == 0
    out = capsys.readouterr().out
    assert "documents/s" in out and "tokens/s" in out
    library = AdapterLibrary.load(lib, LoRAMixingLLM.from_pretrained(model_dir))
    assert library.doc_ids == ["d1"]  # BM25's top-1 is the gold passage itself
    assert all(".layers.1." in n for n in library.bank.names)
    assert main(["encode", corpus, str(tmp_path / "lib2"), "--model", model_dir, "--library", "questions",
                 "-q"]) == 2
    assert "--questions" in capsys.readouterr().err


# ---- help, --version, -q and inspect --json ------------------------------------------------------------
def _option_helps():
    """(command, flag, rendered help) of every option of every command."""
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        formatter = p._get_formatter()
        chosen = {a for g in p._mutually_exclusive_groups if g.required for a in g._group_actions}
        for action in p._actions:
            if action.option_strings and not isinstance(action, (argparse._HelpAction,)):
                action.required = action.required or action in chosen  # one of the group must be given
                yield name, action, formatter._expand_help(action) if action.help else ""


def test_every_option_has_help_and_says_its_default_once():
    for name, action, text in _option_helps():
        flag = action.option_strings[-1]
        assert text.strip(), f"{name} {flag} has no help"
        said = text.lower().count("(default") + text.lower().count("; default")
        takes_value = action.nargs != 0 and not isinstance(action.default, bool)
        assert said == (1 if takes_value and not action.required else 0) or (not takes_value and said <= 1), (
            name, flag, text)
        assert "/" not in text.split("--recipe's")[-1].replace("s/doc", "") or "--recipe's" not in text, text


def test_eval_methods_help_names_the_families_and_list_methods_prints_them_all(capsys):
    from polyprag.evaluation import METHODS

    methods = next(text for name, action, text in _option_helps() if name == "eval" and "--methods" in
                   action.option_strings)
    assert len(methods) < 700 and "_recite_ensemble" in methods and "--list-methods" in methods, methods
    with pytest.raises(SystemExit) as done:
        main(["eval", "--list-methods"])
    assert done.value.code == 0
    printed = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in printed if line] == list(METHODS)


def test_version(capsys):
    from polyprag import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"polyprag {__version__}"


def test_inspect_json_writes_no_file_and_quiet_prints_no_progress_bar(model_dir, corpus, tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    lib = tmp_path / "lib"
    assert main(["encode", corpus, str(lib), "--model", model_dir, "--augment", "passage", "--epochs", "1", "-q"]) == 0
    run = tmp_path / "elsewhere"
    run.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{root / 'core'}:{root}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "HOME": str(Path.home())}
    done = subprocess.run([sys.executable, "-m", "polyprag.cli", "inspect", "--library", str(lib), "--json", "-q"],
                          cwd=run, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["picture"] is None and list(run.iterdir()) == []  # no routing.png
    assert "Loading weights" not in done.stderr and "it/s" not in done.stderr, done.stderr
    loud = subprocess.run([sys.executable, "-m", "polyprag.cli", "ask", str(lib), "what is the velt",
                           "--max-new-tokens", "2"], cwd=run, env=env, capture_output=True, text=True, timeout=300)
    quiet = subprocess.run([sys.executable, "-m", "polyprag.cli", "ask", str(lib), "what is the velt",
                            "--max-new-tokens", "2", "-q"], cwd=run, env=env, capture_output=True, text=True,
                           timeout=300)
    assert loud.returncode == quiet.returncode == 0 and loud.stdout == quiet.stdout
    assert "Loading weights" in loud.stderr  # the bar -q silences is there without it
    assert "Loading weights" not in quiet.stderr and "%|" not in quiet.stderr, quiet.stderr
