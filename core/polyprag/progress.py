"""The one progress bar of every long loop (augmenting, training, evaluating): tqdm, gone when done."""
from __future__ import annotations


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over ``total`` steps, hidden when not ``enabled`` and cleared when it closes."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
