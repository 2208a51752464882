"""Resumable training: progress saved atomically under ``checkpoint_dir`` so a crash loses at most a few steps.

A run's folder is named by a digest of everything that determines its result (documents, training
texts, settings, base model, starting bank), so a rerun of the same encoding finds its own progress and
a different run never picks up someone else's. Each state is one safetensors file (tensors plus a
JSON header) written to a temporary file, fsynced and renamed in: a reader sees the previous state or
the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, InvalidInputError
from ..library.storage import atomic_write

CHECKPOINT_VERSION = 1
_META = "polyprag_checkpoint"


def run_key(identity: Any) -> str:
    """A stable hex digest of a JSON-able description of a training run."""
    blob = json.dumps(identity, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over named tensors' bytes (identifies a starting bank without storing it)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def safe_child(root: str | os.PathLike, name: str) -> Path:
    """``root / name`` for a single file or folder name, refusing names that would escape ``root``."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "\x00" in name
            or any(sep in name for sep in ("/", "\\")) or (os.altsep and os.altsep in name)
            or Path(name).is_absolute() or Path(name).drive):
        raise InvalidInputError(f"{name!r} is not a plain file or folder name; use letters, digits, "
                                "'-', '_' or '.' without path separators or '..'.")
    root = Path(root)
    path = root / name
    if path.resolve().parent != root.resolve():
        raise InvalidInputError(f"{name!r} would leave the folder {root}; choose a plain name.")
    return path


class Checkpoint:
    """The saved progress of one training run, in ``checkpoint_dir/<phase>-<run digest>/``.

    Example:
        ck = Checkpoint("ckpt/", "poly-fit", {"docs": ids, "lr": 1e-3}, every=10)
        state = ck.read()                      # None on the first run
        ck.write({"logits": z}, {"step": 3})   # atomically replaces the previous state
    """

    def __init__(self, checkpoint_dir: str | os.PathLike, phase: str, identity: Any, every: int = 10):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidInputError(f"checkpoint_every must be a positive number of steps, got {every!r}.")
        self.key = run_key({"phase": phase, "identity": identity, "version": CHECKPOINT_VERSION})
        self.folder = safe_child(Path(checkpoint_dir), f"{phase}-{self.key[:20]}")
        self.every = every

    def due(self, step: int) -> bool:
        """Whether progress should be saved after this many steps."""
        return step % self.every == 0

    def path(self, name: str = "state") -> Path:
        return safe_child(self.folder, f"{name}.safetensors")

    def read(self, name: str = "state") -> tuple[dict[str, torch.Tensor], dict] | None:
        """The saved tensors and metadata of ``name``, or None when nothing was saved yet."""
        from safetensors import safe_open

        path = self.path(name)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {})[_META])
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as e:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{path} is damaged ({e}); delete it to redo that part of the run.") from None
        if meta.get("key") != self.key:
            raise CheckpointError(f"{path} belongs to another run; delete {self.folder} to start over.")
        return tensors, meta["meta"]

    def write(self, tensors: dict[str, torch.Tensor], meta: dict, name: str = "state") -> Path:
        """Replace ``name``'s saved state atomically (temp file + fsync + rename + directory fsync)."""
        from safetensors.torch import save_file

        target = self.path(name)
        atomic_write(target, lambda tmp: save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
            metadata={_META: json.dumps({"key": self.key, "meta": meta})}))
        return target


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state (AdamW: step, exp_avg, exp_avg_sq) as flat named tensors."""
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of ``optimizer_tensors`` on an optimizer built over the same parameters."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def python_rng_state(state: tuple) -> list:
    """``random.Random.getstate()`` as JSON."""
    return [state[0], list(state[1]), state[2]]


def python_rng_from(raw: list) -> tuple:
    """Inverse of ``python_rng_state``."""
    return (raw[0], tuple(raw[1]), raw[2])


def remove_checkpoints(checkpoint_dir: str | os.PathLike) -> None:
    """Remove what ``Checkpoint`` wrote under ``checkpoint_dir`` (``<phase>-<digest>/*.safetensors`` and their
    temporary files), then the folders left empty; any other file, and the folder holding it, stays."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return
    for run in root.iterdir():
        if not run.is_dir():
            continue
        for f in run.iterdir():
            if f.is_file() and (f.suffix == ".safetensors" or ".safetensors.tmp-" in f.name):
                f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run.rmdir()  # only once empty
    with contextlib.suppress(OSError):
        root.rmdir()
