"""Encoding in several processes under ``torchrun`` / ``accelerate launch`` / ``polyprag encode --workers N``
(gloo on CPU, NCCL on GPU; across machines as torchrun starts them).

Training goes through ``Encoder.fit`` as in one process; this module only supplies its ``Shard``: the
launcher's rank and world and the hooks that join the processes.

PRAG: a document's adapter depends on its own texts alone, so the processes split the work without talking
while they train: the training groups (``methods.prag.training.prag_groups``, a function of the documents
and ``group_size``, not of the world size) are dealt round-robin, each process trains its groups (checkpointing
each finished one when given ``checkpoint_dir``) and sends them to rank 0, which assembles and returns the
library. A group trains alike in any process, so the library equals a single process's bit for bit (at the same
torch thread count), and a rerun after a crash, on any number of processes, reuses every checkpointed group.

Poly-PRAG: every process holds a full replica of
the bank and of the routing logits. Each one augments a share of the documents (gathered so all see
every text), takes every world-th mini-batch of the same seeded order (``train_poly(shard=(rank,
world))``) and, before each optimiser step, the gradients of the bank and of the routing logits are
averaged across processes with one all-reduce, so the replicas take identical AdamW steps and stay
equal. Rank 0 saves.

Why all-reduce the routing logits instead of sharding their rows: the table is N × m floats
(10k documents × 16 adapters = 640 kB), less than the bank's own gradient for a 135M model
(~1 MB at rank 2) and nothing next to the activations, so sharding would save little memory yet
force each mini-batch to hold only its rank's documents (a different sampling than the
single-process run), add a gather before every save, and break ``add_documents`` symmetry.
One flat all-reduce of [bank grads ; routing grads] per step is simplest and exact.

Launch (the same script runs single-process with plain ``python``):

    torchrun --nproc_per_node 2 -m polyprag.cli encode corpus.jsonl lib/ --method prag
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 16 -m polyprag.cli encode ...
    accelerate launch --multi_gpu --num_processes 4 -m polyprag.cli encode corpus.jsonl lib/
    mpirun -n 4 accelerate launch --config_file multi_cpu.yaml -m polyprag.cli encode ...   # accelerate on CPUs
    polyprag encode corpus.jsonl lib/ --method prag --workers 2                             # no launcher
"""
from __future__ import annotations

import datetime
import os
from typing import Sequence

import torch

from ..documents import Document
from .encoder import Encoder, Shard
from ..errors import InvalidInputError
from ..library.adapters import AdapterLibrary


# where launchers put a process's rank, world size and rank on its machine: torchrun and accelerate's GPU launch
# (RANK, ...), and mpirun, which accelerate's CPU launch (distributed_type MULTI_CPU) runs under: Open MPI, MPICH
# / Intel MPI (PMI_*), MVAPICH
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
SIZE_VARS = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")


def _launcher(names: tuple[str, ...], default: int) -> int:
    return next((int(os.environ[n]) for n in names if os.environ.get(n, "").strip()), default)


def world() -> tuple[int, int]:
    """(rank, world size) of this process: from torch.distributed, else the launcher's env, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return _launcher(RANK_VARS, 0), _launcher(SIZE_VARS, 1)


def local_rank() -> int:
    """This process's rank among those on its machine (0 alone)."""
    return _launcher(LOCAL_RANK_VARS, 0)


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the process that saves and prints."""
    return world()[0] == 0


def local_device(device: str | None = None) -> str | None:
    """This process's device: ``cuda:LOCAL_RANK`` under a multi-GPU launcher, else what was asked."""
    if device is None and torch.cuda.is_available() and world()[1] > 1:
        return f"cuda:{local_rank()}"
    return device


def init(device: str | torch.device | None = None) -> tuple[int, int]:
    """Join the launcher's process group (gloo on CPU, NCCL on CUDA) once; returns (rank, world)."""
    import torch.distributed as dist

    rank, size = world()
    if size > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise InvalidInputError("WORLD_SIZE > 1 but MASTER_ADDR is unset; start the command with "
                                    "`torchrun --nproc_per_node N`, `accelerate launch` or `polyprag encode --workers N`.")
        os.environ.setdefault("MASTER_PORT", "29500")  # torchrun's default
        dev = torch.device(device or "cpu")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl":  # the object collectives (gather, collect) stage their bytes on the current device
            torch.cuda.set_device(dev if dev.index is not None else torch.device("cuda", local_rank()))
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=datetime.timedelta(minutes=30))
        rank, size = dist.get_rank(), dist.get_world_size()
    return rank, size


def average_gradients(grads: list[torch.Tensor]) -> None:
    """Replace each gradient by its mean over processes: one all-reduce of one flat buffer."""
    import torch.distributed as dist

    if not grads or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # [Σ numel]
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_(tensors: Sequence[torch.Tensor]) -> None:
    """Copy rank 0's values into every process's tensors (the replicas start identical)."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.broadcast(t.data, src=0)


def gather(part: list) -> list[list]:
    """Every process's ``part``, in rank order (in memory, between processes)."""
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, part)
    return gathered


def collect(part) -> list | None:
    """Every process's ``part`` in rank order on rank 0 (None on the others)."""
    import torch.distributed as dist

    gathered: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(part, gathered, dst=0)
    return gathered


def shard() -> Shard:
    """This process's ``Shard`` of a fit: the launcher's rank and world, joined by ``gather``, ``broadcast_``,
    ``average_gradients`` and ``collect`` when there are several (call ``init`` first); the whole fit when alone."""
    rank, size = world()
    if size == 1:
        return Shard()
    return Shard(rank, size, gather=gather, broadcast=broadcast_, sync=average_gradients, collect=collect)


def fit(encoder: Encoder, documents: Sequence[Document], checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 10) -> AdapterLibrary | None:
    """``encoder.fit(documents)``, split across the launcher's processes when there are several.

    Poly-PRAG: data-parallel, every rank returns the same library (``batch_size`` is per process, so N
    processes train with an effective batch of N × batch_size; no checkpoint). PRAG: each rank trains its
    share of the documents, rank 0 returns the library and the others None; with ``checkpoint_dir`` a rerun
    resumes. Only rank 0 should save."""
    init(encoder.llm.device)
    return encoder.fit(documents, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, shard=shard())


def barrier() -> None:
    """Wait for every process (no-op single-process): e.g. before others read what rank 0 saved."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly (no-op when none was joined)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
