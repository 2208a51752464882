"""Every `polyprag` command run against a folder of a user's files: the commands that would write into it, over
a file of it or into the current folder are refused before any model loads or trains (exit 2, the message, no
traceback), the others run beside it, and afterwards every one of the user's files is there, byte for byte."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polyprag.cli import COMMANDS, main
from polyprag.documents import save_jsonl
from test_cli import model_dir  # noqa: F401  the tiny model as a local model folder

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def data(tmp_path, docs, monkeypatch):
    """The user's data folder (the working folder too): a corpus, questions, notes and a file in a sub-folder."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    save_jsonl([{"id": d.id, "title": d.title, "text": d.text} for d in docs], data / "corpus.jsonl")
    save_jsonl([{"id": "q0", "question": "what is the capital of zorvania", "answers": ["quellport"], "gold": ["d0"]}],
               data / "questions.jsonl")
    (data / "notes.txt").write_text("my notes\n")
    (data / "results.md").write_text("my own results\n")
    (data / "picture.png").write_bytes(b"\x89PNG my picture")
    (data / "sub" / "important.txt").write_bytes(b"\x00\x01 important")
    monkeypatch.chdir(data)
    return data


def refused(argv: list[str], said: str, capsys) -> None:
    """The command exits 2 with ``said`` in its message and no traceback."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err, err


def test_every_command_leaves_the_users_files_as_they_were(data, model_dir, tmp_path, capsys, monkeypatch):
    import polyprag.cli as cli

    before = snapshot(data)
    lib, corpus = str(tmp_path / "lib"), str(data / "corpus.jsonl")
    tiny = ["--model", model_dir, "-q"]
    train = ["--augment", "passage", "--epochs", "1", "--num-adapters", "2"]
    loads = []
    real_load = cli._load_llm
    monkeypatch.setattr(cli, "_load_llm", lambda *a, **k: loads.append(a) or real_load(*a, **k))

    # refused before any model loads or trains
    refused(["encode", corpus, str(data), *tiny, *train], "holds files that polyprag did not write", capsys)
    refused(["encode", corpus, "notes.txt", *tiny, *train], "is an existing file, not a folder", capsys)
    refused(["encode", corpus, ".", *tiny, *train], ". holds files that polyprag did not write", capsys)
    refused(["encode", corpus, "/proc/x", *tiny, *train], "Cannot write an adapter library to /proc/x", capsys)
    refused(["add", str(data), corpus, *tiny], "is not an adapter library", capsys)
    refused(["delete", str(data), "d0", *tiny], "is not an adapter library", capsys)
    refused(["ask", str(data), "who built the lighthouse"], "is not an adapter library", capsys)
    refused(["demo", "--library", str(data)], "holds files that polyprag did not write", capsys)
    assert loads == []

    # the commands that write run beside the data folder, reading from it
    assert main(["encode", corpus, lib, *tiny, *train]) == 0
    refused(["export", "--library", lib, "--docs", "d0", "--out", str(data)], "holds files that polyprag did not write",
            capsys)
    refused(["export", "--library", lib, "--docs", "d0", "--out", "notes.txt"], "is an existing file", capsys)
    refused(["inspect", "--library", lib, "--out", "picture.png"], "exists and polyprag did not draw it", capsys)
    refused(["eval", "--data", str(data), "--out", str(data), *tiny], "holds results.md, which is not an earlier",
            capsys)
    refused(["ask", lib, "who built the lighthouse", "--k", "9"], "k=9 is larger than the corpus (5 documents)",
            capsys)
    if not torch.cuda.is_available():
        refused(["ask", lib, "who built the lighthouse", "--device", "cuda"], "Device 'cuda' is not available", capsys)
    more = tmp_path / "more.jsonl"
    save_jsonl([{"id": "d9", "text": "the moon is red"}], more)
    assert main(["add", lib, str(more), "--epochs", "1", "-q"]) == 0
    assert main(["delete", lib, "d9", "-q"]) == 0
    assert main(["ask", lib, "who built the krell lighthouse", "--k", "2", "--max-new-tokens", "2"]) == 0
    for _ in range(2):  # the second time over its own export and picture
        assert main(["export", "--library", lib, "--docs", "d0,d1", "--out", str(tmp_path / "export")]) == 0
        assert main(["inspect", "--library", lib, "--out", str(tmp_path / "routing.png")]) == 0
    assert main(["inspect", "--library", lib]) == 0  # the default picture: a new file in the working folder
    assert main(["eval", "--data", str(data), "--k", "1", "--methods", "closed_book,polyprag", *tiny, "--texts",
                 "passage", "--epochs", "1", "--num-adapters", "2", "--max-new-tokens", "2", "--latency-samples", "1",
                 "--max-length", "64", "--out", str(tmp_path / "eval")]) == 0
    for _ in range(2):
        assert main(["eval", "--data", str(data), "--k", "1", "--methods", "closed_book", *tiny,
                     "--max-new-tokens", "2", "--latency-samples", "1", "--out", str(tmp_path / "eval-cb")]) == 0
    assert {"encode", "add", "delete", "ask", "eval", "export", "inspect", "demo"} <= set(COMMANDS)
    capsys.readouterr()

    after = snapshot(data)
    assert {k: after.get(k) for k in before} == before  # every file there, byte for byte
    assert sorted(set(after) - set(before)) == ["routing.png"]  # the one new file: inspect's default picture
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing hidden left


def test_the_command_prints_the_refusal_without_a_traceback(data, tmp_path):
    """As a shell runs it: `polyprag encode data/corpus.jsonl data` exits 2 with one line of advice."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "core"), str(ROOT)])}
    run = subprocess.run([sys.executable, "-m", "polyprag.cli", "encode", "data/corpus.jsonl", "data"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("polyprag encode: data holds files that polyprag did not write")
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert (data / "notes.txt").read_text() == "my notes\n"
