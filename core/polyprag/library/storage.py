"""Atomic, checksummed folders on disk: what library and LAG saves share."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ..errors import LibraryError

T = TypeVar("T")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    """Flush a written file to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(tmp: Path, path: Path) -> None:
    """Replace folder ``path`` by ``tmp``: rename the old one aside, rename the new one in, drop the old."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(path: Path, replace: bool = True) -> Iterator[Path]:
    """A temporary sibling folder to write into; on success it replaces ``path`` atomically (fsynced).

    A crash at any point leaves either the old folder or the new one, never a mix. With
    ``replace=False`` a ``path`` that exists by then (another process finished first) is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_file(f)
        if replace:
            swap_in(tmp, path)
        elif not path.exists():
            try:
                os.replace(tmp, path)
            except OSError:
                if not path.exists():  # not a race with another writer
                    raise
            fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_config(path: Path, parse: Callable[[dict], T], missing: str) -> T:
    """``parse`` applied to the folder's config.json; a missing, unreadable or malformed one is a LibraryError.

    ``missing`` completes "<path> is not …" when there is no config.json at all."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise LibraryError(f"{path} is not {missing}")
    try:
        return parse(json.loads(cfg_file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise LibraryError(f"{cfg_file} is unreadable or altered: {e}") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file atomically through ``write(tmp)``: a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_file(Path(tmp))
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
