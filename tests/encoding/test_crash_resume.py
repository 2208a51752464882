"""Durable encoding: an encoding process SIGKILLed at several points resumes and ends with the same library.

The encoding job (``encode``) runs in a child process forked from a forkserver that imported torch once:
Poly-PRAG ``fit`` → save → ``add_documents`` → save, then PRAG ``fit`` → save, then the Poly-PRAG library's
``update_documents`` → save → ``delete_documents(refit=True)`` → save, each step skipped when its result is
already on disk, checkpoints under WORK/ckpt. ``kill`` = ``phase:n:when`` makes the child
SIGKILL itself at the n-th checkpoint write of ``phase`` (``before`` it, or ``during`` it: temp file
written, not yet renamed in), or ``save:n`` inside the n-th library save, before its folder swap.
"""
from __future__ import annotations

import json
import os
import signal
import multiprocessing
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # tests/: tiny.py
TEXTS = ["the capital of zorvania is quellport", "the krell lighthouse was built by farrant",
         "marisol invented the vase in 1998", "the velt is the currency of zorvania",
         "the lighthouse on tamsin island is painted purple", "the king of krell founded quellport in 1873",
         "the moon lake is in the green mountain", "tamsin painted the red vase in 1911"]
QUESTIONS = ["what is the capital of zorvania", "who built the krell lighthouse", "where is the moon lake"]
NEW_D0 = "the capital of zorvania is krell"  # the update's new text for d0; then d3 is deleted with a re-fit


def _threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))  # as tests/conftest.py, so both runs compute alike


def encode(work: Path, kill: str | None = None) -> dict:
    """The encoding job (idempotent): whatever is not saved yet is encoded, resuming from checkpoints."""
    import torch

    sys.path.insert(0, str(HERE))
    from tiny import tiny_llm

    from polyprag import (AdapterLibrary, BM25Retriever, Document, ParametricRetriever, PolyPRAG,
                          PolyPRAGEncoder, PRAGEncoder)

    torch.set_num_threads(_threads())
    if kill is not None:
        _arm(kill, work)
    llm = tiny_llm()
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(TEXTS)]
    ck = work / "ckpt"
    poly, prag = work / "poly", work / "prag"
    if not (poly / "config.json").is_file():
        PolyPRAGEncoder(llm, num_adapters=3, rank=2, augmenter="passage", epochs=3, batch_size=2, seed=0,
                        progress=False).fit(docs[:6], checkpoint_dir=ck, checkpoint_every=1).save(poly)
    lib = AdapterLibrary.load(poly, llm)
    new = [d for d in docs[6:] if d.id not in lib]
    if new:
        lib.add_documents(new, checkpoint_dir=ck, checkpoint_every=1, progress=False)
        lib.save(poly)
    if not (prag / "config.json").is_file():
        PRAGEncoder(llm, augmenter="passage", group_size=2, progress=False).fit(docs, checkpoint_dir=ck).save(prag)
    if lib.document("d0").text != NEW_D0:
        lib.update_documents([Document(id="d0", text=NEW_D0)], checkpoint_dir=ck, checkpoint_every=1, progress=False)
        lib.save(poly)
    if "d3" in lib:
        lib.delete_documents(["d3"], refit=True, checkpoint_dir=ck, checkpoint_every=1, progress=False)
        lib.save(poly)
    out = {}
    for name in ("poly", "prag"):
        lib = AdapterLibrary.load(work / name, llm)
        rag = PolyPRAG(llm, ParametricRetriever(BM25Retriever(lib.documents, k=2), lib), max_new_tokens=6)
        out[name] = {"doc_ids": lib.doc_ids, "answers": [a.text for a in rag.answer_batch(QUESTIONS)]}
    return out


def _arm(kill: str, work: Path) -> None:
    """Make this process SIGKILL itself at the named point; log every checkpoint write to WORK/writes.log."""
    import polyprag.encoding.checkpoint as ckmod
    import polyprag.library.storage as storemod

    phase, n, *when = kill.split(":")
    count = {"n": 0}
    write, swap = ckmod.Checkpoint.write, storemod.swap_in

    def die(*_a, **_k):
        os.kill(os.getpid(), signal.SIGKILL)

    def logged_write(self, tensors, meta, name="state"):
        if self.folder.name.startswith(phase + "-"):
            count["n"] += 1
            if count["n"] == int(n):
                if when == ["before"]:
                    die()
                ckmod.os.replace = die  # "during": the temp file is complete, the rename never happens
        path = write(self, tensors, meta, name)
        with open(work / "writes.log", "a") as fh:
            fh.write(f"{self.folder.name.split('-')[0]}-{self.folder.name.split('-')[1]} {name} "
                     f"{meta.get('epoch', '')}:{meta.get('step', '')}\n")
        return path

    def killed_swap(tmp, path):
        count["n"] += 1
        if count["n"] == int(n):
            die()
        return swap(tmp, path)

    ckmod.Checkpoint.write = logged_write
    if phase == "save":
        storemod.swap_in = killed_swap


def _job(work: Path, kill: str) -> None:
    (work / "answers.json").write_text(json.dumps(encode(work, kill)))


def _run(work: Path, kill: str = "none:0") -> int:
    """Run the job in a child process; its exit code (-9: SIGKILLed)."""
    ctx = multiprocessing.get_context("forkserver")  # forked from a clean, single-threaded server
    ctx.set_forkserver_preload(["torch", "transformers", "polyprag", "tiny"])
    child = ctx.Process(target=_job, args=(work, kill))
    child.start()
    child.join(timeout=300)
    return child.exitcode


def test_sigkilled_encoding_resumes_to_the_uninterrupted_result(tmp_path):
    import torch

    from polyprag import AdapterLibrary
    from tiny import tiny_llm

    torch.set_num_threads(_threads())
    baseline = encode(tmp_path / "clean")  # the uninterrupted run, in this process
    work = tmp_path / "crashy"
    kills = ["poly-fit:4:before",   # mid-training (3 steps saved)
             "poly-fit:2:during",   # inside a checkpoint write of the resumed run
             "save:1",              # training done, killed inside the library's folder swap
             "poly-add:2:before",   # the new documents' adapters
             "prag-fit:3:before",   # PRAG: two groups finished, the third trained but not saved
             "poly-add:2:before",   # the update: its new text's adapter
             "poly-refit:2:before"]  # the deletion's re-fit of the adapters the deleted document used most
    work.mkdir()
    for kill in kills:
        assert _run(work, kill) == -signal.SIGKILL, kill
        assert not (work / "answers.json").exists()
    assert _run(work) == 0
    resumed = json.loads((work / "answers.json").read_text())

    llm = tiny_llm()
    for name in ("poly", "prag"):
        clean, crashy = AdapterLibrary.load(tmp_path / "clean" / name, llm), AdapterLibrary.load(work / name, llm)
        assert crashy.doc_ids == clean.doc_ids == ([f"d{i}" for i in range(8)] if name == "prag" else
                                                   ["d1", "d2", "d4", "d5", "d6", "d7", "d0"])  # once each, in order
        for key, t in clean.bank.tensors().items():
            assert torch.equal(t, crashy.bank.tensors()[key]), (name, key)
        if name == "poly":
            assert torch.equal(clean.routing_logits, crashy.routing_logits)
        assert resumed[name] == baseline[name]
    log = (work / "writes.log").read_text().split("\n")
    prag_groups = [line.split()[1] for line in log if line.startswith("prag-fit")]
    assert sorted(prag_groups) == ["group-0", "group-2", "group-4", "group-6"]  # no group trained twice
    poly_steps = [line.split()[2] for line in log if line.startswith("poly-fit")]
    assert len(poly_steps) == len(set(poly_steps)) == 9  # 3 epochs × 3 steps, each saved once


def test_removing_checkpoints_keeps_files_the_checkpoints_did_not_write(tmp_path):
    """The default checkpoint folder is cleared after a save: only what Checkpoint wrote goes."""
    import torch

    from polyprag.encoding.checkpoint import Checkpoint, remove_checkpoints

    ck = Checkpoint(tmp_path / "ck", "prag-fit", {"docs": ["a"]})
    ck.write({"x": torch.zeros(2)}, {"step": 1}, name="group-0")
    mine = tmp_path / "ck" / "notes.txt"
    mine.write_text("keep me")
    remove_checkpoints(tmp_path / "ck")
    assert not ck.folder.exists() and mine.read_text() == "keep me"
    mine.unlink()
    ck.write({"x": torch.zeros(2)}, {"step": 1}, name="group-0")
    remove_checkpoints(tmp_path / "ck")
    assert not (tmp_path / "ck").exists()
