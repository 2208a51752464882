"""Results of an evaluation: per-method scores and costs, paired comparisons, JSON and a markdown table."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class MethodResult:
    """Scores and costs of one method over the evaluated questions (metrics in percent)."""

    method: str
    em: float
    f1: float
    accuracy: float
    recall_at_k: float | None
    storage_bytes_per_doc: int | None = None       # saved tensor files / documents (bank amortised)
    storage_bytes_new_doc: int | None = None       # what one more document adds (Poly-PRAG: its routing)
    encode_s_per_doc: float | None = None          # augmentation share + training, per document
    latency_p50_s: float | None = None             # one question alone: retrieve + mix + generate (warm)
    latency_cold_p50_s: float | None = None        # the same before any batch ran (nothing recited or cached)
    batched_s_per_question: float | None = None    # answering in batches
    predictions: list[dict] = field(default_factory=list, repr=False)
    questions: int = 0                             # questions answered (oracles: those whose evidence answers)
    by_kind: dict = field(default_factory=dict)    # question kind -> {"questions", "accuracy"}
    reading: str | None = None                     # best_reading: the reading method it is

    def question_ids(self) -> list:
        """Each prediction's question id (its position when a prediction carries none)."""
        return [p.get("id", i) for i, p in enumerate(self.predictions)]

    def scores(self, metric: str = "accuracy", ids: list[str] | None = None) -> list[float]:
        """Per-question scores (0/1 or F1) in question order, or for the questions ``ids`` in their order."""
        if ids is None:
            return [p[metric] for p in self.predictions]
        by_id = {p.get("id", i): p[metric] for i, p in enumerate(self.predictions)}
        return [by_id[i] for i in ids]


@dataclass
class Comparison:
    """Method a minus method b on the same questions (percentage points) with its paired bootstrap 95% CI."""

    a: str
    b: str
    metric: str
    diff: float
    low: float
    high: float
    questions: int = 0  # the questions both answered (an oracle method answers only those its evidence answers)

    @property
    def beyond_noise(self) -> bool:
        return self.low > 0 or self.high < 0

    def cell(self) -> str:
        return f"{self.diff:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


@dataclass
class EvalReport:
    """Everything one run measured: per-method results, comparisons and the run's facts."""

    config: dict
    results: list[MethodResult]
    facts: dict
    comparisons: list[Comparison] = field(default_factory=list)

    def result(self, method: str) -> MethodResult | None:
        return next((r for r in self.results if r.method == method), None)

    def comparison(self, a: str, b: str, metric: str = "accuracy") -> Comparison | None:
        return next((c for c in self.comparisons if (c.a, c.b, c.metric) == (a, b, metric)), None)

    def injection_efficiency(self, method: str) -> float | None:
        """Parametric oracle accuracy / in-context oracle accuracy (how much of the ceiling the adapters hold)."""
        r, ceiling = self.result(method), self.result("in_context_oracle")
        if r is None or ceiling is None or ceiling.accuracy == 0:
            return None
        return r.accuracy / ceiling.accuracy

    def to_json(self) -> dict:
        results = []
        for r in self.results:
            row = {k: v for k, v in asdict(r).items() if k != "predictions"}
            row["injection_efficiency"] = self.injection_efficiency(r.method) if r.method.endswith(
                ("_oracle", "_oracle_shuffled", "_oracle_uniform", "_oracle_m1")) else None
            results.append(row)
        return {"config": self.config, "facts": self.facts, "results": results,
                "comparisons": [asdict(c) | {"beyond_noise": c.beyond_noise} for c in self.comparisons]}

    def markdown(self) -> str:
        """The results as markdown tables (metrics in percent): methods, then the control comparisons."""
        base = [b for b in ("closed_book", "in_context", "best_reading") if self.result(b) is not None]
        head = ["method", "n", "EM", "F1", "acc"] + [f"Δacc vs {b} [95% CI]" for b in base] + [
            "inj. eff.", "recall@k", "bytes/doc", "encode s/doc", "latency p50 s cold / warm",
            "warm × in_context_ensemble"]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        ice = getattr(self.result("in_context_ensemble"), "latency_p50_s", None)
        for r in self.results:
            name = r.method if r.reading is None else f"{r.method} (= {r.reading})"
            cells = [name, str(r.questions or len(r.predictions)), f"{r.em:.1f}", f"{r.f1:.1f}", f"{r.accuracy:.1f}"]
            for b in base:
                c = self.comparison(r.method, b)
                cells.append("–" if c is None else c.cell())
            eff = self.injection_efficiency(r.method) if "_oracle" in r.method and r.method != "in_context_oracle" \
                else None
            cells += [_fmt(eff, ".2f"), _fmt(r.recall_at_k, ".1f"), _fmt(r.storage_bytes_per_doc, ","),
                      _fmt(r.encode_s_per_doc, ".2f"),
                      f"{_fmt(r.latency_cold_p50_s, '.2f')} / {_fmt(r.latency_p50_s, '.2f')}",
                      _fmt(None if not ice or r.latency_p50_s is None else r.latency_p50_s / ice, ".2f")]
            rows.append("| " + " | ".join(cells) + " |")
        controls = [c for c in self.comparisons if c.b not in base and c.metric == "accuracy"]
        if controls:
            rows += ["", "| control comparison (accuracy) | Δ points [95% CI] | beyond noise |", "|---|---|---|"]
            rows += [f"| {c.a} − {c.b} | {c.cell()} | {'yes' if c.beyond_noise else 'no'} |" for c in controls]
        kinds = sorted({k for r in self.results for k in r.by_kind})
        if len(kinds) > 1:
            rows += ["", "| accuracy by question kind | " + " | ".join(
                f"{k} (n={max(r.by_kind.get(k, {}).get('questions', 0) for r in self.results)})" for k in kinds) + " |",
                "|---|" + "---|" * len(kinds)]
            rows += ["| " + r.method + " | " + " | ".join(
                _fmt(r.by_kind.get(k, {}).get("accuracy"), ".1f") for k in kinds) + " |" for r in self.results]
        f = self.facts
        rows.append("")
        rows.append(f"{f['questions']} questions, {f['documents']} documents encoded ({f['encoded_from']}), "
                    f"model {f['model']} ({f.get('compute_dtype', '?')} compute on {f['device']}, "
                    f"{f['torch_threads']} threads), recipe {f['recipe']}, wall {f['wall_s']:.0f} s; augmentation "
                    f"{f['augment_s']:.0f} s ({f['augment']['cache_hits']} cache hits, "
                    f"{f['augment']['qa_failures']} QA failures). Intervals: paired bootstrap over questions. "
                    f"Oracle methods answer the {f.get('oracle_questions', '?')} questions whose evidence states "
                    "the answer (answer pages are never evidence); their comparisons pair those questions only.")
        if f.get("lag"):
            g = f["lag"]
            cost = (f"routing overhead {g['routing_us_per_token']:.0f} µs per token (forward with the router − bare "
                    f"forward, {g.get('routing_tokens', '?')} tokens; bare {g.get('bare_us_per_token', 0):.0f} µs per "
                    "token)") if "routing_tokens" in g else f"routing overhead {g['routing_us_per_token']:.0f} µs per token"
            sel = (f"; the pooled variants' scoring pass {g['selection_ms_per_question']:.0f} ms per question"
                   if g.get("selection_ms_per_question") is not None else "")
            nodocs = f" (_nodocs: {g['nodocs_adapters']})" if g.get("nodocs_adapters") is not None else ""
            rows.append(f"LAG: {g['adapters']} adapters{nodocs}, factor library {g['library_bytes']:,} bytes, "
                        f"Arrow k={g['k']}, {cost}{sel}.")
        return "\n".join(rows)


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


REPORT_FILES = ("results.json", "results.md", "predictions.jsonl")


def check_report_target(out: str | os.PathLike) -> Path:
    """``out`` as a folder ``write_report`` may write into: its files of those names must be an earlier report's
    (results.json holding a report), so no file of the user's is ever replaced; refused with advice otherwise."""
    from ..errors import LibraryFolderError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LibraryFolderError(f"{out} is a file; give --out a folder (new, or one an earlier evaluation wrote).")
    held = [n for n in REPORT_FILES if (out / n).exists()]
    if held:
        try:
            ours = {"config", "results", "comparisons"} <= set(json.loads((out / "results.json").read_text("utf-8")))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise LibraryFolderError(f"{out} holds {held[0]}, which is not an earlier polyprag report; it is left "
                                     "as it is. Give --out a new folder.")
    return out


def write_report(report: EvalReport, out: str | os.PathLike) -> Path:
    """Write results.json, results.md and predictions.jsonl (every answer with its scores) into ``out``."""
    from ..library.storage import atomic_write_text

    out = check_report_target(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(report.to_json(), indent=2))
    atomic_write_text(out / "results.md", report.markdown() + "\n")
    lines = [json.dumps({"method": r.method, **p}, ensure_ascii=False) for r in report.results for p in r.predictions]
    atomic_write_text(out / "predictions.jsonl", "\n".join(lines) + "\n")
    return out
