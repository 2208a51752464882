"""``polyprag encode --workers N``: N processes on this machine joined as ``torchrun`` joins them, without it.

Each worker runs the same command with the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``) and one torch thread by default, so ``encoding.distributed`` splits the work
as under torchrun. When one worker fails the others are stopped at once, so rank 0 never saves a library that
lacks that worker's documents; what the workers checkpointed stays for the rerun.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from ..errors import InvalidInputError

WORKER_MARK = "POLYPRAG_WORKER"  # set in a worker's environment: the command runs as one rank, not as a launcher


def is_worker() -> bool:
    """Whether this process is one of ``launch``'s workers."""
    return os.environ.get(WORKER_MARK) == "1"


def free_port() -> int:
    """A TCP port free on this machine now, for the workers' rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(rank: int, workers: int, port: int, threads: int) -> dict[str, str]:
    """The environment of worker ``rank``: the launcher's variables, ``threads`` CPU threads, polyprag importable."""
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding polyprag/
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(workers),
            "LOCAL_WORLD_SIZE": str(workers), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": path,
            WORKER_MARK: "1"}


def launch(command: Sequence[str], workers: int, threads: int = 1, poll_s: float = 0.1) -> int:
    """Run ``command`` (argv) in ``workers`` processes of ``threads`` CPU threads each; 0 when every one succeeds,
    else the exit status of the first that failed (128 + signal for a killed one), the others stopped."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidInputError(f"--workers must be a positive number of processes, got {workers!r}.")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidInputError(f"threads per worker must be >= 1, got {threads!r}.")
    port = free_port()
    procs = [subprocess.Popen(list(command), env=worker_env(r, workers, port, threads)) for r in range(workers)]
    failed = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [c for c in codes if c not in (None, 0)]
            if bad:
                failed = bad[0] if bad[0] > 0 else 128 - bad[0]
                rank = codes.index(bad[0])
                print(f"polyprag: worker {rank} of {workers} exited with status {failed}; stopping the others. "
                      "Nothing was saved; rerun the same command (PRAG resumes from the groups it checkpointed).",
                      file=sys.stderr)
                break
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        failed = 128 + signal.SIGINT
    _stop(procs)
    return failed


def _stop(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Terminate the workers still running (SIGTERM, then SIGKILL after ``grace_s``) and reap them all."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
