"""Recipe probe: which training recipe injects knowledge into the default model? (oracle retrieval, small slices)

Encodes only the gold passages of a few dev questions, then answers each question closed-book, with its
gold passages in the prompt (the ceiling), and in parametric mode with its gold documents' mixture —
plus two controls that separate injected knowledge from priors: the mixture of other (wrong) documents,
and (Poly-PRAG) the routing rows shuffled between documents. One JSON line per run in --log.

    python -m bench.recipe_probe --data ../shared/data/popqa --rows 457:467,400:410 --method prag \
        --texts passage,qa --epochs 10 --lr 1e-3 --log bench/results/recipes/runs.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--rows", default="457:467,400:410", help="question rows, python slices joined by commas")
    p.add_argument("--method", choices=("prag", "poly"), default="prag")
    p.add_argument("--texts", default="passage,qa", help="training texts: passage,rewrite,qa,qa_context")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--routing-lr", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--routing-active", type=int, default=0, help="Poly-PRAG: adapters each routing row starts on (0: all)")
    p.add_argument("--rank", type=int, default=2)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--m", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--targets", default="gate_proj,up_proj,down_proj")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-length", type=int, default=256, help="training tokens per text (longer ones are cut)")
    p.add_argument("--combine", action="store_true", help="also answer with the gold passages and their mixture")
    p.add_argument("--recite", default="", help="also answer by recitation: 'passage' (each gold document's mixture "
                   "continues the start-of-text token) and/or 'recall' (its recall question), joined by commas")
    p.add_argument("--recite-tokens", type=int, default=96)
    p.add_argument("--log", default="bench/results/recipes/runs.jsonl")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from polyprag import LoRAMixingLLM, PolyPRAGEncoder, PRAGEncoder
    from polyprag.encoding.augment import Augmentation, FixedAugmenter, GeneratedQAAugmenter, examples_from
    from polyprag.evaluation import accuracy, load_slice
    from polyprag import BankMixture

    docs, questions = load_slice(args.data)
    rows = [i for part in args.rows.split(",") for i in range(*map(int, part.split(":")))]
    qs = [questions[i] for i in rows]
    by_id = {d.id: d for d in docs}
    gold_ids = sorted({g for q in qs for g in q.gold})
    enc_docs = [by_id[g] for g in gold_ids]
    targets = tuple(args.targets.split(","))
    llm = LoRAMixingLLM.from_pretrained(target_modules=targets, compute_dtype="auto")

    t0 = time.perf_counter()
    kinds = tuple(args.texts.split(","))
    generated = set(kinds) & {"rewrite", "qa", "qa_context"}
    aug = GeneratedQAAugmenter(llm, progress=True, texts=kinds) if generated else None
    augs = aug.generate(enc_docs) if aug else [Augmentation(rewrite="", qa=[])] * len(enc_docs)
    augment_s = time.perf_counter() - t0
    examples = {d.id: examples_from(d, a, kinds) for d, a in zip(enc_docs, augs)}
    fixed = FixedAugmenter(examples)
    common = dict(rank=args.rank, alpha=args.alpha, lr=args.lr, epochs=args.epochs, augmenter=fixed, seed=0,
                  progress=True, max_length=args.max_length)
    t0 = time.perf_counter()
    if args.method == "prag":
        lib = PRAGEncoder(llm, **common).fit(enc_docs)
    else:
        lib = PolyPRAGEncoder(llm, num_adapters=args.m, routing_lr=args.routing_lr, batch_size=args.batch_size,
                              temperature=args.temperature, routing_active=args.routing_active, **common).fit(enc_docs)
    train_s = time.perf_counter() - t0

    rng = random.Random(0)

    def wrong(q):
        pool = [g for g in gold_ids if g not in q.gold]
        return rng.sample(pool, len(q.gold))

    def answer(prompts, mixtures):
        out = []
        for s in range(0, len(prompts), 16):
            out += llm.generate(prompts[s: s + 16], mixtures[s: s + 16], max_new_tokens=32)
        return out

    plain = [llm.question_prompt(q.question) for q in qs]
    ctx = [llm.question_prompt(q.question, [by_id[g].full_text for g in q.gold]) for q in qs]
    runs = {"closed_book": answer(plain, [None] * len(qs)),
            "parametric_oracle": answer(plain, [lib.mixture(q.gold) for q in qs]),
            "parametric_wrong": answer(plain, [lib.mixture(wrong(q)) for q in qs])}
    if args.method == "poly":
        perm = list(range(len(gold_ids)))
        while any(i == j for i, j in enumerate(perm)):
            rng.shuffle(perm)
        row = {g: i for i, g in enumerate(lib.doc_ids)}

        def shuffled(ids):
            w = torch.stack([torch.softmax(torch.zeros(1), 0)[0] * 0 + lib.routing_weights([lib.doc_ids[perm[row[i]]]])[0]
                             for i in ids])
            return BankMixture(lib.bank, w.mean(0)[None, None])

        runs["parametric_shuffled"] = answer(plain, [shuffled(q.gold) for q in qs])
        runs["parametric_oracle_sum"] = answer(plain, [lib.mixture(q.gold, rule="sum") for q in qs])
        uni = torch.full((1, 1, lib.bank.m), 1.0 / lib.bank.m)
        runs["parametric_uniform"] = answer(plain, [BankMixture(lib.bank, uni) for _ in qs])
        ent = -(lib.routing_weights(lib.doc_ids).clamp_min(1e-9).log() * lib.routing_weights(lib.doc_ids)).sum(-1)
    runs["in_context_oracle"] = answer(ctx, [None] * len(qs))
    from polyprag.encoding.augment import recall_question

    def recite(name, kind, ids_of, mixture_of):
        """Each question's documents recited by their own mixtures, then read in context with no adapter."""
        flat = [(qi, g) for qi, q in enumerate(qs) for g in ids_of(q)]
        bos = llm.tokenizer.bos_token or ""
        prompts = [bos if kind == "passage" else llm.question_prompt(recall_question(by_id[g])) for _, g in flat]
        texts = llm.generate(prompts, [mixture_of(g) for _, g in flat], max_new_tokens=args.recite_tokens, short=False)
        per_q = [[t for (qi, _), t in zip(flat, texts) if qi == i] for i in range(len(qs))]
        recitals[name] = per_q[:3]
        return answer([llm.question_prompt(q.question, r) for q, r in zip(qs, per_q)], [None] * len(qs))

    recitals = {}
    wrong_of = {q.id: wrong(q) for q in qs}
    for kind in [k for k in args.recite.split(",") if k]:
        for name, ids_of, mixture_of in (("oracle", lambda q: q.gold, lambda g: lib.mixture([g])),
                                         ("closed", lambda q: q.gold, lambda g: None),
                                         ("wrong", lambda q: wrong_of[q.id], lambda g: lib.mixture([g])),
                                         *((("shuffled", lambda q: q.gold, lambda g: shuffled([g])),)
                                           if args.method == "poly" else ())):
            runs[f"recite_{kind}_{name}"] = recite(f"{kind}_{name}", kind, ids_of, mixture_of)
    if args.combine:
        runs["combine_oracle"] = answer(ctx, [lib.mixture(q.gold) for q in qs])
    scores = {k: sum(accuracy(a, q.answers) for a, q in zip(v, qs)) for k, v in runs.items()}
    rec = {"tag": args.tag, "data": Path(args.data).name, "rows": args.rows, "method": args.method,
           "texts": args.texts, "epochs": args.epochs, "lr": args.lr, "rank": args.rank, "alpha": args.alpha,
           "targets": args.targets, "n": len(qs), "docs": len(enc_docs), "max_length": args.max_length,
           "train_s_per_doc": round(train_s / len(enc_docs), 2), "augment_s_per_doc": round(augment_s / len(enc_docs), 2),
           "scores": scores}
    if args.method == "poly":
        rec.update(m=args.m, routing_lr=args.routing_lr, temperature=args.temperature,
                   routing_active=args.routing_active,
                   routing_entropy=round(float(ent.mean()), 3))
    rec["recitals"] = recitals
    rec["examples"] = [{"q": q.question, "gold": q.answers[0], **{k: v[i] for k, v in runs.items()}}
                       for i, q in enumerate(qs[:: max(1, len(qs) // 6)])]
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k != "examples"}))
    for e in rec["examples"]:
        print(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
