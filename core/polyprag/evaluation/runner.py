"""The evaluation runner: encode, answer every question with every method and control, score, compare.

Protocol (PRAG, Su et al. 2025): the documents encoded are the union of the evaluated questions'
top-k BM25 passages — and, when an oracle method runs, their gold passages too; PRAG and Poly-PRAG
train on one shared augmentation; every method answers the same questions with the same prompt.
"""
from __future__ import annotations

import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..encoding.augment import FixedAugmenter, GeneratedQAAugmenter, PassageAugmenter
from ..encoding.distill import DistillAugmenter
from ..documents import Document, Question, load_corpus, load_questions
from ..errors import CorpusFormatError, InvalidInputError, PolyPRAGError
from ..library.adapters import AdapterLibrary
from ..retrieval.parametric import ParametricRetriever, Retrieval
from ..pipeline.modes import MODES
from ..pipeline.pipeline import PolyPRAG
from ..pipeline.recite import Reciter
from ..progress import progress_bar
from ..encoding.recipes import FREE_TEXTS, check_texts, get_recipe, setting
from ..retrieval.dense import build_retriever
from ..retrieval.base import ScoredDocument
from .config import METHODS, RECIPE_SETTINGS, EvalConfig, Method
from .metrics import accuracy, exact_match, f1_score, mean, paired_bootstrap, recall_at_k
from .questions import evidence, prior_answers, question_kind, states_answer
from .report import Comparison, EvalReport, MethodResult, check_report_target, write_report

if TYPE_CHECKING:
    from ..generation.llm import LoRAMixingLLM

CONTROL_SUFFIXES = ("_shuffled", "_uniform", "_m1", "_wrong", "_nodocs")


def load_slice(data: str | os.PathLike, n: int | None = None, start: int = 0) -> tuple[list[Document], list[Question]]:
    """The corpus and questions ``start .. start+n`` of a folder holding corpus.jsonl and questions.jsonl."""
    folder = Path(data)
    for name in ("corpus.jsonl", "questions.jsonl"):
        if not (folder / name).is_file():
            raise InvalidInputError(f"{folder} has no {name}; --data needs a folder with corpus.jsonl and "
                                    "questions.jsonl (one JSON object per line).")
    questions = load_questions(folder / "questions.jsonl")[start:]
    if not questions:
        raise InvalidInputError(f"{folder / 'questions.jsonl'} holds no questions (after skipping {start}).")
    questions = questions[:n] if n else questions
    docs = load_corpus(folder / "corpus.jsonl")
    ids = {d.id for d in docs}
    missing = [(q.id, g) for q in questions for g in q.gold if g not in ids]
    if missing:
        raise CorpusFormatError(f"{folder / 'questions.jsonl'}: question {missing[0][0]!r} names gold passage "
                                f"{missing[0][1]!r}, which corpus.jsonl does not hold ({len(missing)} such gold "
                                "id(s)); fix the ids or add the passages to the corpus.")
    return docs, questions


def settings(cfg: EvalConfig) -> dict:
    """The training settings of the run, by their flat names (``RECIPE_SETTINGS``): the recipe's, with every
    option the config sets on top."""
    recipe = get_recipe(cfg.recipe)
    r = {name: setting(recipe, path) for name, path in RECIPE_SETTINGS.items()}
    for name in ("num_adapters", "rank", "alpha", "epochs", "lr", "routing_lr", "routing_active", "prag_epochs",
                 "prag_lr", "layers", "stop_loss"):
        if getattr(cfg, name) is not None:
            r[name] = getattr(cfg, name)
    if cfg.layers is not None:  # --layers: both methods
        r["prag_layers"] = cfg.layers
    r["texts"] = check_texts(cfg.texts) if cfg.texts is not None else tuple(r["texts"])
    return r


class FixedRetriever:
    """A retriever that returns, for each evaluated question, the documents chosen for it beforehand
    (BM25's top-k, the gold passages, or wrong documents): one interface for every control."""

    def __init__(self, documents: Sequence[Document], chosen: dict[str, list[str]]):
        self.documents = list(documents)
        self.k = max((len(v) for v in chosen.values()), default=1)
        self._by_id = {d.id: d for d in self.documents}
        self._chosen = chosen

    def retrieve(self, query: str, k: int | None = None) -> list[ScoredDocument]:
        ids = self._chosen.get(query, [])
        return [ScoredDocument(self._by_id[i], 1.0 / (r + 1)) for r, i in enumerate(ids)]


class WrongMixtureRetriever(ParametricRetriever):
    """The ``_combine_wrong`` control: the retrieved passages, each paired with a wrong document's adapter, so the
    prompt is the method's own and only the mixture holds the wrong knowledge."""

    def __init__(self, passages: FixedRetriever, wrong: FixedRetriever, library: AdapterLibrary,
                 rule: str | None = None):
        super().__init__(wrong, library, rule)
        self.passages = passages

    def retrieve_checked(self, query: str, k: int | None = None) -> Retrieval:
        """The retrieved passages with the wrong documents' mixture (PolyPRAG asks here, past ``retrieve``)."""
        shown = self.passages.retrieve(query, k)
        found = super().retrieve_checked(query, k)
        n = min(len(shown), len(found.documents))  # as many wrong documents as passages (choose_documents)
        ids = found.library_ids[:n]
        return Retrieval(shown[:n], found.state.mixture(ids, self.rule) if n else None,
                         found.state.routing_weights(ids) if n else None, library_ids=ids, state=found.state)


def routing_control(library: AdapterLibrary, kind: str, seed: int = 0) -> AdapterLibrary:
    """The library with its routing replaced: ``uniform`` (every document mixes the bank equally) or
    ``shuffled`` (each document gets another document's routing row: a seeded derangement)."""
    logits = library.routing_logits
    if logits is None:
        raise InvalidInputError("Routing controls need a Poly-PRAG library (PRAG's routing is one-hot).")
    if kind == "uniform":
        new = torch.zeros_like(logits)  # σ(0) for every adapter: weights 1/m
    elif kind == "shuffled":
        n = logits.shape[0]
        perm = list(range(n))
        rng = random.Random(seed)
        while n > 1 and any(i == p for i, p in enumerate(perm)):
            rng.shuffle(perm)
        new = logits[perm]
    else:
        raise InvalidInputError(f"Unknown routing control {kind!r}; use 'uniform' or 'shuffled'.")
    return AdapterLibrary(library.llm, library.bank, library.documents, library.config, routing_logits=new)


def choose_documents(questions: Sequence[Question], retrieved: Sequence[list[str]], encoded: Sequence[str],
                     gold_only: bool, seed: int) -> dict[str, list[list[str]]]:
    """Per question, the document ids of each source: retrieved, gold (those in the corpus) and wrong
    (random encoded documents neither retrieved nor gold, as many as the method would otherwise use)."""
    enc = set(encoded)
    gold = [[g for g in evidence(q) if g in enc] for q in questions]
    rng = random.Random(seed)
    pool = sorted(enc)
    wrong = []
    for q, ids, g in zip(questions, retrieved, gold):
        n = max(1, len(g)) if gold_only else len(ids)
        banned = set(ids) | set(g) | set(q.metadata.get("answer_pages") or ())  # nothing that names the answer
        wrong.append(rng.sample([d for d in pool if d not in banned], min(n, len(pool) - len(banned))))
    return {"retrieved": [list(r) for r in retrieved], "gold": gold, "wrong": wrong,
            "top1": [list(r[:1]) for r in retrieved]}


def library_documents(docs: Sequence[Document], questions: Sequence[Question], retrieved: Sequence[list[str]],
                      use_retrieved: bool, use_gold: bool, library: str, seed: int) -> list[Document]:
    """The documents a run encodes, in corpus order: the questions' retrieved passages (and their evidence when
    an oracle method runs); with ``library="corpus"`` every document, with a number N that many others too."""
    corpus_ids = {d.id for d in docs}
    wanted: set[str] = set()
    if use_retrieved or not use_gold:
        wanted |= {i for ids in retrieved for i in ids}
    if use_gold:
        wanted |= {g for q in questions for g in evidence(q) if g in corpus_ids}
    if library == "corpus":
        wanted = corpus_ids
    elif library.isdigit():
        others = sorted(corpus_ids - wanted)
        wanted |= set(random.Random(seed).sample(others, min(int(library), len(others))))
    return [d for d in docs if d.id in wanted]


def run_evaluation(config: EvalConfig, llm: "LoRAMixingLLM | None" = None,
                   on_method: Callable[[MethodResult], None] | None = None) -> EvalReport:
    """Encode the slice's documents, answer its questions with each method and control, score and compare."""
    with tempfile.TemporaryDirectory(prefix="polyprag-eval-") as scratch:  # libraries saved without --out
        return _run(config, llm, on_method, Path(scratch))


def _run(config: EvalConfig, llm: "LoRAMixingLLM | None", on_method, scratch: Path) -> EvalReport:
    """The run's stages in order: load, retrieve, choose the documents, augment, encode, answer, report."""
    t_start = time.perf_counter()
    cfg = config
    given_llm = llm is not None
    specs = {m: METHODS[m] for m in cfg.methods}
    needs = {s.library for s in specs.values()} - {None}
    if "lag" in needs:
        _lag_api()  # fail now, not after an hour of encoding
    if cfg.out:
        check_report_target(cfg.out)  # a folder of the user's files is refused now, not after the run
    train = settings(cfg)
    torch.manual_seed(cfg.seed)
    docs, questions, llm = _load(cfg, llm)
    retrieved, recall = _retrieve(cfg, docs, questions)
    chosen = _choose(cfg, specs, needs, docs, questions, retrieved, recall)
    augmenter, fixed, augment_s = _augment(llm, cfg, train, needs, chosen.encoded)
    libraries = _libraries(llm, cfg, train, needs, chosen, fixed, given_llm, scratch)
    lag, lag_facts = _lag(llm, libraries, cfg, chosen) if "lag" in needs else (None, None)
    results = []
    priors = prior_answers(questions)
    reciter = Reciter(llm, cfg.recite_tokens)  # one memo for every method: a state's documents recited once
    for method, spec in specs.items():
        enc = libraries.get(spec.library) if spec.library else None
        res = _answer_method(llm, cfg, method, spec, chosen, enc, lag, priors, reciter)
        _add_costs(res, spec, chosen, enc, augment_s)
        results.append(res)
        if on_method:
            on_method(res)
    reading = best_reading(results)
    if reading is not None:
        results.append(reading)
    facts = _facts(cfg, llm, chosen, train, augmenter, augment_s, libraries, lag_facts, t_start)
    report = EvalReport(config=asdict(cfg), results=results, facts=facts,
                        comparisons=compare(results, cfg.bootstrap, cfg.seed))
    if cfg.out:
        write_report(report, Path(cfg.out))
    return report


@dataclass
class _Chosen:
    """What the run's questions read: the corpus, the questions, the recall of their retrieval, the documents the
    libraries encode, and per source (retrieved, gold, wrong, top1) each question's document ids; the oracle rows
    are the questions whose evidence states their answer."""

    docs: list[Document]
    questions: list[Question]
    recall: float | None
    encoded: list[Document]
    sources: dict[str, list[list[str]]]
    oracle_rows: list[int]
    use_retrieved: bool  # the libraries hold the retrieved documents (PRAG's protocol)
    use_gold: bool       # ... and the gold ones (an oracle method runs)


def _load(cfg: EvalConfig, llm: "LoRAMixingLLM | None") -> tuple[list[Document], list[Question], "LoRAMixingLLM"]:
    """The slice's corpus and questions (an answer's own article never gold) and the model, loaded unless given."""
    docs, questions = load_slice(cfg.data, cfg.n, cfg.start)
    questions = [replace(q, gold=evidence(q)) for q in questions]  # an answer's own article is never gold
    if llm is None:
        from ..generation.llm import LoRAMixingLLM

        llm = LoRAMixingLLM.from_pretrained(cfg.model, device=cfg.device, compute_dtype=cfg.compute_dtype)
    return docs, questions, llm


def _retrieve(cfg: EvalConfig, docs: list[Document],
              questions: list[Question]) -> tuple[list[list[str]], float | None]:
    """Each question's top-k document ids from the run's retriever over the whole corpus, and their recall."""
    index = build_retriever(cfg.retriever, docs, k=min(cfg.k, len(docs)))  # over the whole corpus
    retrieved = [[s.document.id for s in index.retrieve(q.question)] for q in questions]
    return retrieved, mean([recall_at_k(ids, q.gold) for ids, q in zip(retrieved, questions)])


def _choose(cfg: EvalConfig, specs: dict[str, Method], needs: set[str], docs: list[Document],
            questions: list[Question], retrieved: list[list[str]], recall: float | None) -> _Chosen:
    """What the libraries encode (PRAG's protocol: the retrieved passages; with oracle methods, the gold passages
    too) and each source's documents per question."""
    lib_specs = [s for s in specs.values() if s.library is not None]
    use_retrieved = any(s.documents in ("retrieved", "wrong", "top1") for s in lib_specs) or "lag" in needs
    # LAG has no retriever at question time: its library holds the questions' gold passages beside the distractors
    use_gold = any(s.documents == "gold" for s in specs.values()) or "lag" in needs
    encoded = library_documents(docs, questions, retrieved, use_retrieved, use_gold, cfg.library, cfg.seed)
    sources = choose_documents(questions, retrieved, [d.id for d in encoded], not use_retrieved, cfg.seed)
    oracle_rows = [i for i, q in enumerate(questions) if states_answer(q)]  # evidence that states the answer
    return _Chosen(docs, questions, recall, encoded, sources, oracle_rows, use_retrieved, use_gold)


def _augment(llm, cfg: EvalConfig, train: dict, needs: set[str],
             encoded: list[Document]) -> tuple[PassageAugmenter | GeneratedQAAugmenter | None,
                                               FixedAugmenter | None, float]:
    """The one augmentation every library trains on (none when no method needs a library): the augmenter, its
    examples fixed per document, and the seconds it took."""
    if not needs:
        return None, None, 0.0
    t0 = time.perf_counter()
    texts = train["texts"]
    if "distill" in texts:
        augmenter = DistillAugmenter(llm, texts, cache=cfg.cache, batch_size=cfg.augment_batch_size,
                                     progress=cfg.progress)
    elif set(texts) <= FREE_TEXTS:
        augmenter = PassageAugmenter(texts)
    else:
        augmenter = GeneratedQAAugmenter(llm, cache=cfg.cache, batch_size=cfg.augment_batch_size,
                                         seed=cfg.seed, progress=cfg.progress, texts=texts)
    examples = augmenter(encoded)
    fixed = FixedAugmenter({d.id: ex for d, ex in zip(encoded, examples)})
    return augmenter, fixed, time.perf_counter() - t0


def _libraries(llm, cfg: EvalConfig, train: dict, needs: set[str], chosen: _Chosen, fixed: FixedAugmenter | None,
               given_llm: bool, scratch: Path) -> dict[str, "_Encoded"]:
    """The libraries the methods need by kind: reused from ``--libraries`` where one fits, else trained (side
    by side in worker processes where that is faster) and kept there for later runs."""
    out = Path(cfg.out) if cfg.out else None
    encoded, docs = chosen.encoded, chosen.docs
    kinds = [k for k in ("prag", "poly", "poly_m1") if k in needs or (k == "prag" and "lag" in needs)]
    libraries = {k: lib for k in kinds if (lib := _reuse(llm, cfg, train, k, encoded, docs)) is not None}
    todo = [k for k in kinds if k not in libraries]
    processes = encode_processes(cfg, len(todo), llm_given=given_llm, device=llm.device)
    if processes > 1:
        libraries |= _encode_side_by_side(llm, encoded, todo, cfg, train, fixed, out, processes, scratch)
    else:
        libraries |= {kind: _encode(llm, encoded, kind, cfg, train, fixed, _save_path(out, scratch, kind))
                      for kind in todo}
    for kind in todo:
        _keep(cfg, train, kind, libraries[kind], _save_path(out, scratch, kind), docs)
    return libraries


def _answer_method(llm, cfg: EvalConfig, method: str, spec: Method, chosen: _Chosen, enc: "_Encoded | None",
                   lag: "_LAG | None", priors: Sequence[str], reciter: Reciter) -> MethodResult:
    """One method's scored answers to its questions (an oracle's: those whose evidence answers them), through
    its retriever and controls (recitals read from ``reciter``, shared by the run's methods)."""
    questions, sources = chosen.questions, chosen.sources
    rows = chosen.oracle_rows if spec.documents == "gold" else range(len(questions))
    asked = [questions[i] for i in rows]
    ids = [sources[spec.documents][i] for i in rows]
    if spec.mode == "prior":
        return _scored(method, asked, [priors[i] for i in rows], [[] for _ in asked])
    router = None
    if spec.library == "lag":
        retriever, router = lag.pipeline_parts(spec, FixedRetriever(chosen.docs, {q.question: d for q, d in
                                                                                  zip(asked, ids)}))
    else:
        retriever = _retriever(spec, enc, asked, ids, [sources["wrong"][i] for i in rows], chosen.encoded,
                               chosen.docs, cfg)
    rag = PolyPRAG(llm, retriever, mode=spec.mode, max_new_tokens=cfg.max_new_tokens, lag=router,
                   ensemble_weights=cfg.ensemble_weights, reciter=reciter)
    by_id = {d.id: d for d in chosen.docs}
    shown = MODES[spec.mode].passages
    prompt_chars = [len(q.question) + (sum(len(by_id[i].full_text) for i in d) if shown else 0)
                    for q, d in zip(asked, ids)]
    picked = spec.library == "lag" and spec.mode in ("lag", "lag_in_context")
    return _answer_all(rag, asked, None if spec.library == "lag" and not picked else ids, method, cfg, prompt_chars)


def _add_costs(res: MethodResult, spec: Method, chosen: _Chosen, enc: "_Encoded | None", augment_s: float) -> None:
    """Add to a method's result its retrieval's recall and its library's encoding seconds and bytes per document."""
    recall = chosen.recall
    if spec.library == "lag" and spec.mode not in ("lag", "lag_in_context"):  # LAG's own pick of documents
        res.recall_at_k = 100.0 * mean([recall_at_k(r["documents"], chosen.questions[i].gold)
                                        for i, r in enumerate(res.predictions)])
    elif spec.mode not in ("closed_book", "lag", "prior"):
        res.recall_at_k = 100.0 * recall if spec.documents == "retrieved" and recall is not None else None
    if enc is not None:
        n_docs = max(len(chosen.encoded), 1)
        res.encode_s_per_doc = None if enc.train_s is None else (augment_s + enc.train_s) / n_docs
        res.storage_bytes_per_doc, res.storage_bytes_new_doc = enc.bytes_per_doc, enc.bytes_new_doc


def _facts(cfg: EvalConfig, llm, chosen: _Chosen, train: dict, augmenter, augment_s: float, libraries: dict,
           lag_facts: dict | None, t_start: float) -> dict:
    """What the report says about the run: its slice, what was encoded from what, the model and training, the
    augmentation's and the libraries' costs, and the machine."""
    stats = asdict(augmenter.stats) if isinstance(augmenter, (GeneratedQAAugmenter, DistillAugmenter)) else {
        "cache_hits": 0, "generated": 0, "retries": 0, "qa_failures": 0, "rewrite_failures": 0}
    use_retrieved, use_gold, recall = chosen.use_retrieved, chosen.use_gold, chosen.recall
    encoded_from = " ∪ ".join(([f"{cfg.retriever} top-{cfg.k}"] if use_retrieved or not use_gold else []) +
                              (["gold passages"] if use_gold else []) +
                              ([f"{cfg.library} other documents"] if cfg.library.isdigit() else []))
    if cfg.library == "corpus":
        encoded_from = "the whole corpus"
    n_docs = max(len(chosen.encoded), 1)
    facts = {"questions": len(chosen.questions), "oracle_questions": len(chosen.oracle_rows),
             "documents": len(chosen.encoded), "library": cfg.library, "corpus": len(chosen.docs), "k": cfg.k,
             "encoded_from": encoded_from, "model": llm.name, "recipe": cfg.recipe, "training": train,
             "augment": stats, "augment_s": augment_s, "augment_s_per_doc": augment_s / n_docs,
             "train_s": {k: v.train_s for k, v in libraries.items()},
             "adapters": {k: v.library.config.m for k, v in libraries.items() if k != "lag"},  # PRAG: one per document
             "retriever": cfg.retriever, "recall_at_k": None if recall is None else 100.0 * recall,
             "wall_s": time.perf_counter() - t_start,
             "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
             "device": str(llm.device), "compute_dtype": str(llm.compute_dtype or llm.dtype).replace("torch.", "")}
    if lag_facts:
        facts["lag"] = lag_facts
    return facts


def _retriever(spec: Method, enc: "_Encoded | None", asked: Sequence[Question], chosen: Sequence[list[str]],
               wrong: Sequence[list[str]], encoded: Sequence[Document], docs: Sequence[Document], cfg: EvalConfig):
    """The retriever a method answers through: its chosen documents per question, mixed from its library (with
    its routing control, or with wrong documents' adapters beside the right passages)."""
    per_question = {q.question: ids for q, ids in zip(asked, chosen)}
    if spec.mode in ("closed_book", "lag"):
        return None
    if spec.library not in ("prag", "poly", "poly_m1"):
        return FixedRetriever(docs, per_question)
    library = enc.library
    if spec.routing != "learned":
        library = routing_control(library, spec.routing, cfg.seed)
    if spec.mixture_from == "wrong":
        wrong_ids = {q.question: ids for q, ids in zip(asked, wrong)}
        return WrongMixtureRetriever(FixedRetriever(docs, per_question), FixedRetriever(encoded, wrong_ids), library,
                                     rule=spec.rule)
    return ParametricRetriever(FixedRetriever(encoded, per_question), library, rule=spec.rule)


READINGS = ("in_context", "in_context_top1", "in_context_ensemble")  # the ways to read the retrieved passages
BASELINES = ("closed_book", "in_context", "best_reading")  # every method is compared with each of these


def best_reading(results: Sequence[MethodResult]) -> MethodResult | None:
    """The strongest reading baseline on the run's retrieval: the most accurate of in_context, in_context_top1
    and in_context_ensemble, as a result named ``best_reading`` (``reading`` says which; None if none ran)."""
    reads = [r for r in results if r.method in READINGS]
    if not reads:
        return None
    best = max(reads, key=lambda r: (r.accuracy, r.f1))
    return replace(best, method="best_reading", reading=best.method)


def compare(results: Sequence[MethodResult], samples: int = 10_000, seed: int = 0) -> list[Comparison]:
    """Paired bootstrap comparisons: every method against closed_book, in_context and best_reading, and every
    method against its controls (``X`` − ``X_shuffled`` / ``_uniform`` / ``_m1`` / ``_wrong``, oracle included)."""
    by = {r.method: r for r in results}
    pairs = [(m, b) for b in BASELINES if b in by for m in by if m != b and by[b].reading != m]
    for m in by:
        for suffix in CONTROL_SUFFIXES:
            for control in (m + suffix, m.replace("_oracle", "") + suffix if suffix == "_wrong" else None):
                if control in by and control != m and (m, control) not in pairs:
                    pairs.append((m, control))
    out = []
    for a, b in pairs:
        shared = [i for i in by[a].question_ids() if i in set(by[b].question_ids())]  # oracles: their questions
        if not shared:
            continue
        for metric in ("accuracy", "f1"):
            diff, low, high = paired_bootstrap(by[a].scores(metric, shared), by[b].scores(metric, shared), samples,
                                               seed)
            out.append(Comparison(a, b, metric, 100 * diff, 100 * low, 100 * high, questions=len(shared)))
    return out


class _Encoded:
    """A library trained for the run with its cost: seconds of training and saved bytes."""

    def __init__(self, library, train_s: float, bytes_per_doc: int | None, bytes_new_doc: int | None):
        self.library, self.train_s = library, train_s
        self.bytes_per_doc, self.bytes_new_doc = bytes_per_doc, bytes_new_doc


def encode_processes(cfg: EvalConfig, libraries: int, llm_given: bool = False,
                     device: torch.device | str = "cpu") -> int:
    """How many processes train the run's libraries: ``cfg.workers`` (at most one per library), or with 0
    one per library up to the CPU cores this process may use. One process (this one) on a GPU, for a model
    handed in as an object (a worker can only load it by name) and for a single library.

    Why processes, not threads: a 135M model's GEMMs do not speed up with a second torch thread on this
    2-core machine (a LoRA step on 8×128 tokens: 2.49 s on one thread, 2.56 s on two), while two
    one-thread processes each run at full speed."""
    if libraries < 2 or llm_given or torch.device(device).type != "cpu":
        return 1
    if cfg.workers:
        return min(cfg.workers, libraries)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(libraries, cores))


# libraries whose adapters are each one document's alone (any library holding a run's documents serves it); a
# shared bank's adapters depend on every document it learned
_PER_DOCUMENT = frozenset({"prag"})


def _reuse_key(cfg: EvalConfig, train: dict, kind: str, corpus: Sequence[Document],
               held: Sequence[str]) -> tuple[str, dict]:
    """The folder name a library of ``kind`` trained with these settings on documents of this corpus has in
    ``--libraries``, and the settings. A shared bank (Poly-PRAG) is also named by the documents it ``held``."""
    import hashlib
    import json

    def digest_of(ids) -> str:
        return hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:12]

    ids = digest_of(d.id for d in corpus)
    shared = {} if kind in _PER_DOCUMENT else {"documents": digest_of(held)}
    what = {"kind": kind, "corpus": ids, **shared, "model": cfg.model or "default", "seed": cfg.seed,
            "max_length": cfg.max_length,
            "batch_size": cfg.batch_size, "compute_dtype": cfg.compute_dtype,
            "training": {k: list(v) if isinstance(v, tuple) else v for k, v in train.items()}}
    digest = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{kind}-{digest}", what


def _reuse(llm, cfg: EvalConfig, train: dict, kind: str, docs: Sequence[Document],
           corpus: Sequence[Document]) -> "_Encoded | None":
    """A library from ``cfg.libraries`` trained with this run's settings that holds every document to encode."""
    import json

    if not cfg.libraries:
        return None
    name, _ = _reuse_key(cfg, train, kind, corpus, [d.id for d in docs])
    path = Path(cfg.libraries) / name
    if not (path / "eval-encoding.json").is_file():
        return None
    library = AdapterLibrary.load(path, llm)
    held, wanted = set(library.doc_ids), {d.id for d in docs}
    if not wanted <= held or (kind not in _PER_DOCUMENT and held != wanted):
        # trained on fewer documents: train anew (and keep the larger set next time). A shared bank's adapters
        # depend on every document it holds, so Poly-PRAG reuses only a library of exactly these documents;
        # PRAG's adapters are each their document's alone, so any library that holds them serves
        return None
    cost = json.loads((path / "eval-encoding.json").read_text())
    train_s = cost.get("train_s")  # None: not measured (the library was trained elsewhere)
    return _Encoded(library, None if train_s is None else train_s * len(docs) / max(len(library), 1),
                    cost["bytes_per_doc"], cost["bytes_new_doc"])


def _keep(cfg: EvalConfig, train: dict, kind: str, enc: "_Encoded", saved: Path, corpus: Sequence[Document]) -> None:
    """Copy a freshly trained library into ``cfg.libraries`` with its settings and cost, for later runs."""
    import json
    import shutil

    from ..library.storage import atomic_write_text

    if not cfg.libraries:
        return
    name, what = _reuse_key(cfg, train, kind, corpus, enc.library.doc_ids)
    path = Path(cfg.libraries) / name
    if path.exists():
        from ..library.storage import check_target

        if not (path / "eval-encoding.json").is_file():  # a library this cache kept before is ours to replace
            check_target(path)  # else only a library polyprag wrote is replaced; anything else is refused
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(saved, path)
    atomic_write_text(path / "eval-encoding.json", json.dumps(
        {**what, "documents": len(enc.library), "train_s": enc.train_s, "bytes_per_doc": enc.bytes_per_doc,
         "bytes_new_doc": enc.bytes_new_doc}, indent=2))


def _save_path(out: Path | None, scratch: Path, kind: str) -> Path:
    return (out / "libraries" / kind) if out else scratch / kind


def _encode_side_by_side(llm, docs: list[Document], kinds: Sequence[str], cfg: EvalConfig, train: dict,
                         augmenter: FixedAugmenter, out: Path | None, processes: int,
                         scratch: Path) -> dict[str, "_Encoded"]:
    """Train the libraries in ``processes`` worker processes at once (each loads the model by name, uses
    an equal share of this process's torch threads, trains one library on the shared augmentation and
    saves it); this process then loads what they saved. Each library is the one ``_encode`` would train
    here: its initialisation and sampling come from the run's seed alone."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, torch.get_num_threads() // processes)
    examples = augmenter.examples
    jobs = {}
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, kind in enumerate(kinds):  # one progress bar: the first library's
            worker_cfg = replace(cfg, progress=cfg.progress and i == 0)
            jobs[kind] = pool.submit(_encode_worker, worker_cfg, train, docs, examples, kind,
                                     str(_save_path(out, scratch, kind)), threads)
        done = {kind: job.result() for kind, job in jobs.items()}
    return {kind: _Encoded(AdapterLibrary.load(_save_path(out, scratch, kind), llm), *done[kind])
            for kind in kinds}


def _encode_worker(cfg: EvalConfig, train: dict, docs: list[Document], examples: dict, kind: str, path: str,
                   threads: int) -> tuple[float, int | None, int | None]:
    """In a worker process: load the model, train and save one library; returns its time and bytes."""
    from ..generation.llm import LoRAMixingLLM

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    llm = LoRAMixingLLM.from_pretrained(cfg.model, device=cfg.device, compute_dtype=cfg.compute_dtype)
    enc = _encode(llm, docs, kind, cfg, train, FixedAugmenter(examples), Path(path))
    return enc.train_s, enc.bytes_per_doc, enc.bytes_new_doc


def _encode(llm, docs: list[Document], kind: str, cfg: EvalConfig, train: dict, augmenter: FixedAugmenter,
            path: Path) -> _Encoded:
    """Train one library on the shared augmentation, save it to ``path``, and measure its time and saved bytes."""
    from ..methods.polyprag.encoder import PolyPRAGEncoder
    from ..methods.prag.encoder import PRAGEncoder

    common = dict(rank=train["rank"], alpha=train["alpha"], augmenter=augmenter, seed=cfg.seed,
                  max_length=cfg.max_length, max_batch_tokens=cfg.max_batch_tokens, progress=cfg.progress)
    if kind == "prag":
        encoder = PRAGEncoder(llm, lr=train["prag_lr"], epochs=train["prag_epochs"], stop_loss=train["stop_loss"],
                              layers=train["prag_layers"], lr_decay=train["prag_lr_decay"], **common)
    else:
        encoder = PolyPRAGEncoder(llm, num_adapters=1 if kind == "poly_m1" else train["num_adapters"],
                                  lr=train["lr"], routing_lr=train["routing_lr"], epochs=train["epochs"],
                                  temperature=train["temperature"], batch_size=cfg.batch_size,
                                  routing_active=0 if kind == "poly_m1" else train["routing_active"],
                                  layers=train["layers"], lr_decay=train["lr_decay"], **common)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        if kind == "poly_m1":  # the one-adapter control is past the bank's capacity by design: no warning
            warnings.filterwarnings("ignore", message="A bank of 1 adapters")
        library = encoder.fit(docs)
    train_s = time.perf_counter() - t0
    path = library.save(path)
    bank = _dir_bytes(path, ["bank.safetensors"])
    routing = _dir_bytes(path, ["routing.safetensors"])
    n = max(len(docs), 1)
    per_doc = round((bank + routing) / n)
    new_doc = round(routing / n) if kind != "prag" else per_doc
    return _Encoded(library, train_s, per_doc, new_doc)


def _lag_api():
    try:
        from ..methods.lag import LAGLibrary, LAGRouter
    except ImportError as e:
        raise PolyPRAGError(f"The lag methods need polyprag.methods.lag (LAGLibrary, LAGRouter), which is not "
                            f"available in this install ({e}); drop lag/lag_in_context from --methods.") from None
    return LAGLibrary, LAGRouter


def _lag(llm, libraries: dict, cfg: EvalConfig, chosen: _Chosen) -> tuple["_LAG", dict]:
    """LAG over the PRAG adapters (its methods' routers, retrievers and controls), with its library size and its
    measured costs per token: the paper's router, and the pooled selection's one scoring pass per question."""
    LAGLibrary, _ = _lag_api()
    t0 = time.perf_counter()
    prag = libraries["prag"]
    lag_library = LAGLibrary.from_adapter_library(prag.library)
    libraries["lag"] = _Encoded(lag_library, prag.train_s + time.perf_counter() - t0,
                                prag.bytes_per_doc, prag.bytes_new_doc)
    lag = _LAG(lag_library, chosen, cfg)
    prompts = [llm.question_prompt(q.question) for q in chosen.questions]
    facts = {"library_bytes": lag_library.storage_bytes()["factors"], "adapters": len(lag_library),
             "k": cfg.lag_k, "nodocs_adapters": len(lag.library("nodocs")),
             **routing_overhead(llm, lag.router("arrow_spectr", "learned"), prompts),
             "selection_ms_per_question": lag.selection_ms(chosen.questions)}
    return lag, facts


class _LAG:
    """The run's LAG library, its controls (built once each) and, per method, its router or data-free retriever."""

    def __init__(self, library, chosen: _Chosen, cfg: EvalConfig):
        self.base, self.chosen, self.cfg = library, chosen, cfg
        self._libraries: dict[str, object] = {}
        self._adapters: dict[str, AdapterLibrary] = {}

    def library(self, control: str):
        """The LAG library itself ("learned"), without the questions' documents ("nodocs"), or with its factors
        shuffled between adapters ("shuffled")."""
        if control not in self._libraries:
            if control == "learned":
                self._libraries[control] = self.base
            elif control == "nodocs":
                self._libraries[control] = self.base.without(questions_documents(self.chosen.questions,
                                                                                 self.chosen.encoded))
            elif control == "shuffled":
                self._libraries[control] = self.base.shuffled(self.cfg.seed)
            else:
                raise InvalidInputError(f"Unknown LAG control {control!r}; use learned, nodocs or shuffled.")
        return self._libraries[control]

    def router(self, variant: str, control: str):
        from ..methods.lag import LAGRouter

        return LAGRouter(self.library(control), k=self.cfg.lag_k, variant=variant)

    def pipeline_parts(self, spec: Method, passages: FixedRetriever):
        """(retriever, router) for PolyPRAG: the paper's router (modes lag*) or LAG's pooled pick of documents
        feeding the library's own mode (their adapters from this LAG library, so controls reach the answer)."""
        from ..methods.lag.selection import LAGRetriever

        if spec.mode in ("lag", "lag_in_context"):
            return (passages if spec.mode == "lag_in_context" else None), self.router(spec.lag, spec.routing)
        library = self.library(spec.routing)
        if spec.routing not in self._adapters:
            by_id = {d.id: d for d in self.chosen.encoded}
            self._adapters[spec.routing] = library.as_adapter_library([by_id[n] for n in library.names])
        adapters = self._adapters[spec.routing]
        picker = LAGRetriever(library, adapters.documents, k=spec.lag_top, score=spec.lag, arrow_k=self.cfg.lag_k)
        return ParametricRetriever(picker, adapters, rule=spec.rule), None

    def selection_ms(self, questions: Sequence[Question], repeats: int = 3) -> float:
        """Milliseconds per question of the pooled selection's scoring pass (a forward pass over the prompt)."""
        from ..methods.lag.selection import LAGSelector

        selector = LAGSelector(self.base, k=self.cfg.lag_k)
        asked = [q.question for q in questions[:16]]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for q in asked:
                selector.scores([q])
            times.append(time.perf_counter() - t0)
        return 1e3 * min(times) / max(len(asked), 1)


def questions_documents(questions: Sequence[Question], encoded: Sequence[Document]) -> list[str]:
    """The ids of the questions' documents among ``encoded``: their gold passages and answer pages, and every
    document that states one of their answers (the ``_nodocs`` control removes them all)."""
    import re

    out = {g for q in questions for g in q.gold} | {p for q in questions for p in q.metadata.get("answer_pages") or ()}
    names = {a.lower() for q in questions for a in q.answers if len(a) > 2}
    pattern = re.compile(r"\b(" + "|".join(re.escape(a) for a in sorted(names, key=len, reverse=True)) + r")\b") \
        if names else None
    for d in encoded:
        if pattern is not None and pattern.search(d.full_text.lower()):
            out.add(d.id)
    return sorted(out)


def _dir_bytes(path: Path, names: Sequence[str]) -> int:
    return sum((path / n).stat().st_size for n in names if (path / n).is_file())


def routing_overhead(llm, mixture, prompts: Sequence[str], min_tokens: int = 1000, repeats: int = 3) -> dict:
    """What a mixture (the LAG router) adds to a forward pass, per token: (forward with it − bare forward) / tokens,
    each the best of ``repeats``, over prompts repeated until at least ``min_tokens`` real tokens."""
    rows, tokens = [], 0
    while tokens < min_tokens:
        for p in prompts:
            rows.append(p)
            tokens += len(llm.tokenizer(p, add_special_tokens=False)["input_ids"])
            if tokens >= min_tokens:
                break
    batches = [llm.encode(rows[i: i + 16]) for i in range(0, len(rows), 16)]

    def best(mix) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for enc in batches:
                llm.logits(**enc, mixture=mix)
            if llm.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    best(None)  # warm-up
    bare, routed = best(None), best(mixture)
    return {"routing_us_per_token": 1e6 * (routed - bare) / tokens, "bare_us_per_token": 1e6 * bare / tokens,
            "routing_tokens": tokens}


def _answer_all(rag: PolyPRAG, questions: Sequence[Question], chosen: Sequence[Sequence[str]] | None,
                method: str, cfg: EvalConfig, prompt_chars: Sequence[int]) -> MethodResult:
    """Answer every question (generation groups them by prompt length and sizes batches by memory), score
    the answers, then time a few questions one by one; answers are kept in question order. ``chosen`` None:
    each answer's documents are the ones its retriever picked (LAG's data-free pick)."""
    answers: dict[int, str] = {}
    picked: dict[int, list[str]] = {}
    recitals: dict[int, list[str]] = {}
    cold = _latencies(rag, questions[: cfg.latency_samples])  # before any batch: nothing recited or cached yet
    order = sorted(range(len(questions)), key=lambda i: prompt_chars[i])
    t0 = time.perf_counter()
    with progress_bar(len(questions), method, cfg.progress) as bar:
        for s in range(0, len(order), cfg.answer_batch_size):
            chunk = order[s: s + cfg.answer_batch_size]
            for i, a in zip(chunk, rag.answer_batch([questions[i].question for i in chunk])):
                answers[i], recitals[i] = a.text, a.recitals
                picked[i] = [s.document.id for s in a.documents]
            bar.update(len(chunk))
    preds = [answers[i] for i in range(len(questions))]
    batched = (time.perf_counter() - t0) / max(len(questions), 1)
    warm = _latencies(rag, questions[: cfg.latency_samples])  # the same questions again, after the batch
    if chosen is None:
        chosen = [picked[i] for i in range(len(questions))]
    res = _scored(method, questions, preds, chosen, [recitals[i] for i in range(len(questions))])
    res.latency_p50_s = statistics.median(warm) if warm else None
    res.latency_cold_p50_s = statistics.median(cold) if cold else None
    res.batched_s_per_question = batched
    return res


def _latencies(rag: PolyPRAG, questions: Sequence[Question]) -> list[float]:
    """Seconds to answer each question alone (retrieve, recite where the mode does, mix, generate)."""
    out = []
    for q in questions:
        t0 = time.perf_counter()
        rag.answer(q.question)
        out.append(time.perf_counter() - t0)
    return out


def _scored(method: str, questions: Sequence[Question], preds: Sequence[str], chosen: Sequence[Sequence[str]],
            recitals: Sequence[list[str]] | None = None) -> MethodResult:
    """A method's predictions scored: EM, F1 and accuracy overall and per question kind, with every record."""
    records = [{"id": q.id, "question": q.question, "kind": question_kind(q), "answers": list(q.answers),
                "prediction": p, "documents": list(ids), "em": exact_match(p, q.answers), "f1": f1_score(p, q.answers),
                "accuracy": accuracy(p, q.answers), **({"recitals": recitals[i]} if recitals and recitals[i] else {})}
               for i, (q, p, ids) in enumerate(zip(questions, preds, chosen))]
    pct = lambda key: 100.0 * (mean([r[key] for r in records]) or 0.0)  # noqa: E731
    kinds = sorted({r["kind"] for r in records})
    by_kind = {k: {"questions": sum(r["kind"] == k for r in records),
                   "accuracy": 100.0 * mean([r["accuracy"] for r in records if r["kind"] == k])} for k in kinds}
    return MethodResult(method=method, em=pct("em"), f1=pct("f1"), accuracy=pct("accuracy"), recall_at_k=None,
                        predictions=records, questions=len(records), by_kind=by_kind)
