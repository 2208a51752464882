"""Edits to a saved library as a user's text editor makes them, optionally with its manifest re-signed (as a
careful forger would), so a test reaches the checks behind the checksums."""
from __future__ import annotations

import json
from pathlib import Path

from polyprag.library import storage


def resign(path: Path) -> None:
    """Recompute the manifest's sha256 of every file, as if the folder had been written so."""
    manifest = json.loads((path / storage.MANIFEST).read_text())
    fresh = storage.manifest_of(path, manifest["kind"])
    (path / storage.MANIFEST).write_text(json.dumps({**manifest, "files": fresh["files"]}))


def edit_config(path: Path, signed: bool = True, **changes) -> dict:
    """config.json with ``changes`` applied (``None`` drops a key), re-signed unless ``signed=False``."""
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    (path / "config.json").write_text(json.dumps(cfg))
    if signed:
        resign(path)
    return cfg
