"""Evaluation on QA benchmarks: SQuAD EM/F1, PopQA accuracy, BM25 recall, cost per method, one runner.

The runner follows PRAG's protocol (Su et al. 2025): the documents encoded are the union of the
top-k BM25 passages of the evaluated questions; PRAG and Poly-PRAG are trained on one shared
augmentation; every method answers the same questions with the same short-answer prompt.
Metrics are those of PRAG's ``src/utils.py``: answers normalised as in SQuAD (lower case, no
punctuation, no articles, single spaces), the maximum over the answer aliases.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import statistics
import string
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .augment import FixedAugmenter, GeneratedQAAugmenter, PassageAugmenter
from .documents import Document, Question, load_corpus, load_questions
from .errors import InvalidInputError, PolyPRAGError
from .models import pick_compute_dtype
from .parametric import ParametricRetriever
from .pipeline import PolyPRAG
from .retrieval import BM25Retriever

if TYPE_CHECKING:
    from .llm import LoRAMixingLLM

log = logging.getLogger(__name__)

# method -> (the library it needs, PolyPRAG mode, how the top-k documents' adapters combine)
METHODS: dict[str, tuple[str | None, str, str | None]] = {
    "closed_book": (None, "closed_book", None),
    "in_context": (None, "in_context", None),          # standard RAG: BM25 top-k in the prompt
    "prag": ("prag", "parametric", "sum"),             # PRAG: top-k per-document deltas summed
    "prag_combine": ("prag", "combine", "sum"),        # PRAG + passages in the prompt
    "polyprag": ("poly", "parametric", "mean"),        # Poly-PRAG: mean of the top-k routing vectors
    "polyprag_combine": ("poly", "combine", "mean"),   # Poly-PRAG + passages in the prompt
    "polyprag_sum": ("poly", "parametric", "sum"),     # Poly-PRAG, the k documents' deltas summed
    "polyprag_sum_combine": ("poly", "combine", "sum"),
    "lag": ("lag", "lag", None),                       # LAG over the PRAG adapters, data-free routing
    "lag_in_context": ("lag", "lag_in_context", None),  # LAG + passages in the prompt
}
DEFAULT_METHODS = ("closed_book", "in_context", "prag", "prag_combine", "polyprag", "polyprag_combine")


# ---- metrics (PRAG's src/utils.py) ---------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, drop articles a/an/the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
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


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


# ---- configuration and results ------------------------------------------------------------------
@dataclass
class EvalConfig:
    """One evaluation run: the data slice, the methods and how the parametric libraries are encoded."""

    data: str
    n: int | None = None                       # first n questions (None: all)
    k: int = 3                                 # BM25 passages per question
    methods: tuple[str, ...] = DEFAULT_METHODS
    model: str | None = None                   # None: the bundled default model
    num_adapters: int = 8                      # Poly-PRAG bank size m
    rank: int = 2                              # LoRA rank (Poly-PRAG and PRAG)
    alpha: float = 32.0
    epochs: int = 2                            # Poly-PRAG epochs
    lr: float = 1e-3                           # Poly-PRAG bank learning rate
    routing_lr: float = 1e-2
    prag_epochs: int = 1                       # PRAG's default
    prag_lr: float = 3e-4                      # PRAG's default
    lag_k: int = 5                             # LAG's Arrow filter size
    augment: str = "generated_qa"              # or "passage"
    augment_batch_size: int = 8
    batch_size: int = 8                        # Poly-PRAG training batch
    max_length: int = 256                      # training tokens per example (longer ones are cut)
    max_batch_tokens: int = 2048               # padded tokens per training micro-batch
    compute_dtype: str = "auto"                # autocast dtype when the runner loads the model ("auto": bf16
    #                                            where the hardware computes it natively, else float32)
    answer_batch_size: int = 16
    max_new_tokens: int = 32
    latency_samples: int = 10                  # questions answered one at a time for latency
    seed: int = 0
    out: str | None = None
    cache: str | None = None                   # augmentation cache folder (None: the default)
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise InvalidInputError(f"Unknown method(s) {unknown}; choose from {list(METHODS)}.")
        if self.n is not None and self.n < 1:
            raise InvalidInputError(f"n must be >= 1, got {self.n}.")
        if self.k < 1:
            raise InvalidInputError(f"k must be >= 1, got {self.k}.")
        pick_compute_dtype(self.compute_dtype, self.device or "cpu")  # fails before any model loads
        if self.augment not in ("generated_qa", "passage"):
            raise InvalidInputError(f"augment must be 'generated_qa' or 'passage', got {self.augment!r}.")
        for name in ("num_adapters", "rank", "epochs", "prag_epochs", "batch_size", "answer_batch_size",
                     "augment_batch_size", "max_new_tokens", "lag_k", "max_length", "max_batch_tokens"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.latency_samples < 0:
            raise InvalidInputError(f"latency_samples must be >= 0, got {self.latency_samples}.")


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
    latency_p50_s: float | None = None             # one question alone: retrieve + mix + generate
    batched_s_per_question: float | None = None    # answering in batches
    predictions: list[dict] = field(default_factory=list, repr=False)


@dataclass
class EvalReport:
    """Everything one run measured: per-method results and the run's facts (sizes, times, cache)."""

    config: dict
    results: list[MethodResult]
    facts: dict

    def to_json(self) -> dict:
        return {"config": self.config, "facts": self.facts,
                "results": [{k: v for k, v in asdict(r).items() if k != "predictions"} for r in self.results]}

    def markdown(self) -> str:
        """The results as a markdown table (metrics in percent), with the run's key facts under it."""
        rows = ["| method | EM | F1 | acc | BM25 recall@k | bytes/doc | bytes/new doc | encode s/doc "
                "| latency p50 s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            rows.append(f"| {r.method} | {r.em:.1f} | {r.f1:.1f} | {r.accuracy:.1f} | {_fmt(r.recall_at_k, '.1f')} "
                        f"| {_fmt(r.storage_bytes_per_doc, ',')} | {_fmt(r.storage_bytes_new_doc, ',')} "
                        f"| {_fmt(r.encode_s_per_doc, '.2f')} | {_fmt(r.latency_p50_s, '.2f')} |")
        f = self.facts
        rows.append("")
        rows.append(f"{f['questions']} questions, {f['documents']} documents encoded (union of BM25 top-{f['k']}), "
                    f"model {f['model']} ({f.get('compute_dtype', '?')} compute on {f['device']}, "
                    f"{f['torch_threads']} threads), wall {f['wall_s']:.0f} s; augmentation {f['augment_s']:.0f} s "
                    f"({f['augment']['cache_hits']} cache hits, {f['augment']['qa_failures']} QA failures).")
        if f.get("lag"):
            g = f["lag"]
            rows.append(f"LAG: {g['adapters']} adapters, factor library {g['library_bytes']:,} bytes, Arrow k={g['k']}, "
                        f"routing overhead {g['routing_us_per_token']:.0f} µs per token (forward with router − bare).")
        return "\n".join(rows)


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


# ---- the runner ---------------------------------------------------------------------------------
def load_slice(data: str | os.PathLike, n: int | None = None) -> tuple[list[Document], list[Question]]:
    """The corpus and the first n questions of a data folder holding corpus.jsonl and questions.jsonl."""
    folder = Path(data)
    for name in ("corpus.jsonl", "questions.jsonl"):
        if not (folder / name).is_file():
            raise InvalidInputError(f"{folder} has no {name}; --data needs a folder with corpus.jsonl and "
                                    "questions.jsonl (one JSON object per line).")
    questions = load_questions(folder / "questions.jsonl")
    if not questions:
        raise InvalidInputError(f"{folder / 'questions.jsonl'} holds no questions.")
    return load_corpus(folder / "corpus.jsonl"), questions[:n] if n else questions


def _lag_api():
    try:
        from .lag import LAGLibrary, LAGRouter
    except ImportError as e:
        raise PolyPRAGError(f"The lag methods need polyprag.lag (LAGLibrary, LAGRouter), which is not "
                            f"available in this install ({e}); drop lag/lag_in_context from --methods.") from None
    return LAGLibrary, LAGRouter


def _dir_bytes(path: Path, names: Sequence[str]) -> int:
    return sum((path / n).stat().st_size for n in names if (path / n).is_file())


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


class CorpusRetriever(BM25Retriever):
    """BM25 over the whole corpus, exposing only the encoded documents (as PRAG: retrieve from the
    corpus, encode what was retrieved); valid for the questions whose top-k built that subset."""

    def __init__(self, corpus: BM25Retriever, encoded: Sequence[Document]):
        super().__init__(encoded, k=corpus.k, backend=corpus.backend)
        self.corpus = corpus

    def retrieve(self, query: str, k: int | None = None):
        return self.corpus.retrieve(query, k)


class _Encoded:
    """A library trained for the run with its cost: seconds of training and saved bytes."""

    def __init__(self, library, train_s: float, bytes_per_doc: int | None, bytes_new_doc: int | None):
        self.library, self.train_s = library, train_s
        self.bytes_per_doc, self.bytes_new_doc = bytes_per_doc, bytes_new_doc


def run_evaluation(config: EvalConfig, llm: "LoRAMixingLLM | None" = None,
                   on_method: Callable[[MethodResult], None] | None = None) -> EvalReport:
    """Encode the slice's retrieved documents, answer its questions with each method, score and time them."""
    t_start = time.perf_counter()
    cfg = config
    needs = {METHODS[m][0] for m in cfg.methods} - {None}  # libraries to encode
    if "lag" in needs:
        _lag_api()  # fail now, not after an hour of encoding
    torch.manual_seed(cfg.seed)
    docs, questions = load_slice(cfg.data, cfg.n)
    if llm is None:
        from .llm import LoRAMixingLLM

        llm = LoRAMixingLLM.from_pretrained(cfg.model, device=cfg.device, compute_dtype=cfg.compute_dtype)
    bm25 = BM25Retriever(docs, k=cfg.k)

    # PRAG's protocol: encode only the union of the evaluated questions' top-k passages
    retrieved = [[s.document.id for s in bm25.retrieve(q.question)] for q in questions]
    wanted = {i for ids in retrieved for i in ids}
    encoded_docs = [d for d in docs if d.id in wanted]
    index = CorpusRetriever(bm25, encoded_docs)
    recall = _mean([recall_at_k(ids, q.gold) for ids, q in zip(retrieved, questions)])
    by_id = {d.id: d for d in encoded_docs}
    prompt_chars = [len(q.question) + sum(len(by_id[i].full_text) for i in ids) for q, ids in zip(questions, retrieved)]

    out = Path(cfg.out) if cfg.out else None
    augmenter = None
    augment_s = 0.0
    fixed = None
    if needs:
        t0 = time.perf_counter()
        if cfg.augment == "generated_qa":
            augmenter = GeneratedQAAugmenter(llm, cache=cfg.cache, batch_size=cfg.augment_batch_size,
                                             seed=cfg.seed, progress=cfg.progress)
        else:
            augmenter = PassageAugmenter()
        examples = augmenter(encoded_docs)
        fixed = FixedAugmenter({d.id: ex for d, ex in zip(encoded_docs, examples)})
        augment_s = time.perf_counter() - t0
    n_docs = max(len(encoded_docs), 1)

    libraries: dict[str, _Encoded] = {}
    if needs & {"prag", "lag"}:
        libraries["prag"] = _encode(llm, encoded_docs, "prag", cfg, fixed, out)
    if "poly" in needs:
        libraries["poly"] = _encode(llm, encoded_docs, "poly", cfg, fixed, out)
    lag_router, lag_facts = None, None
    if "lag" in needs:
        LAGLibrary, LAGRouter = _lag_api()
        t0 = time.perf_counter()
        lag_library = LAGLibrary.from_adapter_library(libraries["prag"].library)
        lag_router = LAGRouter(lag_library, k=cfg.lag_k)
        prag = libraries["prag"]
        libraries["lag"] = _Encoded(lag_library, prag.train_s + time.perf_counter() - t0,
                                    prag.bytes_per_doc, prag.bytes_new_doc)
        lag_facts = {"library_bytes": lag_library.storage_bytes()["factors"], "adapters": len(lag_library),
                     "k": cfg.lag_k, "routing_us_per_token": routing_overhead(
                         llm, lag_router, llm.question_prompt(questions[0].question))}

    results = []
    for method in cfg.methods:
        kind, mode, combine = METHODS[method]
        enc = libraries.get(kind) if kind else None
        if kind in ("prag", "poly"):
            retriever = ParametricRetriever(index, enc.library, combine=combine)
        else:
            retriever = index
        rag = PolyPRAG(llm, retriever, mode=mode, max_new_tokens=cfg.max_new_tokens, lag=lag_router)
        res = _answer_all(rag, questions, retrieved, method, cfg, prompt_chars)
        res.recall_at_k = None if mode in ("closed_book", "lag") else _pct(recall)
        if enc is not None:
            res.encode_s_per_doc = (augment_s + enc.train_s) / n_docs
            res.storage_bytes_per_doc, res.storage_bytes_new_doc = enc.bytes_per_doc, enc.bytes_new_doc
        results.append(res)
        if on_method:
            on_method(res)

    stats = asdict(augmenter.stats) if isinstance(augmenter, GeneratedQAAugmenter) else {
        "cache_hits": 0, "generated": 0, "retries": 0, "qa_failures": 0, "rewrite_failures": 0}
    facts = {"questions": len(questions), "documents": len(encoded_docs), "corpus": len(docs), "k": cfg.k,
             "model": llm.name, "augment": stats, "augment_s": augment_s,
             "augment_s_per_doc": augment_s / n_docs,
             "train_s": {k: v.train_s for k, v in libraries.items()},
             "bm25_recall_at_k": _pct(recall), "wall_s": time.perf_counter() - t_start,
             "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
             "device": str(llm.device), "compute_dtype": str(llm.compute_dtype or llm.dtype).replace("torch.", "")}
    if lag_facts:
        facts["lag"] = lag_facts
    report = EvalReport(config=asdict(cfg), results=results, facts=facts)
    if out is not None:
        write_report(report, out)
    return report


def _encode(llm, docs: list[Document], kind: str, cfg: EvalConfig, augmenter: FixedAugmenter,
            out: Path | None) -> _Encoded:
    """Train one library on the shared augmentation, save it, and measure its time and saved bytes."""
    from .encoder import PolyPRAGEncoder, PRAGEncoder

    if kind == "prag":
        encoder = PRAGEncoder(llm, rank=cfg.rank, alpha=cfg.alpha, lr=cfg.prag_lr, epochs=cfg.prag_epochs,
                              augmenter=augmenter, seed=cfg.seed, max_length=cfg.max_length,
                              max_batch_tokens=cfg.max_batch_tokens, progress=cfg.progress)
    else:
        encoder = PolyPRAGEncoder(llm, num_adapters=cfg.num_adapters, rank=cfg.rank, alpha=cfg.alpha,
                                  lr=cfg.lr, routing_lr=cfg.routing_lr, epochs=cfg.epochs,
                                  batch_size=cfg.batch_size, augmenter=augmenter, seed=cfg.seed,
                                  max_length=cfg.max_length, max_batch_tokens=cfg.max_batch_tokens,
                                  progress=cfg.progress)
    t0 = time.perf_counter()
    library = encoder.fit(docs)
    train_s = time.perf_counter() - t0
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = library.save((out / "libraries" / kind) if out else Path(tmp) / kind)
        bank = _dir_bytes(path, ["bank.safetensors"])
        routing = _dir_bytes(path, ["routing.safetensors"])
    n = max(len(docs), 1)
    per_doc = round((bank + routing) / n)
    new_doc = round(routing / n) if kind == "poly" else per_doc
    return _Encoded(library, train_s, per_doc, new_doc)


def routing_overhead(llm, mixture, prompt: str, repeats: int = 3) -> float:
    """Microseconds per token that a mixture adds to a forward pass over ``prompt`` (best of ``repeats``)."""
    enc = llm.encode([prompt])
    tokens = enc["input_ids"].numel()

    def best(mix) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            llm.logits(**enc, mixture=mix)
            if llm.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    best(None)  # warm-up
    return 1e6 * max(0.0, best(mixture) - best(None)) / tokens


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _answer_all(rag: PolyPRAG, questions: Sequence[Question], retrieved: Sequence[Sequence[str]],
                method: str, cfg: EvalConfig, prompt_chars: Sequence[int]) -> MethodResult:
    """Answer every question in batches, score the answers, then time a few questions one by one.

    Batches hold questions of similar prompt length (question + retrieved passages), so little
    prefill is spent on padding; answers are kept in question order."""
    answers: dict[int, str] = {}
    order = sorted(range(len(questions)), key=lambda i: prompt_chars[i])
    t0 = time.perf_counter()
    with _bar(len(questions), method, cfg.progress) as bar:
        for s in range(0, len(order), cfg.answer_batch_size):
            chunk = order[s: s + cfg.answer_batch_size]
            for i, a in zip(chunk, rag.answer_batch([questions[i].question for i in chunk])):
                answers[i] = a.text
            bar.update(len(chunk))
    preds = [answers[i] for i in range(len(questions))]
    batched = (time.perf_counter() - t0) / max(len(questions), 1)
    latencies = []
    for q in questions[: cfg.latency_samples]:
        t1 = time.perf_counter()
        rag.answer(q.question)
        latencies.append(time.perf_counter() - t1)
    em = [exact_match(p, q.answers) for p, q in zip(preds, questions)]
    f1 = [f1_score(p, q.answers) for p, q in zip(preds, questions)]
    acc = [accuracy(p, q.answers) for p, q in zip(preds, questions)]
    records = [{"id": q.id, "question": q.question, "answers": list(q.answers), "prediction": p,
                "retrieved": list(r), "em": e, "f1": f, "accuracy": a}
               for q, p, r, e, f, a in zip(questions, preds, retrieved, em, f1, acc)]
    return MethodResult(method=method, em=_pct(_mean(em)) or 0.0, f1=_pct(_mean(f1)) or 0.0,
                        accuracy=_pct(_mean(acc)) or 0.0, recall_at_k=None,
                        latency_p50_s=statistics.median(latencies) if latencies else None,
                        batched_s_per_question=batched, predictions=records)


def write_report(report: EvalReport, out: str | os.PathLike) -> Path:
    """Write results.json, results.md and predictions.jsonl (every answer with its scores) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    (out / "results.md").write_text(report.markdown() + "\n", encoding="utf-8")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as fh:
        for r in report.results:
            for p in r.predictions:
                fh.write(json.dumps({"method": r.method, **p}, ensure_ascii=False) + "\n")
    return out
