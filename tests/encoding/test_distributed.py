"""Poly-PRAG encoding with 2 CPU processes (torchrun, gloo) equals the single-process run."""
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

from polyprag import AdapterLibrary, LoRAMixingLLM, PolyPRAGEncoder
from polyprag.encoding import distributed
from polyprag.documents import load_corpus

TEXTS = ["the capital of zorvania is quellport", "the krell lighthouse was built by farrant",
         "marisol invented the vase in 1998", "the velt is the currency of zorvania",
         "the lighthouse on tamsin island is painted purple", "the king of velt founded the city in 1873",
         "the green river runs to the moon lake", "tamsin is a glassblower with a red studio"]
# A very high relaxed-Bernoulli temperature makes the sampled weights ≈ uniform whatever the noise,
# so the two runs see the same mixtures and must agree to float precision (the noise streams of
# 1 and 2 processes differ; at temperature 1 they would only agree in quality).
ENCODER = dict(num_adapters=3, rank=2, augmenter="passage", epochs=6, lr=1e-2, routing_lr=1e-2,
               temperature=1e6, seed=0, progress=False)
WORKER = textwrap.dedent("""
    import hashlib, json, sys, torch
    torch.set_num_threads(1)
    from polyprag import LoRAMixingLLM, PolyPRAGEncoder
    from polyprag.encoding import distributed
    from polyprag.documents import load_corpus
    model, corpus, out, per_process_batch, options = sys.argv[1:6]
    llm = LoRAMixingLLM.from_pretrained(model, device="cpu")
    encoder = PolyPRAGEncoder(llm, batch_size=int(per_process_batch), **json.loads(options))
    library = distributed.fit(encoder, load_corpus(corpus))
    rank, world = distributed.world()
    h = hashlib.sha256()
    for t in list(library.bank.tensors().values()) + [library.routing_logits]:
        h.update(t.detach().numpy().tobytes())
    open(f"{out}/replica-{rank}.txt", "w").write(h.hexdigest())
    if distributed.is_main_process():
        library.save(f"{out}/library")
    distributed.barrier()
    distributed.shutdown()
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tiny_folder(tmp_path_factory.mktemp("dist"), TEXTS)
    (root / "worker.py").write_text(WORKER)
    return root


def test_two_process_encode_equals_single_process(setup):
    root = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "core")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(root / "worker.py"), str(root / "model"), str(root / "corpus.jsonl"), str(root), "2",
           json.dumps(ENCODER)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)  # a loaded 2-core machine
    assert run.returncode == 0, run.stderr[-3000:]
    # the gradient all-reduce kept both replicas bit-identical
    assert (root / "replica-0.txt").read_text() == (root / "replica-1.txt").read_text()

    llm = LoRAMixingLLM.from_pretrained(str(root / "model"), device="cpu")
    docs = load_corpus(root / "corpus.jsonl")
    two = AdapterLibrary.load(root / "library", llm)
    one = distributed.fit(PolyPRAGEncoder(llm, batch_size=4, **ENCODER), docs)  # 1 process × batch 4
    assert two.config.training["world_size"] == 2
    for name, t in one.bank.tensors().items():
        # Adam divides by sqrt(v): float-summation differences (batch 4 vs 2+2 averaged) grow to ~5e-4
        torch.testing.assert_close(two.bank.tensors()[name], t, atol=2e-3, rtol=1e-2, msg=name)
    torch.testing.assert_close(two.routing_logits, one.routing_logits, atol=2e-3, rtol=1e-2)
    # and it learned: each document's own mixture lowers the loss of its text
    from polyprag import BankMixture, TrainingExample
    from polyprag.encoding.training import collate, row_losses, tokenize

    rows = [tokenize(llm, TrainingExample(target=d.full_text), 64) for d in docs]
    batch = collate(rows, llm.tokenizer.pad_token_id, llm.device)
    with torch.no_grad():
        trained = row_losses(llm, batch, BankMixture.stack([two.mixture([d.id]) for d in docs]))
        bare = row_losses(llm, batch, None)
    assert trained.mean() < bare.mean() - 0.2, (trained, bare)

def test_single_process_is_plain_fit(llm, docs):
    assert distributed.world() == (0, 1) and distributed.is_main_process()
    options = {**ENCODER, "epochs": 1}
    a = distributed.fit(PolyPRAGEncoder(llm, batch_size=2, **options), docs)
    b = PolyPRAGEncoder(llm, batch_size=2, **options).fit(docs)
    assert torch.equal(a.routing_logits, b.routing_logits)
    grads = [torch.ones(3)]
    distributed.average_gradients(grads)  # no process group: unchanged
    assert torch.equal(grads[0], torch.ones(3))


def test_a_world_size_without_a_launcher_is_refused(monkeypatch, llm, docs):
    from polyprag import InvalidInputError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(InvalidInputError, match="torchrun"):
        distributed.fit(PolyPRAGEncoder(llm, **ENCODER), docs)


def test_a_checkpointed_poly_fit_of_several_processes_is_refused(llm, docs, tmp_path):
    from polyprag import InvalidInputError
    from polyprag.encoding.encoder import Shard

    # PRAG shards its groups (tests/encoding/test_prag_distributed.py); Poly-PRAG's replicas keep no checkpoint
    with pytest.raises(InvalidInputError, match="keeps no checkpoint"):
        PolyPRAGEncoder(llm, **ENCODER).fit(docs, checkpoint_dir=tmp_path, shard=Shard(rank=0, world=2))
