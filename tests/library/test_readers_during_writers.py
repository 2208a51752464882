"""Readers during writers: processes that load a library while another process saves it over and over get the
old library or the new one, whole, every time (never an error, never a mix of the two)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyprag import Document

HERE = Path(__file__).resolve().parents[1]
ROOT = HERE.parent
SAVES, LOADS, READERS = 200, 2000, 2

SETUP = """
import json, sys, time, torch
from pathlib import Path
from tiny import tiny_llm
from polyprag import AdapterLibrary
torch.set_num_threads(1)
work = Path(sys.argv[1]); llm = tiny_llm()
versions = {name: AdapterLibrary.load(work / name, llm) for name in ("a", "b")}
"""
WRITER = SETUP + """
while len(list(work.glob("ready-*"))) < int(sys.argv[3]):
    time.sleep(0.01)
t0 = time.perf_counter()
for i in range(int(sys.argv[2])):
    versions["ab"[i % 2]].save(work / "lib")
(work / "result-writer.json").write_text(json.dumps({"saves": int(sys.argv[2]), "seconds": time.perf_counter() - t0}))
(work / "done").touch()
"""
READER = SETUP + """
(work / f"ready-{sys.argv[2]}").touch()
loads, failures, mixed, seen = 0, [], 0, {"a": 0, "b": 0}
while not (work / "done").exists() or loads < int(sys.argv[3]):
    try:
        lib = AdapterLibrary.load(work / "lib", llm)
    except Exception as e:  # any failure at all is counted, polyprag's own errors included
        failures.append(f"{type(e).__name__}: {e}")
        loads += 1
        continue
    loads += 1
    name = "a" if lib.doc_ids == versions["a"].doc_ids else "b"
    want = versions[name]
    whole = (lib.doc_ids == want.doc_ids and torch.equal(lib.routing_logits, want.routing_logits)
             and all(torch.equal(x, y) for x, y in zip(lib.bank.B, want.bank.B)))
    mixed += not whole
    seen[name] += 1
(work / f"result-{sys.argv[2]}.json").write_text(json.dumps(
    {"loads": loads, "failures": failures[:5], "failed": len(failures), "mixed": mixed, "seen": seen}))
"""


def _spawn(code: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "core"), str(ROOT), str(HERE)]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env)


def test_loads_in_other_processes_during_saves_never_fail(tmp_path, llm):
    """>= 2000 loads in two processes while a third saves two different libraries alternately >= 200 times."""
    from conftest import random_poly_library

    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(
        ["the capital of zorvania is quellport", "the krell lighthouse was built by farrant",
         "marisol invented the vase in 1998", "the velt is the currency of zorvania"])]
    random_poly_library(llm, docs[:3], m=2, logit_seed=1).save(tmp_path / "a")
    random_poly_library(llm, docs, m=3, logit_seed=2, bank_seed=5).save(tmp_path / "b")
    random_poly_library(llm, docs[:3], m=2, logit_seed=1).save(tmp_path / "lib")
    t0 = time.perf_counter()
    readers = [_spawn(READER, tmp_path, r, LOADS // READERS) for r in range(READERS)]
    writer = _spawn(WRITER, tmp_path, SAVES, READERS)
    for p in [writer, *readers]:
        assert p.wait(timeout=280) == 0
    results = [json.loads((tmp_path / f"result-{r}.json").read_text()) for r in range(READERS)]
    wrote = json.loads((tmp_path / "result-writer.json").read_text())
    loads = sum(r["loads"] for r in results)
    print(f"\n{loads} loads in {READERS} processes during {wrote['saves']} saves ({wrote['seconds']:.1f} s of "
          f"saving, {time.perf_counter() - t0:.1f} s in all): {sum(r['failed'] for r in results)} failed, "
          f"{sum(r['mixed'] for r in results)} mixed; versions seen {[r['seen'] for r in results]}")
    assert wrote["saves"] >= SAVES and loads >= LOADS
    assert [r["failures"] for r in results] == [[]] * READERS
    assert sum(r["mixed"] for r in results) == 0
    assert all(r["seen"]["a"] and r["seen"]["b"] for r in results)  # both versions were really read mid-run
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing left behind
