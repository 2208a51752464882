"""Pictures of a library: routing weights per document as a heat map, and how much each adapter is used.

What ``polyprag inspect`` draws, so a person can see whether routing is specialised (bright,
scattered cells; every adapter used) or collapsed (flat rows; one or two adapters doing all work).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import InvalidInputError, LibraryFolderError

if TYPE_CHECKING:
    from .adapters import AdapterLibrary

MAX_ROWS = 60  # more documents than this are sampled evenly: a heat map of 10k rows reads as noise


def routing_summary(library: "AdapterLibrary", doc_ids: Sequence[str] | None = None) -> dict:
    """Numbers behind the picture (JSON-ready): per-adapter usage, top-1 counts, routing entropy."""
    ids = list(doc_ids) if doc_ids is not None else library.doc_ids
    if not ids:
        raise InvalidInputError("The library has no documents to inspect.")
    w = library.routing_weights(ids).detach().cpu().double().numpy()  # [N, m]
    m = w.shape[1]
    entropy = -(w * np.log(np.clip(w, 1e-12, None))).sum(1) / max(np.log(m), 1e-12)  # 0 one-hot … 1 uniform
    top1 = np.bincount(w.argmax(1), minlength=m)
    return {"kind": library.kind, "documents": len(ids), "adapters": m,
            "usage": w.sum(0).tolist(),  # Σ_d w_dj: adapter j's share of all routing mass
            "top1_counts": top1.tolist(), "unused_adapters": int((top1 == 0).sum()),
            "mean_normalised_entropy": float(entropy.mean())}


def sample_rows(n: int, limit: int = MAX_ROWS) -> list[int]:
    """At most ``limit`` row indices spread evenly over n rows (all of them when n <= limit)."""
    if n <= limit:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, limit)})


PICTURE_MARK = "polyprag inspect"  # written into each picture's metadata: an existing picture polyprag drew


def check_picture_target(out: str | os.PathLike) -> Path:
    """``out`` as a picture file ``plot_routing`` may write: new, or a picture it drew before (its metadata
    says so); any other file is refused (LibraryFolderError) and left as it is."""
    out = Path(out)
    if out.is_dir():
        raise LibraryFolderError(f"{out} is a folder; give a picture file name, e.g. {out / 'routing.png'}.")
    if out.exists():
        try:
            ours = PICTURE_MARK.encode() in out.read_bytes()
        except OSError:
            ours = False
        if not ours:
            raise LibraryFolderError(f"{out} exists and polyprag did not draw it; it is left as it is. Choose "
                                     "another --out, e.g. routing.png in a new folder.")
    return out


def plot_routing(library: "AdapterLibrary", out: str | os.PathLike, doc_ids: Sequence[str] | None = None,
                 max_rows: int = MAX_ROWS, title: str | None = None) -> Path:
    """Write a PNG: heat map of routing weights [documents × adapters] and the bank-usage histogram."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    ids = list(doc_ids) if doc_ids is not None else library.doc_ids
    if not ids:
        raise InvalidInputError("The library has no documents to inspect.")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise InvalidInputError(f"{out}: give an output file ending in .png, .pdf or .svg.")
    summary = routing_summary(library, ids)
    shown = [ids[i] for i in sample_rows(len(ids), max_rows)]
    w = library.routing_weights(shown).detach().cpu().numpy()  # [rows, m]
    m = w.shape[1]
    labels = [_label(library, d) for d in shown]

    height = min(2.0 + 0.22 * len(shown), 16.0)
    fig, (ax_map, ax_use) = plt.subplots(1, 2, figsize=(min(6 + 0.35 * m, 18) + 4, height),
                                         gridspec_kw={"width_ratios": [3, 2]}, layout="constrained")
    # colour = deviation from the uniform weight 1/m, symmetric limits: preferences show even when
    # training has only begun to move routing (all weights ≈ 1/m), and the colour bar gives their size
    dev = w - 1.0 / m
    lim = max(float(np.abs(dev).max()), 1e-6)
    img = ax_map.imshow(dev, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax_map.set_xlabel("adapter in the bank")
    ax_map.set_ylabel("document" + (f" ({len(shown)} of {len(ids)}, evenly sampled)" if len(shown) < len(ids) else ""))
    ax_map.set_xticks(range(m) if m <= 40 else np.linspace(0, m - 1, 10).astype(int))
    ax_map.set_yticks(range(len(shown)))
    ax_map.set_yticklabels(labels, fontsize=7 if len(shown) > 25 else 8)
    ax_map.set_title(library.snapshot().library_kind.routing_caption)
    fig.colorbar(img, ax=ax_map, pad=0.01, label=f"weight − 1/m (uniform = {1.0 / m:.3g})")

    usage = np.asarray(summary["usage"])
    top1 = np.asarray(summary["top1_counts"])
    x = np.arange(m)
    ax_use.bar(x - 0.2, usage, width=0.4, color="tab:blue", label="routing mass Σ_d w_dj")
    ax_use.bar(x + 0.2, top1, width=0.4, color="tab:orange", label="documents whose top adapter it is")
    ax_use.set_xticks(range(m) if m <= 40 else np.linspace(0, m - 1, 10).astype(int))
    ax_use.axhline(len(ids) / m, color="grey", linestyle="--", linewidth=1, label="uniform share")
    ax_use.set_xlabel("adapter in the bank")
    ax_use.set_ylabel("documents")
    ax_use.set_title(f"bank usage ({summary['unused_adapters']} of {m} adapters never top-1; "
                     f"entropy {summary['mean_normalised_entropy']:.2f})", fontsize=9)
    ax_use.legend(fontsize=8, loc="upper right")
    fig.suptitle(title or f"{library.config.model_name or 'library'}: {len(ids)} documents, "
                 f"{library.kind}, m={m}, rank {library.bank.rank}", fontsize=11)
    check_picture_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, metadata={"Software" if out.suffix.lower() == ".png" else "Creator": PICTURE_MARK})
    plt.close(fig)
    return out


def _label(library: "AdapterLibrary", doc_id: str, width: int = 28) -> str:
    title = library.document(doc_id).title
    text = f"{doc_id} · {title}" if title else doc_id
    return text if len(text) <= width else text[: width - 1] + "…"
