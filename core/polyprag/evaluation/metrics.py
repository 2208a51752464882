"""Metrics of PRAG's ``src/utils.py`` (SQuAD EM/F1, PopQA accuracy), recall@k, and a paired bootstrap.

Answers are normalised as in SQuAD (lower case, no punctuation, no articles, single spaces); a score is
the maximum over the answer aliases.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, drop articles a/an/the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised alias, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction), normalize_answer(answer)
    # PRAG (after DRAGIN): a yes/no/noanswer mismatch scores 0, not partial overlap
    if (pred in ("yes", "no", "noanswer") or gold in ("yes", "no", "noanswer")) and pred != gold:
        return 0.0
    p, g = pred.split(), gold.split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """Token-overlap F1 of the normalised prediction, the maximum over the aliases."""
    return max((_f1(prediction, a) for a in answers), default=0.0)


def accuracy(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when a normalised alias occurs in the normalised prediction (PopQA's metric), else 0.0."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(n and f" {n} " in pred for n in map(normalize_answer, answers)))


def recall_at_k(retrieved: Sequence[str], gold: Sequence[str]) -> float | None:
    """Share of the gold passage ids among the retrieved ids; None when a question has no gold ids."""
    if not gold:
        return None
    return len(set(retrieved) & set(gold)) / len(set(gold))


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None (None when there are none)."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def paired_bootstrap(a: Sequence[float], b: Sequence[float], samples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a − b over the same questions and its percentile bootstrap interval (questions resampled).

    Returns (difference, low, high); an interval that excludes 0 says the difference is beyond noise."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # [questions]
    if d.ndim != 1 or len(d) == 0 or len(a) != len(b):
        raise ValueError("paired_bootstrap needs two score lists of the same non-zero length.")
    idx = np.random.default_rng(seed).integers(0, len(d), size=(samples, len(d)))  # [samples, questions]
    means = d[idx].mean(1)
    tail = (1 - level) / 2
    return float(d.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
