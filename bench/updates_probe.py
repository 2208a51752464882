"""Update probe: added documents answered, and what a Poly-PRAG bank still knows of deleted documents.

Encodes the 8 bundled invented facts, adds the 6 of tests/data/added_facts.jsonl with the default
``add_documents``, then deletes every fourth of the 14 documents and asks each deleted document's question with
no passage in the prompt: closed-book, with uniform routing over the whole bank, and with the deleted document's
own routing row (as someone who kept it could) — before the deletion, after ``delete_documents(ids)`` and after
``delete_documents(ids, refit=True)``. Every question is asked with its own document's mixture (oracle
retrieval). For comparison, the 14 documents are also encoded together from scratch. ``--recipe default`` encodes with ``PolyPRAGEncoder(llm)``'s settings; ``--recipe passage40`` with
the earlier quickstart's (the passage alone, 40 epochs, lr 1e-3, routing lr 0.1). Prints and writes one JSON
object.

    python -m bench.updates_probe --threads 1 --recipe default     # writes bench/results/updates_default.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--every", type=int, default=4, help="delete documents 0, every, 2·every, …")
    p.add_argument("--recipe", choices=("default", "passage40"), default="default")
    p.add_argument("--out", default=None, help="default: bench/results/updates_<recipe>.json")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from polyprag import AdapterLibrary, BankMixture, LoRAMixingLLM, PolyPRAGEncoder, load_corpus, load_questions
    from polyprag.demo.quickstart import DATA, contains_answer

    added = HERE.parent / "tests" / "data"
    old, new = load_corpus(DATA / "invented_facts.jsonl"), load_corpus(added / "added_facts.jsonl")
    docs = old + new
    questions = load_questions(DATA / "invented_questions.jsonl") + load_questions(added / "added_questions.jsonl")
    question_of = {q.gold[0]: q for q in questions}
    gone = [d.id for d in docs[:: args.every]]
    kept = [d.id for d in docs if d.id not in gone]
    llm = LoRAMixingLLM.from_pretrained(device="cpu")

    def answered(ids, mixtures) -> list[str]:
        """The ids whose question is answered with the given mixture (one per id; None: the bare model)."""
        qs = [question_of[i] for i in ids]
        texts = llm.generate([llm.question_prompt(q.question) for q in qs], mixtures)
        return [i for i, q, t in zip(ids, qs, texts) if contains_answer(t, q.answers)]

    def uniform(library) -> list:
        m = library.bank.m
        return [BankMixture(library.bank, torch.full((1, 1, m), 1.0 / m)) for _ in gone]

    def saved_rows(library, rows) -> list:  # the deleted documents' routing rows, kept from before the deletion
        return [BankMixture(library.bank, rows[i][None, None]) for i in range(len(gone))]

    def own(library, ids) -> list:
        return [library.mixture([i]) for i in ids]

    t0 = time.perf_counter()
    settings = {"default": {}, "passage40": dict(augmenter="passage", epochs=40, lr=1e-3, routing_lr=0.1,
                                                 num_adapters=8, rank=2, alpha=32)}[args.recipe]
    encoder = PolyPRAGEncoder(llm, progress=False, seed=0, **settings)
    library = encoder.fit(old)
    encode_s = time.perf_counter() - t0
    old_ids, new_ids = [d.id for d in old], [d.id for d in new]
    out: dict = {"recipe": args.recipe, "encode_s": encode_s, "encoded": len(old),
                 "closed_book": answered(old_ids + new_ids, [None] * len(docs))}
    before_add = answered(old_ids, own(library, old_ids))
    library.add_documents(new, progress=False)
    out["add"] = {"added_answered": answered(new_ids, own(library, new_ids)), "old_answered_before": before_add,
                  "old_answered_after": answered(old_ids, own(library, old_ids)),
                  "add_s": library.last_update["seconds"], "new_adapters": library.last_update["new_adapters"]}
    t0 = time.perf_counter()
    joint = PolyPRAGEncoder(llm, progress=False, seed=0, **settings).fit(docs)  # the alternative: encode all 14
    out["joint_fit"] = {"added_answered": answered(new_ids, own(joint, new_ids)),
                        "old_answered": answered(old_ids, own(joint, old_ids)), "encode_s": time.perf_counter() - t0}
    del joint
    rows = library.routing_weights(gone)  # [deleted, m]
    out.update(documents=len(docs), deleted=gone, adapters=library.bank.m)
    out["before"] = {"own_routing": answered(gone, saved_rows(library, rows)),
                     "uniform": answered(gone, uniform(library)),
                     "kept_answered": answered(kept, own(library, kept))}
    with tempfile.TemporaryDirectory() as tmp:
        library.save(Path(tmp) / "lib")
        refit = AdapterLibrary.load(Path(tmp) / "lib", llm)
    library.delete_documents(gone)
    out["deleted_only"] = {"own_routing": answered(gone, saved_rows(library, rows)),
                           "uniform": answered(gone, uniform(library)),
                           "kept_answered": answered(kept, own(library, kept)),
                           "dropped_adapters": library.last_update["dropped_adapters"]}
    refit.delete_documents(gone, refit=True, progress=False)
    report = refit.last_update
    out["refit"] = {"own_routing": answered(gone, saved_rows(refit, rows)),
                    "uniform": answered(gone, uniform(refit)),
                    "kept_answered": answered(kept, own(refit, kept)),
                    "refit_adapters": report["refit"]["adapters"], "refit_documents": report["refit"]["documents"],
                    "refit_steps": report["refit"]["steps"], "refit_s": report["seconds"],
                    "refit_s_over_reencoding_the_rest": report["seconds"] / (encode_s / len(old) * len(kept))}
    print(json.dumps(out, indent=2))
    path = Path(args.out or HERE / "results" / f"updates_{args.recipe}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
