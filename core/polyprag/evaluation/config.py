"""What an evaluation runs: the methods (each a library, a mode, documents and routing) and EvalConfig.

A method name reads as its parts: ``polyprag_combine_oracle_shuffled`` is Poly-PRAG (mean of routing
weights) with the passages in the prompt, the question's gold documents, and routing rows shuffled
between documents; ``prag_recite`` answers by recitation (each document's adapter writes back its passage,
the model reads the recitals; PolyPRAG mode "recite"). Controls that tell injected knowledge from priors:
- ``_oracle``: the question's gold documents instead of the retrieved ones (gold documents are encoded
  alongside the retrieved ones); ``in_context_oracle`` is the ceiling, the gold passages in the prompt;
- ``_wrong``: the mixture of random encoded documents that are neither retrieved nor gold;
- ``_uniform`` / ``_shuffled`` (Poly-PRAG): every document routed uniformly / another document's routing;
- ``_m1`` (Poly-PRAG): a bank of one LoRA trained on every encoded document.

LAG (``polyprag.methods.lag``, over the PRAG library's adapters, no retriever): ``lag`` is the paper's rule
(Arrow top-k then SpectR, per token and layer: ``arrow_spectr``), ``lag_arrow`` peft's Arrow rule (softmax over
the top-k, per token); the variants that carry knowledge decide once per question, from the paper's per-token
decisions counted over the question's tokens (``votes``; ``_sv``: SpectR's decisions over every adapter, no
Arrow filter, counted; ``_spectr``: SpectR norms pooled instead), and then use
the chosen documents' adapters whole: ``lag_held`` (the top adapter at full strength for the whole answer),
``lag_held_top3`` (the top 3 summed), ``lag_uniform_top3`` (their uniform mean), ``lag_ensemble`` (each of the
top 3 on its own row), ``lag_recite`` / ``lag_recite_ensemble`` (the top 1 / 3 recited, then read). LAG
controls: ``_nodocs`` (the library without the questions' documents: their gold passages, answer pages and
every document stating one of their answers), ``_shuffled`` (each layer's adapter factors dealt to other adapters).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..encoding.recipes import RECIPES, check_texts, setting_help
from ..errors import InvalidInputError
from ..generation.models import pick_compute_dtype
from ..pipeline.modes import MODES


@dataclass(frozen=True)
class Method:
    """One evaluated method: which library, which PolyPRAG mode, which documents and which routing."""

    library: str | None          # None, "prag", "poly", "poly_m1" or "lag"
    mode: str                    # PolyPRAG mode
    rule: str | None = None      # how the documents' adapters combine: "mean" or "sum"
    documents: str = "retrieved"  # "retrieved" (BM25 top-k), "gold" (oracle), "wrong" or "top1" (the first retrieved)
    routing: str = "learned"     # "learned", "uniform" or "shuffled" (LAG: factors shuffled), LAG "nodocs"
    mixture_from: str | None = None  # "wrong": the passages are ``documents`` but the adapters are wrong documents'
    lag: str | None = None       # LAG: the router's rule (mode lag*) or the pooled score that picks adapters
    lag_top: int = 1             # LAG pooled: how many adapters (documents) the question gets


def _methods() -> dict[str, Method]:
    out = {"closed_book": Method(None, "closed_book"),
           "prior": Method(None, "prior"),                                  # the slice's most frequent answer
           "in_context": Method(None, "in_context"),                        # standard RAG
           "in_context_top1": Method(None, "in_context", documents="top1"),  # standard RAG, first passage only
           "in_context_ensemble": Method(None, "in_context_ensemble"),      # a row per passage, rows vote
           "in_context_oracle": Method(None, "in_context", documents="gold"),  # the ceiling
           **_lag_methods()}
    bases = {"prag": ("prag", "sum"), "polyprag": ("poly", "mean"), "polyprag_sum": ("poly", "sum")}
    modes = (("parametric", ""), ("recite", "_recite"), ("combine", "_combine"),
             ("parametric_ensemble", "_ensemble"), ("recite_ensemble", "_recite_ensemble"),
             ("combine_ensemble", "_combine_ensemble"), ("cross_ensemble", "_cross_ensemble"),
             ("dual_ensemble", "_dual_ensemble"))
    for base, (lib, combine) in bases.items():
        for mode, suffix in modes:
            if base == "polyprag_sum" and mode.endswith("_ensemble"):
                continue  # one document per row: mean and sum are the same mixture
            name = base + suffix
            out[name] = Method(lib, mode, combine)
            out[name + "_oracle"] = Method(lib, mode, combine, documents="gold")
            if MODES[mode].passages:  # the retrieved passages, the adapters of wrong documents
                out[name + "_wrong"] = Method(lib, mode, combine, mixture_from="wrong")
            else:
                out[name + "_wrong"] = Method(lib, mode, combine, documents="wrong")
            if lib == "poly":
                for docs, tag in (("retrieved", ""), ("gold", "_oracle")):
                    out[f"{name}{tag}_uniform"] = Method(lib, mode, combine, docs, routing="uniform")
                    out[f"{name}{tag}_shuffled"] = Method(lib, mode, combine, docs, routing="shuffled")
                    out[f"{name}{tag}_m1"] = Method("poly_m1", mode, combine, docs)
    return out


def _lag_methods() -> dict[str, Method]:
    """LAG's methods (see the module docstring) with their ``_nodocs`` and ``_shuffled`` controls."""
    base = {"lag": Method("lag", "lag", lag="arrow_spectr"),
            "lag_in_context": Method("lag", "lag_in_context", lag="arrow_spectr"),
            "lag_arrow": Method("lag", "lag", lag="arrow")}
    for score, tag in (("votes", ""), ("spectr_votes", "_sv"), ("spectr", "_spectr")):
        base |= {f"lag_held{tag}": Method("lag", "parametric", "sum", lag=score),
                 f"lag_held_top3{tag}": Method("lag", "parametric", "sum", lag=score, lag_top=3),
                 f"lag_uniform_top3{tag}": Method("lag", "parametric", "mean", lag=score, lag_top=3),
                 f"lag_ensemble{tag}": Method("lag", "parametric_ensemble", lag=score, lag_top=3),
                 f"lag_recite{tag}": Method("lag", "recite", lag=score),
                 f"lag_recite_ensemble{tag}": Method("lag", "recite_ensemble", lag=score, lag_top=3)}
    out = dict(base)
    for name, spec in base.items():
        if name != "lag_in_context":
            out[name + "_nodocs"] = replace(spec, routing="nodocs")
            out[name + "_shuffled"] = replace(spec, routing="shuffled")
    return out


METHODS: dict[str, Method] = _methods()
DEFAULT_METHODS = ("closed_book", "prior", "in_context", "in_context_top1", "in_context_ensemble", "in_context_oracle",
                   "prag_recite_ensemble", "prag_recite_ensemble_wrong", "prag_combine_ensemble",
                   "prag_combine_ensemble_wrong", "polyprag_recite_ensemble", "polyprag_recite_ensemble_wrong",
                   "prag", "prag_oracle", "prag_wrong", "prag_recite", "prag_recite_oracle", "prag_recite_wrong",
                   "prag_combine", "polyprag", "polyprag_oracle", "polyprag_oracle_shuffled", "polyprag_wrong",
                   "polyprag_recite", "polyprag_recite_oracle", "polyprag_recite_oracle_shuffled",
                   "polyprag_recite_wrong", "polyprag_combine")


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


def _recipe_help(path: str):
    """An option overriding the recipe's setting at ``path`` (None: the recipe's), helped by that setting's help."""
    return _help(setting_help(path) + "; default: the recipe's", default=None)


# every recipe setting by its flat name, as EvalConfig's options and results.json's "training" facts spell it:
# a PRAG setting is prag_<field> where Poly-PRAG has a field of that name
RECIPE_SETTINGS = {"texts": "texts", "rank": "rank", "alpha": "alpha", "prag_lr": "prag.lr",
                   "prag_epochs": "prag.epochs", "lr": "poly.lr", "routing_lr": "poly.routing_lr",
                   "epochs": "poly.epochs", "num_adapters": "poly.num_adapters", "temperature": "poly.temperature",
                   "routing_active": "poly.routing_active", "layers": "poly.layers", "lr_decay": "poly.lr_decay",
                   "prag_layers": "prag.layers", "prag_lr_decay": "prag.lr_decay", "stop_loss": "prag.stop_loss"}


@dataclass
class EvalConfig:
    """One evaluation run: the data slice, the methods and how the parametric libraries are encoded.

    Training settings left at None come from ``recipe`` (see ``polyprag.encoding.recipes``)."""

    data: str = _help("folder with questions.jsonl and corpus.jsonl")
    n: int | None = _help("evaluate the first N questions (default: all)", default=None)
    start: int = _help("skip this many questions first (evaluate rows start .. start+N)", default=0)
    k: int = _help("passages retrieved per question", default=3)
    retriever: str = _help("retrieval over the whole corpus: bm25, dense (offline all-MiniLM-L6-v2) or hybrid "
                           "(BM25 + dense, reciprocal-rank fusion)", default="bm25")
    methods: tuple[str, ...] = _help("comma-separated methods (see polyprag.evaluation.METHODS)",
                                     default=DEFAULT_METHODS)
    model: str | None = _help("HF model folder or hub id (default: the bundled SmolLM2-135M-Instruct)",
                              default=None)
    recipe: str = _help("training recipe for PRAG and Poly-PRAG: 'default' (injects on the default model), "
                        "'distill' (the passage plus answers distilled from the in-context model), 'corpus' (a whole "
                        "corpus: Poly-PRAG on the last 12 layers, 8 epochs), 'full' (every layer, 15 epochs) or "
                        "'prag-paper' (PRAG's published settings)", default="default")
    num_adapters: int | None = _recipe_help("poly.num_adapters")
    rank: int | None = _recipe_help("rank")
    alpha: float | None = _recipe_help("alpha")
    epochs: int | None = _recipe_help("poly.epochs")
    lr: float | None = _recipe_help("poly.lr")
    routing_lr: float | None = _recipe_help("poly.routing_lr")
    routing_active: int | None = _recipe_help("poly.routing_active")
    prag_epochs: int | None = _recipe_help("prag.epochs")
    prag_lr: float | None = _recipe_help("prag.lr")
    layers: int | None = _help("LoRA on the last N transformer layers only (PRAG and Poly-PRAG; default: the "
                               "recipe's)", default=None)
    stop_loss: float | None = _recipe_help("prag.stop_loss")
    texts: str | None = _help("training texts, comma-separated from passage,rewrite,qa,qa_context",
                              default=None)
    library: str = _help("documents encoded: 'questions' (the questions' retrieved and gold passages, PRAG's "
                         "protocol), 'corpus' (the whole corpus) or a number N (the questions' passages plus N "
                         "others of the corpus, seeded); the retriever always searches the whole corpus",
                         default="questions")
    libraries: str | None = _help("folder of trained libraries to reuse: a library trained with the same settings "
                                  "and holding every document the run encodes is loaded instead of trained "
                                  "(new ones are saved there)", default=None)
    ensemble_weights: str = _help("ensemble methods: each document's weight in the vote, 'uniform' or 'rank' "
                                  "(1/(rank+1))", default="rank")
    lag_k: int = _help("LAG: adapters kept by the Arrow filter", default=5)
    augment_batch_size: int = _help("passages augmented per cache write (generation batches their prompts by length "
                                    "and memory)", default=64)
    batch_size: int = _help("Poly-PRAG training batch size", default=8)
    max_length: int = _help("training tokens per example (longer ones are cut)", default=256)
    max_batch_tokens: int = _help("padded tokens per training micro-batch", default=2048)
    compute_dtype: str = _help("autocast dtype: auto (bf16 where native), float32, bfloat16", default="auto")
    answer_batch_size: int = _help("questions handed to generation at once (it batches them by length and memory)",
                                   default=128)
    max_new_tokens: int = _help("answer budget in tokens (decoding stops at the first sentence's end)",
                                default=32)
    recite_tokens: int = _help("recite methods: tokens each document's recital may take", default=160)
    latency_samples: int = _help("questions answered one at a time to measure latency", default=10)
    bootstrap: int = _help("paired bootstrap resamples for the 95% intervals", default=10_000)
    seed: int = _help("seed of training, controls and bootstrap", default=0)
    out: str | None = _help("folder for results.json, results.md, predictions.jsonl, libraries/", default=None)
    cache: str | None = _help("augmentation cache folder (default: $POLYPRAG_CACHE/augment)", default=None)
    device: str | None = _help("cpu, cuda, cuda:1 … (default: CUDA when available)", default=None)
    workers: int = _help("processes that train the libraries side by side (0: one per library, up to the CPU "
                         "cores, what `polyprag eval` does; 1: all in this process). Worker processes import the "
                         "script that starts them: a script calling run_evaluation with 0 needs an "
                         "`if __name__ == '__main__':` guard", default=1)
    progress: bool = _help("progress bars", default=True)

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = tuple(m.strip() for m in self.methods.split(",") if m.strip())
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise InvalidInputError(f"Unknown method(s) {unknown}; choose from {list(METHODS)}.")
        if self.retriever not in ("bm25", "dense", "hybrid"):
            raise InvalidInputError(f"Unknown retriever {self.retriever!r}; use bm25, dense or hybrid.")
        if isinstance(self.library, int) and not isinstance(self.library, bool):
            self.library = str(self.library)
        if not (self.library in ("questions", "corpus") or (self.library.isdigit())):
            raise InvalidInputError(f"library must be 'questions', 'corpus' or a number of extra documents, "
                                    f"got {self.library!r}.")
        if self.ensemble_weights not in ("uniform", "rank"):
            raise InvalidInputError(f"ensemble_weights must be 'uniform' or 'rank', got {self.ensemble_weights!r}.")
        if self.recipe not in RECIPES:
            raise InvalidInputError(f"Unknown recipe {self.recipe!r}; choose from {list(RECIPES)}.")
        if self.texts is not None:
            check_texts(self.texts)
        if self.n is not None and self.n < 1:
            raise InvalidInputError(f"n must be >= 1, got {self.n}.")
        if self.start < 0:
            raise InvalidInputError(f"start must be >= 0, got {self.start}.")
        pick_compute_dtype(self.compute_dtype, self.device or "cpu")  # fails before any model loads
        for name in ("k", "num_adapters", "rank", "epochs", "prag_epochs", "batch_size", "answer_batch_size",
                     "augment_batch_size", "max_new_tokens", "recite_tokens", "lag_k", "max_length", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}.")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise InvalidInputError(f"workers must be an integer >= 0 (0: one per library), got {self.workers!r}.")
        if self.latency_samples < 0 or self.bootstrap < 100:
            raise InvalidInputError("latency_samples must be >= 0 and bootstrap >= 100.")
