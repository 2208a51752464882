"""Print the recipe sweep (bench/results/recipes/runs.jsonl, written by bench.recipe_probe) as a markdown table.

    python -m bench.recipe_table
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

LOG = Path(__file__).parent / "results" / "recipes" / "runs.jsonl"


def table(path: Path = LOG) -> str:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    head = ("run", "slice rows", "method", "texts", "epochs", "lr", "rank", "m / routing lr / start", "max len", "closed",
            "param oracle", "wrong docs", "shuffled", "uniform", "recite oracle", "recite wrong", "recite shuffled",
            "in-context oracle", "combine oracle", "train s/doc", "augment s/doc")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s, n = r["scores"], r["n"]
        cell = lambda k: f"{s[k]:.0f}/{n}" if k in s else "–"  # noqa: E731
        start = f"{r['routing_active']} of {r['m']}" if r.get("routing_active") else "uniform"
        poly = f"{r['m']} / {r['routing_lr']} / {start}" if r["method"] == "poly" else "–"
        out.append("| " + " | ".join(map(str, (
            r["tag"], f"{r['data']} {r['rows']}", r["method"], r["texts"], r["epochs"], r["lr"], r["rank"], poly,
            r.get("max_length", 256), cell("closed_book"), cell("parametric_oracle"), cell("parametric_wrong"),
            cell("parametric_shuffled"), cell("parametric_uniform"), cell("recite_passage_oracle"),
            cell("recite_passage_wrong"), cell("recite_passage_shuffled"), cell("in_context_oracle"),
            cell("combine_oracle"), r["train_s_per_doc"], r["augment_s_per_doc"]))) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else LOG))
