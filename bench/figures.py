"""The figures of the performance and update issues plus memory, each a ratio of two things measured in one run
(figure 1 and the other generation figures are in generation.py).

Every function takes what it needs, measures, and returns a dict with ``ratio``, ``target``, ``met``
and the absolute numbers behind the ratio (seconds, bytes, tokens).
"""
from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from polyprag import (AdapterLibrary, Document, GeneratedQAAugmenter, LoRAMixingLLM, ParametricRetriever,
                      PolyPRAGEncoder, PRAGEncoder)
from polyprag.encoding.augment import FixedAugmenter
from polyprag.encoding.recipes import bank_size, get_recipe

from .common import (at_least, folder_bytes, paired, random_bank, random_library, result, rss_mb,
                     save_peft_adapter, synthetic_docs, sync, timed)


def mixture_vs_bare(llm: LoRAMixingLLM, library: AdapterLibrary, question: str, tokens: int,
                    repeats: int) -> dict:
    """2. generate with a mixture (mixed anew each call) / the bare model, same prompt and length."""
    prompt = llm.question_prompt(question)
    ids = library.doc_ids[:3]

    def run(mixture_of):
        return lambda: llm.generate([prompt], [mixture_of()], max_new_tokens=tokens, min_new_tokens=tokens)

    bare, mean = paired(run(lambda: None), run(lambda: library.mixture(ids, "mean")), repeats, llm.device)
    bare2, total = paired(run(lambda: None), run(lambda: library.mixture(ids, "sum")), repeats, llm.device)
    return result(mean / bare, 1.15, True, new_tokens=tokens, repeats=repeats, bare_s=bare, mixture_mean_s=mean,
                   ratio_sum_of_3_deltas=total / bare2, mixture_sum_s=total, bare_s_second_pairing=bare2)


def switch_vs_peft(llm: LoRAMixingLLM, library: AdapterLibrary, queries: int, adapters: int) -> dict:
    """3. Switching the mixture between two queries / PRAG's way with peft adapter folders on disk."""
    from peft import PeftModel

    prag = random_library(llm, synthetic_docs(adapters, "prag"), prag=True)
    gen = torch.Generator().manual_seed(3)
    triples = [torch.randperm(adapters, generator=gen)[:3].tolist() for _ in range(queries)]
    ours_poly, ours_prag, theirs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        folders = [save_peft_adapter(prag.bank, j, Path(tmp) / f"doc{j}") for j in range(adapters)]
        base = copy.deepcopy(llm.model)  # peft rewrites the modules it wraps; keep ours untouched
        pm = PeftModel.from_pretrained(base, str(folders[0]), adapter_name="idle").eval()

        def peft_switch(triple: list[int]) -> None:
            names = [f"doc{j}" for j in triple]
            for name, j in zip(names, triple):
                pm.load_adapter(str(folders[j]), adapter_name=name)
            pm.add_weighted_adapter(names, [1.0] * len(names), "query", combination_type="cat")
            pm.set_adapter("query")
            sync(llm.device)  # (the answer would be generated here)
            pm.set_adapter("idle")
            for name in names + ["query"]:
                pm.delete_adapter(name)

        peft_switch(triples[0])  # warm-up
        for triple in triples:
            ids = [prag.doc_ids[j] for j in triple]
            poly_ids = [library.doc_ids[j % len(library)] for j in triple]
            ours_poly.append(timed(lambda: library.mixture(poly_ids).prepare(llm.dtype), llm.device))
            ours_prag.append(timed(lambda: prag.mixture(ids, "sum").prepare(llm.dtype), llm.device))
            theirs.append(timed(lambda: peft_switch(triple), llm.device))
        error = _peft_agreement(llm, pm, prag, folders, triples[0])
        del pm, base
    ours, peft_s = statistics.median(ours_poly), statistics.median(theirs)
    return result(ours / peft_s, 0.05, True, queries=queries, adapters_on_disk=adapters,
                   polyprag_poly_switch_s=ours, polyprag_prag_sum_switch_s=statistics.median(ours_prag),
                   ratio_prag_sum=statistics.median(ours_prag) / peft_s, peft_switch_s=peft_s,
                   peft_vs_polyprag_max_abs_logit_diff=error)


def _peft_agreement(llm, pm, prag, folders, triple) -> float:
    """Max |logit difference| between peft's cat-merged adapters and polyprag's sum mixture: same model?"""
    names = [f"doc{j}" for j in triple]
    for name, j in zip(names, triple):
        pm.load_adapter(str(folders[j]), adapter_name=name)
    pm.add_weighted_adapter(names, [1.0] * 3, "query", combination_type="cat")
    pm.set_adapter("query")
    enc = llm.encode([llm.question_prompt("Who built the lighthouse?")])
    with torch.no_grad():
        theirs = pm(**enc).logits.float()
    ours = llm.logits(enc["input_ids"], enc["attention_mask"],
                      prag.mixture([prag.doc_ids[j] for j in triple], "sum")).float()
    return float((theirs - ours).abs().max())


def batched_vs_one_by_one(llm: LoRAMixingLLM, retriever: ParametricRetriever, questions: Sequence[str],
                          tokens: int, repeats: int) -> dict:
    """4. n questions with n different mixtures in one batch / the same n generated one by one."""
    found = [retriever.retrieve(q) for q in questions]
    prompts = [llm.question_prompt(q) for q in questions]
    mixtures = [f.mixture for f in found]
    distinct = len({tuple(f.doc_ids) for f in found})

    def one_by_one():
        for p, q in zip(prompts, questions):
            llm.generate([p], [retriever.retrieve(q).mixture], max_new_tokens=tokens, min_new_tokens=tokens)

    def batched():
        llm.generate(prompts, [retriever.retrieve(q).mixture for q in questions], max_new_tokens=tokens,
                     min_new_tokens=tokens)

    single, batch = paired(one_by_one, batched, repeats, llm.device, warmup=0)
    widths = llm.encode(prompts)["attention_mask"]
    return result(single / batch, 4.0, False, questions=len(questions), distinct_mixtures=distinct,
                   new_tokens=tokens, repeats=repeats, one_by_one_s=single, batched_s=batch,
                   batched_tokens_per_s=len(questions) * tokens / batch,
                   one_by_one_tokens_per_s=len(questions) * tokens / single,
                   padding_fraction=float(1 - widths.float().mean()), mixtures_kind=type(mixtures[0]).__name__)


def storage(llm: LoRAMixingLLM, documents: int, m: int, prag_samples: int) -> tuple[dict, AdapterLibrary, Path]:
    """5. Bytes per document on disk, Poly-PRAG / PRAG, read from the saved files."""
    tmp = Path(tempfile.mkdtemp(prefix="polyprag-bench-"))
    lib = random_library(llm, synthetic_docs(documents), m=m)
    lib.save(tmp / "poly")
    bank_b = folder_bytes(tmp / "poly", ["bank.safetensors"])
    routing_b = folder_bytes(tmp / "poly", ["routing.safetensors"])
    prag_bank = random_bank(llm, prag_samples, lib.bank.rank, lib.bank.alpha, seed=5)
    per_prag = statistics.mean(folder_bytes(save_peft_adapter(prag_bank, j, tmp / f"prag{j}"))
                               for j in range(prag_samples))
    marginal = routing_b / documents
    amortised = (bank_b + routing_b) / documents
    return result(marginal / per_prag, 1 / 1000, True, documents=documents, adapters=m, rank=lib.bank.rank,
                   poly_bank_bytes=bank_b, poly_routing_bytes=routing_b,
                   poly_bytes_per_document_marginal=marginal, poly_bytes_per_document_amortised=amortised,
                   ratio_amortised_with_bank=amortised / per_prag, prag_bytes_per_document=per_prag,
                   documents_jsonl_bytes_both_methods=folder_bytes(tmp / "poly", ["documents.jsonl"])), lib, tmp


def add_document(llm: LoRAMixingLLM, docs: Sequence[Document], reencode_docs: int,
                 library_docs: int = 100) -> tuple[dict, dict]:
    """6. Adding one document with the default add / training one PRAG adapter, and 7. the same add /
    re-encoding a library of ``library_docs`` documents, with what the add costs on disk.

    Both trainings use the default recipe's texts (generated once beforehand, not timed) and epochs. The add
    goes into a ``library_docs``-document library of the recipe's bank size (the bank grows by one adapter,
    old adapters frozen). Re-encoding is timed on ``reencode_docs`` documents and scaled linearly to
    ``library_docs`` (every epoch visits every document's texts once, so its cost grows linearly)."""
    recipe = get_recipe("default")
    docs = at_least(docs, reencode_docs + 3)
    texts = GeneratedQAAugmenter(llm, texts=recipe.texts)(docs)
    fixed = FixedAugmenter({d.id: t for d, t in zip(docs, texts)})
    encoder = PolyPRAGEncoder(llm, augmenter=fixed, progress=False)
    library = random_library(llm, synthetic_docs(library_docs), m=recipe.poly.num_adapters or bank_size(library_docs),
                             rank=recipe.rank,
                             training={**asdict(encoder.train), "augmenter": "FixedAugmenter",
                                       "texts": list(recipe.texts)})
    warm, one, other = docs[-3:]
    library.add_documents([warm], augmenter=fixed, epochs=1, progress=False)  # first backward pass allocations
    tmp = Path(tempfile.mkdtemp(prefix="polyprag-bench-add-"))
    library.save(tmp / "before")
    add = timed(lambda: library.add_documents([one], augmenter=fixed, progress=False), llm.device)
    library.save(tmp / "after")
    grown = library.last_update["new_adapters"]
    routing = timed(lambda: library.add_documents([other], augmenter=fixed, strategy="routing", progress=False),
                    llm.device)
    prag = timed(lambda: PRAGEncoder(llm, augmenter=fixed, progress=False).fit([one]), llm.device)
    reencode = timed(lambda: encoder.fit(docs[:reencode_docs]), llm.device)
    scaled = reencode * library_docs / reencode_docs
    tensors = ["bank.safetensors", "routing.safetensors"]
    added_bytes = folder_bytes(tmp / "after", tensors) - folder_bytes(tmp / "before", tensors)
    text_bytes = folder_bytes(tmp / "after", ["documents.jsonl"]) - folder_bytes(tmp / "before", ["documents.jsonl"])
    shutil.rmtree(tmp, ignore_errors=True)
    common = dict(add_s=add, epochs=encoder.train.epochs, texts=list(recipe.texts),
                  training_examples=len(fixed.examples[one.id]), library_documents=library_docs,
                  adapters_added=grown, bytes_per_added_document=added_bytes,
                  text_bytes_per_added_document=text_bytes)
    vs_prag = result(add / prag, 0.5, True, prag_adapter_s=prag, prag_epochs=recipe.prag.epochs,
                      routing_only_add_s=routing, routing_only_ratio=routing / prag, **common)
    vs_reencode = result(add / scaled, 0.1, True, reencode_s=scaled, reencode_measured_s=reencode,
                          reencode_measured_documents=reencode_docs,
                          note=f"re-encoding timed on {reencode_docs} documents, x{library_docs / reencode_docs:g} "
                               f"(linear); one added document adds {added_bytes:,} bytes of tensors", **common)
    return vs_prag, vs_reencode


def memory(llm: LoRAMixingLLM, library: AdapterLibrary, folder: Path) -> dict:
    """The library for N documents with m adapters, in memory, against the model's own memory."""
    model_b = sum(t.numel() * t.element_size() for t in list(llm.model.parameters()) + list(llm.model.buffers()))
    sizes = library.storage_bytes()
    lib_b = sizes["bank"] + sizes["routing"]
    before_rss = rss_mb()
    before_gpu = torch.cuda.memory_allocated(llm.device) if llm.device.type == "cuda" else 0
    loaded = AdapterLibrary.load(folder / "poly", llm)
    measured = {"library_load_rss_delta_mb": rss_mb() - before_rss}
    if llm.device.type == "cuda":
        measured["library_load_gpu_delta_mb"] = (torch.cuda.memory_allocated(llm.device) - before_gpu) / 2**20
    del loaded
    return result(lib_b / model_b, 0.10, True, documents=len(library), adapters=library.bank.m,
                   library_tensor_bytes=lib_b, model_bytes=model_b, **measured)
