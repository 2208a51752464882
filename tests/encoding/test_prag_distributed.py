"""PRAG encoding in several processes (torchrun with gloo, and `polyprag encode --workers N`) writes the same
library as one process, bit for bit; a killed worker leaves no library and a rerun resumes its finished groups."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tiny import tiny_folder

from polyprag import InvalidInputError, PRAGEncoder
from polyprag.cli import main
from polyprag.encoding import workers
from polyprag.encoding.augment import PassageAugmenter
from polyprag.encoding.encoder import Shard
from safetensors.torch import load_file

CORE = Path(__file__).resolve().parents[2] / "core"
TEXTS = ["the capital of zorvania is quellport", "the krell lighthouse was built by farrant",
         "marisol invented the vase in 1998", "the velt is the currency of zorvania",
         "the lighthouse on tamsin island is painted purple", "the king of velt founded the city in 1873",
         "the green river runs to the moon lake", "tamsin is a glassblower with a red studio"]
# 8 documents in groups of 2: 4 groups, dealt unevenly over 3 processes
ENCODE = ["--method", "prag", "--epochs", "2", "--group-size", "2", "--lr", "1e-2", "--compute-dtype", "float32",
          "--device", "cpu", "-q"]
KILL_AFTER_FIRST_GROUP = textwrap.dedent("""
    import os, signal, sys
    import polyprag.encoding.checkpoint as ck
    if os.environ.get("RANK") == "1":  # rank 1 dies right after checkpointing its first group
        write = ck.Checkpoint.write
        def dying_write(self, *a, **k):
            out = write(self, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        ck.Checkpoint.write = dying_write
    from polyprag.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("prag-dist"), TEXTS)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(CORE)}


def _encode_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", str(root / "corpus.jsonl"), str(out), "--model", str(root / "model"), *ENCODE, *extra]


def _assert_same_library(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a / "bank.safetensors")), load_file(str(b / "bank.safetensors"))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k  # bit for bit: each group trains alike in any process
    for name in ("documents.jsonl", "config.json"):  # the whole folder: a PRAG library records no world size
        assert (a / name).read_text() == (b / name).read_text(), name


@pytest.fixture(scope="module")
def single(setup):
    """The library of one process, one thread (the reference every world size must equal)."""
    out = setup / "lib-1"
    run = subprocess.run([sys.executable, "-m", "polyprag.cli", *_encode_args(setup, out, "--threads", "1")],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (setup / ".lib-1.checkpoints").exists()  # the default checkpoint folder goes once saved
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_torchrun_world_sizes_write_the_single_process_library(setup, single, world):
    out = setup / f"lib-torchrun-{world}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
           str(world), "-m", "polyprag.cli", *_encode_args(setup, out)]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"on {world} processes" in run.stdout
    _assert_same_library(out, single)
    assert json.loads((out / "config.json").read_text())["kind"] == "prag"


def test_workers_2_writes_the_workers_1_library(setup, single):
    out = setup / "lib-workers-2"
    assert main(_encode_args(setup, out, "--workers", "2")) == 0
    _assert_same_library(out, single)


def test_a_killed_worker_leaves_no_library_and_a_rerun_resumes(setup, single):
    out, ck = setup / "lib-killed", setup / "ck-killed"
    script = setup / "dying.py"
    script.write_text(KILL_AFTER_FIRST_GROUP)
    code = workers.launch([sys.executable, str(script), *_encode_args(setup, out, "--checkpoint-dir", str(ck))], 2)
    assert code != 0
    assert not out.exists()  # no half library
    saved = {p: p.stat().st_mtime_ns for p in ck.rglob("group-*.safetensors")}
    assert saved, "the killed run checkpointed no group"
    assert main(_encode_args(setup, out, "--checkpoint-dir", str(ck), "--workers", "2")) == 0
    _assert_same_library(out, single)
    for path, mtime in saved.items():  # the finished groups were read back, not trained again
        assert path.stat().st_mtime_ns == mtime, path


def test_workers_under_a_launcher_is_refused(setup, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(workers.WORKER_MARK, raising=False)
    assert main(_encode_args(setup, setup / "never", "--workers", "2")) == 2
    assert "leave it at 1" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    poly = ["encode", str(setup / "corpus.jsonl"), str(setup / "never"), "--model", str(setup / "model"),
            "--method", "poly", "--workers", "2", "--checkpoint-dir", str(setup / "ck-poly")]
    assert main(poly) == 2
    assert "keeps no checkpoint" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="positive"):
        workers.launch([sys.executable, "-c", "pass"], 0)


def test_shards_in_one_process_give_the_whole_fit(llm, docs):
    """The shard hooks alone (no processes): ranks 1..world-1 hand their groups to rank 0, round by round, and
    rank 0 assembles the library the whole fit in one process trains."""
    everyone = [list(enumerate(PassageAugmenter()(docs)))]  # what the gather of every process's texts returns
    options = dict(augmenter="passage", epochs=2, lr=1e-2, group_size=2, progress=False)
    whole = PRAGEncoder(llm, **options).fit(docs)
    for world in (2, 3):
        sent: dict = {}  # (round, rank) -> the groups that rank sent in that round

        def collect_as(rank):
            rounds = iter(range(len(docs)))

            def collect(part):
                i = next(rounds)
                sent[i, rank] = part
                return [sent.get((i, r), {}) for r in range(world)] if rank == 0 else None
            return collect

        for rank in reversed(range(world)):  # rank 0 last: it collects the others' parts
            lib = PRAGEncoder(llm, **options).fit(docs, shard=Shard(rank, world, gather=lambda part: everyone,
                                                                  collect=collect_as(rank)))
            assert (lib is None) == (rank > 0)
        for name, t in whole.bank.tensors().items():
            assert torch.equal(lib.bank.tensors()[name], t), (world, name)
        assert lib.doc_ids == whole.doc_ids


def test_groups_are_dealt_by_cost_so_processes_finish_together():
    from polyprag import TrainingExample
    from polyprag.methods.prag.training import deal_groups

    data = [[TrainingExample(target="x" * n)] for n in (50, 40, 30, 30, 10)]  # one document per group
    owner = deal_groups([[i] for i in range(5)], data, 2)
    loads = [sum(len(data[g][0].target) for g in range(5) if owner[g] == r) for r in (0, 1)]
    assert sorted(loads) == [80, 80]  # round-robin would give 90 and 70
    assert deal_groups([[i] for i in range(5)], data, 1) == [0] * 5


def test_the_distributed_benchmark_reports_speed_up_and_identity(setup, tmp_path, capsys):
    from bench import distributed as bench

    out = tmp_path / "distributed.json"
    assert bench.main(["--corpus", str(setup / "corpus.jsonl"), "--docs", "6", "--model", str(setup / "model"),
                       "--epochs", "1", "--group-size", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "libraries identical: True" in printed and "extrapolated (not measured)" in printed
    result = json.loads(out.read_text())
    assert result["documents"] == 6 and result["identical"] and result["speedup"] > 0
    assert set(result["extrapolated"]) == {"10k_docs_16_processes_hours", "10k_docs_64_processes_hours",
                                           "100k_docs_16_processes_hours", "100k_docs_64_processes_hours"}


def test_mpirun_ranks_as_accelerate_launches_on_cpus_write_the_same_library(setup, single):
    """accelerate's CPU launch runs under mpirun, whose ranks come in PMI_RANK / PMI_SIZE (no RANK, WORLD_SIZE)."""
    out = setup / "lib-mpi"
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", workers.WORKER_MARK)}
    port = str(workers.free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "polyprag.cli", *_encode_args(setup, out)],
                              env={**env, "PMI_RANK": str(r), "PMI_SIZE": "2", "MPI_LOCALRANKID": str(r),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}, stdout=subprocess.PIPE, text=True)
             for r in range(2)]
    printed = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert "on 2 processes" in printed[0]
    _assert_same_library(out, single)


def test_workers_refuse_a_missing_corpus_before_starting(setup, capsys):
    args = _encode_args(setup, setup / "never", "--workers", "2")
    args[1] = str(setup / "no-such-corpus.jsonl")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no-such-corpus.jsonl" in err and "worker" not in err


def test_a_documents_adapter_depends_on_its_group_mates_only_in_float_rounding(llm, docs):
    """Batched with others or alone, a document learns the same adapter up to the rounding of the batch's shapes
    (measured 1.7e-7 on values of 0.19): why the processes take whole groups, which keeps it bit for bit."""
    options = dict(augmenter="passage", epochs=4, lr=1e-2, progress=False)
    together = PRAGEncoder(llm, group_size=len(docs), **options).fit(docs).bank.tensors()
    alone = PRAGEncoder(llm, group_size=1, **options).fit(docs).bank.tensors()
    for name, t in alone.items():
        torch.testing.assert_close(together[name], t, atol=1e-5, rtol=1e-4, msg=name)
    assert any(t.abs().max() > 1e-2 for name, t in alone.items() if name.endswith("lora_B"))  # it trained
