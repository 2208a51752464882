"""Why LAG answers as the bare model, per question: where the paper's per-token routing sends the question's
tokens, and what the answer is once the gold document's adapter is applied whole.

For each question of a slice whose gold document is in a PRAG library (one adapter per document):
- the (token, layer) decisions of LAG's router (Arrow top-k, then SpectR; Fleshman & Van Durme 2025) at the
  question's tokens and at the answer's tokens: the gold adapter's share, the top winners, the share of
  decisions whose Arrow top-k holds the gold adapter at all, and per layer the gold adapter's share;
- the gold adapter's rank under the scores pooled over the question (``polyprag.methods.lag.selection``);
- the answers: closed book, the paper's rule, the router forced to the gold adapter at every token (the ceiling
  of routing: B*A* of the gold adapter everywhere), PRAG's mixture of that one document at full strength (the
  same delta from the PRAG bank: the two must agree), and the pooled variants (the paper's decisions counted over
  the question's tokens, or SpectR's over every adapter; the top adapter held for the whole answer).

    python -m bench.lag_diagnose --data /work/shared/data/popqa-birthplaces --n 40 --libraries LIBS \
        --out bench/results/lag_diagnose
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from polyprag.engine import Mixture

ROOT = Path(__file__).resolve().parents[1]


def find_prag_library(folder: Path, wanted: set[str]) -> Path:
    """The PRAG library in ``folder`` (an eval --libraries folder) holding the most of the wanted documents."""
    best, hits = None, -1
    for cfg in sorted(folder.glob("prag-*/eval-encoding.json")):
        ids = _doc_ids(cfg.parent)
        n = len(wanted & ids)
        if n > hits:
            best, hits = cfg.parent, n
    if best is None:
        sys.exit(f"No PRAG library (prag-*/eval-encoding.json) in {folder}; train one with `polyprag eval "
                 f"--methods prag_oracle,lag --libraries {folder} ...` first.")
    return best


def _doc_ids(path: Path) -> set[str]:
    """The document ids a saved library holds (its documents.jsonl)."""
    docs = path / "documents.jsonl"
    if docs.is_file():
        return {json.loads(line)["id"] for line in docs.read_text().splitlines() if line.strip()}
    return set()


def share(counter: Counter, name: str) -> float:
    total = sum(counter.values())
    return 100.0 * counter.get(name, 0) / total if total else 0.0


def diagnose(llm, prag, questions, k: int, max_new_tokens: int) -> list[dict]:
    """One record per question (see the module docstring)."""
    from polyprag.evaluation.metrics import accuracy
    from polyprag.methods.lag import LAGLibrary, LAGRouter
    from polyprag.methods.lag.selection import SCORES, LAGSelector, _span_mask

    lag = LAGLibrary.from_adapter_library(prag)
    router = LAGRouter(lag, k=k)
    selector = LAGSelector(lag, top=1, score="votes", k=k)
    names = lag.names
    asked = [q.question for q in questions]
    prompts = [llm.question_prompt(q) for q in asked]
    gen = dict(max_new_tokens=max_new_tokens)
    golds = [next(g for g in q.gold if g in lag._position) for q in questions]
    forced = [lag.mixture(torch.nn.functional.one_hot(torch.tensor(lag.index(g)), len(lag)).float()) for g in golds]
    answers = {
        "closed_book": llm.generate(prompts, None, **gen),
        "arrow_spectr": llm.generate(prompts, router, **gen),
        "forced_gold": llm.generate(prompts, forced, **gen),
        "prag_gold": llm.generate(prompts, [prag.mixture([g]) for g in golds], **gen),
        "held_votes_top1": llm.generate(prompts, selector.mixtures(asked), **gen),
        "held_spectr_votes_top1": llm.generate(prompts, LAGSelector(lag, score="spectr_votes").mixtures(asked), **gen),
    }
    pooled = {(s, t): LAGSelector(lag, score=s, tokens=t, k=k).scores(asked) for s in SCORES
              for t in ("question", "prompt")}
    records = []
    for i, (q, p, gold) in enumerate(zip(questions, prompts, golds)):
        g = lag.index(gold)
        text = p + " " + answers["arrow_spectr"][i]
        enc = llm.encode([text])
        L = enc["input_ids"].shape[1]
        n_prompt = len(llm.tokenizer(p, add_special_tokens=False)["input_ids"])
        qmask = _span_mask(llm.tokenizer, p, q.question, n_prompt).bool()
        with router.recording() as record:  # teacher-forced: the same decisions as while decoding (causal)
            llm.logits(enc["input_ids"], enc["attention_mask"], mixture=router)
        at_q, at_a, layer_q, layer_a = Counter(), Counter(), {}, {}
        in_topk = [0, 0]
        for module, calls in record.items():
            winners = calls[0].view(-1)[:L]  # library index per position
            wq, wa = winners[:n_prompt][qmask], winners[n_prompt:]
            at_q.update(names[j] for j in wq.tolist())
            at_a.update(names[j] for j in wa.tolist())
            layer = _layer(module)
            layer_q.setdefault(layer, [0, 0])
            layer_a.setdefault(layer, [0, 0])
            layer_q[layer][0] += int((wq == g).sum())
            layer_q[layer][1] += len(wq)
            layer_a[layer][0] += int((wa == g).sum())
            layer_a[layer][1] += len(wa)
        seen = _inputs(llm, enc)
        for module, f in lag.modules.items():  # is the gold adapter in the Arrow top-k at the question's tokens?
            if not (f.members == g).any():
                continue
            x = seen[module][0, :n_prompt][qmask]
            A_flat, _ = f.for_dtype(x.dtype)
            arrow = (x @ A_flat.T).view(len(x), f.A.shape[0], f.A.shape[1])[..., 0].abs()
            keep = f.members[arrow.topk(min(k, f.A.shape[0]), dim=-1).indices]
            in_topk[0] += int((keep == g).any(-1).sum())
            in_topk[1] += len(x)
        rank = {f"{s}/{t}": int((v[i] > v[i, g]).sum()) + 1 for (s, t), v in pooled.items()}
        records.append({
            "id": q.id, "question": q.question, "answers": list(q.answers), "gold": gold,
            "gold_share_question": share(at_q, gold), "gold_share_answer": share(at_a, gold),
            "top_question": at_q.most_common(3), "top_answer": at_a.most_common(3),
            "winners_question": len(at_q), "gold_in_arrow_topk": 100.0 * in_topk[0] / max(in_topk[1], 1),
            "gold_rank": rank, "layers_question": layer_q, "layers_answer": layer_a,
            "held_choice": names[int(selector.choose([q.question])[0, 0])],
            "answers_by": {m: a[i] for m, a in answers.items()},
            "correct": {m: accuracy(a[i], q.answers) for m, a in answers.items()}})
    return records


class _Inputs(Mixture):
    """A mixture that adds nothing and keeps every hooked module's input (the engine's hooks call it)."""

    def __init__(self):
        self.seen: dict[str, torch.Tensor] = {}

    def apply(self, name, x, output):
        self.seen[name] = x.detach()
        return None


def _inputs(llm, enc) -> dict[str, torch.Tensor]:
    """Each hooked module's input on a bare forward pass over one batch."""
    observer = _Inputs()
    llm.logits(enc["input_ids"], enc["attention_mask"], mixture=observer)
    return observer.seen


def peft_arrow_check(llm, prag, questions, k: int) -> dict:
    """peft's own Arrow (``ArrowConfig``, ``create_arrow_model``) over the PRAG library's documents exported as peft
    folders, against polyprag's ``LAGRouter(variant="arrow")`` (the eval's ``lag_arrow``): the largest logit
    difference over the questions' prompts, and whether the two pick the same next token."""
    import copy
    import tempfile

    from peft import ArrowConfig, create_arrow_model

    from polyprag.library.export import export_peft
    from polyprag.methods.lag import LAGLibrary, LAGRouter

    with tempfile.TemporaryDirectory(prefix="lag-peft-") as tmp:
        paths = [str(export_peft(prag, [d], Path(tmp) / d)) for d in prag.doc_ids]
        base = copy.deepcopy(llm.model)
        for m in base.modules():
            m._forward_hooks.clear()
        t0 = time.perf_counter()
        model = create_arrow_model(base, paths, ArrowConfig(top_k=k, router_temperature=1.0, rng_seed=0)).eval()
        load_s = time.perf_counter() - t0
        ours = LAGRouter(LAGLibrary.from_adapter_library(prag), k=k, variant="arrow")
        worst, same, total = 0.0, 0, 0
        for q in questions:
            enc = llm.encode([llm.question_prompt(q.question)])
            with torch.no_grad():
                theirs = model(input_ids=enc["input_ids"]).logits.float()
            mine = llm.logits(enc["input_ids"], mixture=ours).float()
            worst = max(worst, float((theirs - mine).abs().max()))
            same += int(theirs[0, -1].argmax() == mine[0, -1].argmax())
            total += 1
    return {"adapters": len(paths), "peft_load_s": load_s, "max_logit_diff": worst,
            "same_next_token": f"{same}/{total}"}


def _layer(module: str) -> int:
    parts = module.split(".")
    return next(int(p) for p in parts if p.isdigit())


def table(records: list[dict]) -> str:
    """The per-question table and the per-layer gold shares, as markdown."""
    methods = list(records[0]["answers_by"])
    lines = ["| question | gold share of decisions, question / answer tokens (%) | winners at question tokens "
             "| gold in Arrow top-k (% of question decisions) | gold rank, votes / spectr (question tokens) | "
             + " | ".join(methods) + " |", "|" + "---|" * (5 + len(methods))]
    for r in records:
        cells = [f"{a}{' ✓' if r['correct'][m] else ''}" for m, a in r["answers_by"].items()]
        lines.append(f"| {r['question']} ({r['answers'][0]}) | {r['gold_share_question']:.0f} / "
                     f"{r['gold_share_answer']:.0f} | {r['winners_question']} | {r['gold_in_arrow_topk']:.0f} | "
                     f"{r['gold_rank']['votes/question']} / {r['gold_rank']['spectr/question']} | "
                     + " | ".join(c.replace("|", "/") for c in cells) + " |")
    n = len(records)
    acc = {m: 100.0 * sum(r["correct"][m] for r in records) / n for m in methods}
    lines.append(f"| **accuracy ({n} questions)** | {sum(r['gold_share_question'] for r in records) / n:.0f} / "
                 f"{sum(r['gold_share_answer'] for r in records) / n:.0f} | "
                 f"{sum(r['winners_question'] for r in records) / n:.1f} | "
                 f"{sum(r['gold_in_arrow_topk'] for r in records) / n:.0f} | | "
                 + " | ".join(f"{acc[m]:.1f}%" for m in methods) + " |")
    lines += ["", "Gold rank among the adapters under each pooled score (recall@1 / recall@3, % of questions):", "",
              "| score / tokens | recall@1 | recall@3 | median rank |", "|---|---|---|---|"]
    for key in records[0]["gold_rank"]:
        ranks = sorted(r["gold_rank"][key] for r in records)
        lines.append(f"| {key} | {100.0 * sum(x == 1 for x in ranks) / n:.1f} | "
                     f"{100.0 * sum(x <= 3 for x in ranks) / n:.1f} | {ranks[n // 2]} |")
    layers = sorted({int(k) for r in records for k in r["layers_question"]})
    lines += ["", "The gold adapter's share of the paper's decisions per layer (all questions, %):", "",
              "| layer | " + " | ".join(str(x) for x in layers) + " |", "|---|" + "---|" * len(layers)]
    for what in ("question", "answer"):
        row = []
        for layer in layers:
            hit = sum(r[f"layers_{what}"].get(layer, r[f"layers_{what}"].get(str(layer), [0, 0]))[0] for r in records)
            tot = sum(r[f"layers_{what}"].get(layer, r[f"layers_{what}"].get(str(layer), [0, 0]))[1] for r in records)
            row.append(f"{100.0 * hit / max(tot, 1):.0f}")
        lines.append(f"| {what} tokens | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="slice folder (questions.jsonl, corpus.jsonl)")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--library", help="a saved PRAG library holding the questions' gold documents")
    p.add_argument("--libraries", help="or an eval --libraries folder: its PRAG library holding the most of them")
    p.add_argument("--k", type=int, default=5, help="Arrow top-k")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer budget (the eval's default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--peft-check", action="store_true", help="also compare peft's Arrow with polyprag's lag_arrow")
    p.add_argument("--out", help="folder for diagnose.json and diagnose.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from polyprag import AdapterLibrary, LoRAMixingLLM
    from polyprag.evaluation.questions import evidence
    from polyprag.evaluation.runner import load_slice

    _, questions = load_slice(args.data, args.n, args.start)
    questions = [replace(q, gold=evidence(q)) for q in questions]
    llm = LoRAMixingLLM.from_pretrained(device="cpu")
    if args.library:
        path = Path(args.library)
    elif args.libraries:
        path = find_prag_library(Path(args.libraries), {g for q in questions for g in q.gold})
    else:
        sys.exit("Give --library or --libraries.")
    prag = AdapterLibrary.load(path, llm)
    held = set(prag.doc_ids)
    asked = [q for q in questions if any(g in held for g in q.gold)]
    print(f"{len(asked)} of {len(questions)} questions have a gold document among the {len(held)} adapters of {path}")
    t0 = time.perf_counter()
    records = diagnose(llm, prag, asked, args.k, args.max_new_tokens)
    md = table(records)
    if args.peft_check:
        check = peft_arrow_check(llm, prag, asked, args.k)
        md += (f"\n\npeft's Arrow (create_arrow_model, {check['adapters']} adapters exported as peft folders, loaded "
               f"in {check['peft_load_s']:.0f} s) vs polyprag's lag_arrow: max |logit diff| "
               f"{check['max_logit_diff']:.2e}, same next token on {check['same_next_token']} prompts.")
    print(md)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "diagnose.json").write_text(json.dumps(records, indent=1, default=str), encoding="utf-8")
        (out / "diagnose.md").write_text(md + "\n", encoding="utf-8")
    return records


if __name__ == "__main__":
    main()
