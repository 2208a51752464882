"""The documentation cannot drift from the code: every ```python block of README.md and docs/*.md runs as written
(on the tiny model, swapped in for the default one), the docs site builds with no warning, and the README keeps
its promises to a newcomer (short, the framework swaps near the top, the default mode the code's own)."""
from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*test:\s*skip\s*\((?P<why>[^)]*)\)\s*-->\s*$")


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(first line, code, reason to skip) of each ```python block of a markdown file; a block right after an
    ``<!-- test: skip (why) -->`` line is skipped for that reason."""
    lines, out, at = path.read_text(encoding="utf-8").splitlines(), [], 0
    while at < len(lines):
        if lines[at].strip() == "```python":
            end = next(i for i in range(at + 1, len(lines)) if lines[i].strip() == "```")
            before = next((lines[i] for i in range(at - 1, -1, -1) if lines[i].strip()), "")
            skip = SKIP.search(before)
            out.append((at + 1, "\n".join(lines[at + 1:end]), skip.group("why") if skip else None))
            at = end
        at += 1
    return out


BLOCKS = [(p, line, code, why) for p in PAGES for line, code, why in python_blocks(p)]


@pytest.fixture
def tiny_default_model(monkeypatch):
    """``LoRAMixingLLM.from_pretrained()`` (and so every face's lazy model) gives the tiny model."""
    from tiny import tiny_llm

    from polyprag import LoRAMixingLLM

    monkeypatch.setattr(LoRAMixingLLM, "from_pretrained", classmethod(lambda cls, *a, **kw: tiny_llm(spaced=True)))


@pytest.mark.parametrize("path, line, code, why", BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _, _ in BLOCKS])
def test_every_python_block_runs_as_written(path, line, code, why, tiny_default_model, one_thread, tmp_path,
                                            monkeypatch, capsys):
    if why:
        pytest.skip(why)
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    exec(compile(code, f"{path.name}:{line}", "exec"), {"__name__": "__docs__"})


def test_the_pages_hold_python_blocks_and_skip_few():
    assert len(BLOCKS) >= 6  # the extraction finds the blocks
    assert sum(why is not None for *_, why in BLOCKS) <= 3  # skipping is for the real model or long runs only


def test_the_readme_is_short_with_the_swaps_near_the_top_and_no_dated_history():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250
    heads = {line: i for i, line in enumerate(lines, 1) if line.startswith("## ")}
    assert heads["## Swap it into LangChain"] < 100 and heads["## Swap it into LlamaIndex"] < 100
    assert "2026-" not in text and "TIME_" not in text


def test_the_readmes_links_lead_to_files_of_the_repository():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links and all((ROOT / link).exists() for link in links if "://" not in link), links


def test_the_readme_marks_the_codes_default_mode():
    from polyprag import MODES, PolyPRAG

    default = inspect.signature(PolyPRAG).parameters["mode"].default
    table = [line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
             if line.startswith("| `")]
    marked = [line for line in table if "(default)" in line.split("|")[1]]
    assert len(marked) == 1 and f"`{default}`" in marked[0], marked
    assert all(any(f"`{m}`" in line for line in table) for m in MODES)  # every mode has its row


def test_the_docs_site_builds_with_no_warning(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    if not Path(mkdocs).exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8").count("PolyPRAGEncoder") > 1


def test_every_example_says_what_it_shows_and_its_measured_time_within_three_minutes():
    import ast

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in sorted((ROOT / "examples").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        times = re.findall(r"\b(\d+):(\d\d)\b", doc)
        assert doc.splitlines()[0] and "takes" in doc.lower() and times, path.name  # what it shows, how long it takes
        assert all(int(m) * 60 + int(s) <= 180 for m, s in times), (path.name, times)
        row = next(line for line in readme.splitlines() if line.startswith(f"| [examples/{path.name}]"))
        assert re.search(r"\d+:\d\d", row.split("|")[-2]), row  # its time beside it in the README
