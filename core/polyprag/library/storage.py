"""Atomic, checksummed folders on disk: what library and LAG saves share."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from ..errors import LibraryError, LibraryFolderError



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


_RENAME_EXCHANGE = 2  # renameat2 flag: swap two paths atomically (Linux >= 3.15)


def _exchange(a: Path, b: Path) -> bool:
    """Swap folders ``a`` and ``b`` in one atomic step; False where the system cannot (then nothing changed)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(tmp: Path, path: Path) -> None:
    """Publish the whole folder ``tmp`` as ``path``: a new path or an empty folder is taken by one rename, a
    folder ``path`` already holding (checked by the caller) is exchanged with it in one atomic step, so a
    reader finds the old folder or the new one at every instant; the old one is then removed."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        try:
            os.rename(tmp, path)  # replaces an empty folder atomically too
            fsync_dir(path.parent)
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # not a race with another writer
                raise
    if _exchange(tmp, path):
        fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")  # no atomic exchange here: two renames
    os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(path: Path, replace: bool = True) -> Iterator[Path]:
    """A temporary sibling folder to write into; on success it becomes ``path`` atomically (fsynced).

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


# ---- library folders: the library's alone, one manifest over every file ------------------------
MANIFEST = "polyprag-manifest.json"  # the marker of a polyprag folder and the sha256 of its every other file
MANIFEST_FORMAT = "polyprag-library"
READ_ATTEMPTS = 100  # a reader starts again when a writer replaced the folder under it, at most this often


def is_polyprag_folder(path: Path, marker: str = MANIFEST) -> bool:
    """Whether ``path`` is a folder polyprag wrote: it holds polyprag's own marker file (a manifest), or is a
    library of format 1, whose config.json lists, with matching sha256, every other file the folder holds."""
    m = path / marker
    if m.is_file():
        if marker != MANIFEST:
            return True
        try:
            return json.loads(m.read_text(encoding="utf-8")).get("format") == MANIFEST_FORMAT
        except (OSError, ValueError, AttributeError):
            return False
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        files = dict(cfg["files"])
        held = {f.name for f in path.iterdir()} - {"config.json"}
        return held == set(files) and all(sha256_file(path / n) == d for n, d in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def check_target(path: str | os.PathLike, what: str = "an adapter library", marker: str = MANIFEST) -> Path:
    """``path`` as a folder polyprag may write ``what`` into, refused (LibraryFolderError) unless it is absent,
    an empty folder or a folder polyprag wrote (its ``marker``), and its parent folder can be written.

    Called before any training, so a refusal costs nothing; ``publish_folder`` checks again when it writes."""
    given = Path(path)
    path = given.expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise LibraryFolderError(f"{given} is an existing file, not a folder; polyprag writes {what} only into a "
                                 "new or empty folder or over one it wrote. Choose another path, e.g. "
                                 f"{given.parent / (given.stem + '-lib')}.")
    if path.is_dir() and any(path.iterdir()) and not is_polyprag_folder(path, marker):
        sample = sorted(p.name for p in path.iterdir())[:3]
        raise LibraryFolderError(
            f"{given} holds files that polyprag did not write (e.g. {', '.join(sample)}); polyprag writes {what} "
            "only into a new or empty folder or over one it wrote, and never deletes your files. Choose a new "
            f"folder, e.g. {given / 'lib'}.")
    if path.exists() and path.resolve() == Path.cwd().resolve():
        raise LibraryFolderError(f"{str(given)!r} is the current folder; write {what} into a folder of its own, "
                                 "e.g. ./lib, from its parent folder.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=path.parent)
        os.rmdir(probe)
    except OSError as e:
        raise LibraryFolderError(f"Cannot write {what} to {given}: {e.strerror or e} ({path.parent}). Choose a "
                                 "folder you can write.") from None
    return path


def manifest_of(folder: Path, kind: str) -> dict:
    """The manifest of a staged folder: its format and the sha256 of every file in it, config.json included."""
    files = {f.relative_to(folder).as_posix(): sha256_file(f) for f in sorted(folder.rglob("*"))
             if f.is_file() and f.name != MANIFEST}
    return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "kind": kind, "files": files}


MANIFEST_VERSION = 2  # format 1: no manifest, config.json listed the other files' sha256 but not its own


@contextlib.contextmanager
def publish_folder(path: str | os.PathLike, kind: str, what: str = "an adapter library",
                   marker: str = MANIFEST) -> Iterator[Path]:
    """A staged folder to write into; on success a manifest over its every file is added (with ``marker ==
    MANIFEST``) and it replaces ``path`` atomically: readers see the old folder or the new one, whole, and the
    old one stays until the new one is complete. ``path`` must pass ``check_target``."""
    path = check_target(path, what, marker)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise LibraryFolderError(f"Cannot write {what} to {path}: {e.strerror or e}.") from None
    try:
        yield tmp
        if marker == MANIFEST:
            (tmp / MANIFEST).write_text(json.dumps(manifest_of(tmp, kind), indent=2), encoding="utf-8")
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_file(f)
        check_target(path, what, marker)  # nothing else moved in while we wrote
        try:
            swap_in(tmp, path)
        except OSError as e:
            raise LibraryFolderError(f"Cannot write {what} to {path}: {e.strerror or e}.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Replaced(Exception):
    """The folder being read was replaced by a writer: read it again."""


def _read_at(fd: int, name: str) -> bytes:
    """The bytes of file ``name`` inside the open folder ``fd``."""
    f = os.open(name, os.O_RDONLY, dir_fd=fd)
    with os.fdopen(f, "rb") as fh:
        return fh.read()


def _plain(name: object) -> bool:
    return (isinstance(name, str) and bool(name) and "\\" not in name and "\x00" not in name
            and not name.startswith("/") and all(p not in ("", ".", "..") for p in name.split("/")))


def read_folder(path: str | os.PathLike, missing: str) -> tuple[dict, dict[str, bytes]]:
    """(manifest, {file name: bytes}) of a polyprag folder, every file checked against the manifest's sha256.

    The folder is read through one open handle, so every file comes from one version of it; when a writer
    replaces the folder meanwhile (``publish_folder``) the read starts again on the new one. A format-1
    library (no manifest) gives a manifest of format_version 1 made from its config.json.
    ``missing`` completes "<path> is not …" when the folder is no polyprag folder at all."""
    path = Path(path)
    for attempt in range(READ_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except (FileNotFoundError, NotADirectoryError):
            if attempt < 20 and any(path.parent.glob(f".{glob.escape(path.name)}.old-*")):
                time.sleep(0.005)  # a writer without an atomic exchange is between its two renames
                continue
            raise LibraryError(f"{path} is not {missing}") from None
        except OSError as e:
            raise LibraryError(f"Cannot read {path}: {e.strerror or e}.") from None
        try:
            return _read_open(fd, path, missing)
        except _Replaced:
            continue
        finally:
            os.close(fd)
    raise LibraryError(f"{path} was replaced {READ_ATTEMPTS} times while it was being read; load it again once "
                       "the process writing it has finished.")


def _read_open(fd: int, path: Path, missing: str) -> tuple[dict, dict[str, bytes]]:
    """``read_folder``'s work on one open folder; raises _Replaced when the folder was swapped under it."""

    def replaced() -> bool:
        try:
            now = os.stat(path)
        except OSError:
            return True
        mine = os.fstat(fd)
        return (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev)

    def fail(message: str) -> LibraryError:
        return _Replaced() if replaced() else LibraryError(message)

    try:
        raw = _read_at(fd, MANIFEST)
    except FileNotFoundError:
        raw = None
    if raw is None:  # format 1: config.json lists the other files
        try:
            config_bytes = _read_at(fd, "config.json")
        except FileNotFoundError:
            raise fail(f"{path} is not {missing}") from None
        try:
            listed = dict(json.loads(config_bytes.decode("utf-8"))["files"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as e:
            raise fail(f"{path / 'config.json'} is unreadable or altered ({e}); restore it from a backup or "
                       "re-encode the library.") from None
        manifest = {"format": MANIFEST_FORMAT, "format_version": 1, "files": listed}
        files = {"config.json": config_bytes}
    else:
        try:
            manifest = json.loads(raw.decode("utf-8"))
            if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"'format' is not {MANIFEST_FORMAT!r}")
            listed = dict(manifest["files"])
            version = manifest.get("format_version")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise fail(f"{path / MANIFEST} is unreadable or altered ({e}); restore the folder from a backup or "
                       "re-encode the library.") from None
        if not isinstance(version, int) or isinstance(version, bool) or version > MANIFEST_VERSION:
            raise LibraryError(f"{path} has manifest format version {version!r}; this polyprag reads up to "
                               f"{MANIFEST_VERSION}. Upgrade polyprag.")
        if "config.json" not in listed:
            raise fail(f"{path / MANIFEST} does not list config.json; the manifest was altered. Restore the "
                       "folder from a backup or re-encode the library.")
        files = {}
    bad = [n for n, d in listed.items() if not _plain(n) or n == MANIFEST or not isinstance(d, str)]
    if bad:
        raise fail(f"{path}: the manifest lists {bad[0]!r}, which is not a file name with a sha256 inside the "
                   "folder; the manifest was altered. Restore it from a backup or re-encode the library.")
    for name, digest in listed.items():
        try:
            data = _read_at(fd, name)
        except FileNotFoundError:
            raise fail(f"{path / name} is missing; the library is incomplete. Restore it from a backup, or "
                       "re-save or re-encode it.") from None
        except OSError as e:
            raise fail(f"Cannot read {path / name}: {e.strerror or e}.") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise fail(f"{path / name} does not match its checksum (truncated or altered). Restore it from a "
                       "backup or re-encode the library.")
        files[name] = data
    return manifest, files


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
