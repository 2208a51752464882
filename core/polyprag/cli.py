"""The `polyprag` command: one function per subcommand, every one registered in COMMANDS.

Subcommands: ``encode`` (documents → adapter library), ``add`` / ``delete`` (update a library in place),
``ask`` (library + question → answer), ``eval`` (methods compared on a QA slice), ``export`` (a query's
mixture as a peft LoRA folder for vLLM, LoRAX or peft), ``inspect`` (routing heat map), ``bench`` (the
benchmarks), ``demo`` (the quickstart). To add one, write ``_configure_<name>(parser)`` and
``cmd_<name>(args) -> int`` and add a ``Command`` to COMMANDS; options that are a config dataclass's
fields come from ``options_from(parser, Config)``, so the fields' ``metadata={"help"}`` is their one help text.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .errors import InvalidInputError, LibraryError, PolyPRAGError

log = logging.getLogger("polyprag")
REPO = Path(__file__).resolve().parents[2]  # the source checkout (bench/ lives there, not in the wheel)


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, how it adds its arguments, and what it runs."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _load_llm(model: str | None, device: str | None, compute_dtype: str | None = None):
    from .generation.llm import LoRAMixingLLM

    return LoRAMixingLLM.from_pretrained(model, device=device, compute_dtype=compute_dtype)


def options_from(p: argparse.ArgumentParser, config: type, skip: Sequence[str] = (),
                 notes: dict[str, str] | None = None, defaults: dict | None = None,
                 shown: dict[str, str] | None = None) -> None:
    """One ``--option`` per field of the ``config`` dataclass, its help the field's ``metadata={"help"}``
    (plus ``notes[name]``), its default the field's (or ``defaults[name]``, shown as ``shown[name]``) said once;
    a field without a default is required, a tuple one is comma-separated."""
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if f.name in skip:
            continue
        default = (defaults or {}).get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "") + (notes or {}).get(f.name, "")
        hint = hints[f.name]
        kind = ([t for t in typing.get_args(hint) if t is not type(None)] or [hint])[0]
        said = "(default" in text or "default:" in text  # the help already says what the default is
        value = (shown or {}).get(f.name, ",".join(default) if isinstance(default, tuple) else default)
        text = text if said or default is dataclasses.MISSING else f"{text} (default: {value})"
        text = text.replace("%", "%%")
        if default is dataclasses.MISSING:
            p.add_argument(flag, required=True, help=text)
        elif typing.get_origin(hint) is tuple:
            p.add_argument(flag, type=_csv, default=default, help=text)
        elif kind is bool:  # said once: BooleanOptionalAction would add its own "(default: …)"
            p.add_argument(flag, action=_Flag, default=default, help=text)
        else:
            p.add_argument(flag, type=kind, default=default, help=text)


class _Flag(argparse.BooleanOptionalAction):
    """``--x / --no-x`` whose help says its default once (the help text already holds it)."""

    def __init__(self, *args, help: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = help


# ---- eval ---------------------------------------------------------------------------------------
def _configure_eval(p: argparse.ArgumentParser) -> None:
    from .evaluation import DEFAULT_METHODS, METHODS, EvalConfig

    # progress, device and compute_dtype are options of every command (--quiet, --device, --compute-dtype)
    # the command trains its libraries side by side (workers 0); run_evaluation() in a user's script does not
    options_from(p, EvalConfig, skip=("progress", "device", "compute_dtype"), defaults={"workers": 0},
                 notes={"methods": f": {METHOD_FAMILIES}; --list-methods prints all {len(METHODS)}"},
                 shown={"methods": f"{len(DEFAULT_METHODS)} of them, see --list-methods"})
    p.add_argument("--list-methods", action=_ListMethods, nargs=0, help="print every method name and exit")


# what a method name is made of (polyprag.evaluation.config), so that the help need not list every name
METHOD_FAMILIES = ("closed_book, prior, in_context[_top1|_ensemble|_oracle], lag, lag_in_context, and a library "
                   "(prag, polyprag, polyprag_sum) with a mode suffix (none: parametric; _recite, _combine, "
                   "_ensemble, _recite_ensemble, _combine_ensemble) and controls (_oracle, _wrong; Poly-PRAG also "
                   "_uniform, _shuffled, _m1), e.g. prag_recite_ensemble_wrong")


class _ListMethods(argparse.Action):
    """``--list-methods``: every evaluation method's name, the defaults marked, then exit."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .evaluation import DEFAULT_METHODS, METHODS

        print("\n".join(f"{m}{' (default)' if m in DEFAULT_METHODS else ''}" for m in METHODS))
        parser.exit()


def cmd_eval(args: argparse.Namespace) -> int:
    """Run the evaluation and print the markdown tables."""
    from .evaluation import EvalConfig, run_evaluation

    names = {f.name for f in dataclasses.fields(EvalConfig)}
    options = {k: v for k, v in vars(args).items() if k in names}
    cfg = EvalConfig(**{**options, "progress": not args.quiet})
    report = run_evaluation(cfg)
    print(report.markdown())
    if args.out:
        print(f"\nWrote {Path(args.out) / 'results.json'} and results.md.")
    return 0


# ---- encode -------------------------------------------------------------------------------------
def _configure_encode(p: argparse.ArgumentParser) -> None:
    from .encoding.recipes import RECIPES

    p.add_argument("docs", help="corpus JSONL: one {\"id\", \"title\", \"text\"} object per line")
    p.add_argument("library", help="folder to write the adapter library to")
    p.add_argument("--method", choices=("poly", "prag"), default="poly",
                   help="poly: Poly-PRAG bank + routing; prag: one LoRA per document (default: poly)")
    p.add_argument("--model", default=None, help="HF model folder or hub id (default: bundled SmolLM2-135M)")
    p.add_argument("--recipe", choices=list(RECIPES), default="default",
                   help="training recipe (polyprag.encoding.recipes): its training texts, alpha and routing settings, "
                        "and each option below marked \"the --recipe's\" that is left unset (default: default)")
    p.add_argument("--num-adapters", type=int, default=None, help=_recipe_help("poly.num_adapters"))
    p.add_argument("--rank", type=int, default=None, help=_recipe_help("rank"))
    p.add_argument("--epochs", type=int, default=None, help=_recipe_help("poly.epochs", "prag.epochs"))
    p.add_argument("--augment", choices=("generated_qa", "passage"), default=None,
                   help="generated_qa: the recipe's texts, generating those the model must write; passage: the "
                        "passage alone (default: the recipe's texts, generated only when they need it)")
    p.add_argument("--batch-size", type=int, default=None, help="training mini-batch per process (default: 8)")
    p.add_argument("--lr", type=float, default=None, help=_recipe_help("poly.lr", "prag.lr"))
    p.add_argument("--layers", type=int, default=None, help=_recipe_help("poly.layers", "prag.layers"))
    p.add_argument("--stop-loss", type=float, default=None, help=_recipe_help("prag.stop_loss"))
    p.add_argument("--group-size", type=int, default=32,
                   help="PRAG: documents trained together in one batch, and the unit of work a process takes "
                        "(the library depends on it, not on the number of processes) (default: 32)")
    p.add_argument("--library", dest="which", default="corpus",
                   help="documents to encode: 'corpus' (all), 'questions' (the --questions' retrieved top-k and "
                        "gold passages) or a number N (those plus N other documents, seeded) (default: corpus)")
    p.add_argument("--questions", default=None, help="questions JSONL, for --library questions or N (default: none)")
    p.add_argument("--k", type=int, default=3,
                   help="with --questions: passages retrieved per question (BM25) (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapters' start and the batches (default: 0)")
    p.add_argument("--workers", type=int, default=1,
                   help="encode in this many processes on this machine, one torch thread each unless --threads "
                        "(as torchrun does; PRAG: each trains its share of the documents, the library equals one "
                        "process's; Poly-PRAG: data-parallel). Under torchrun / accelerate launch leave it at 1 "
                        "(default: 1)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where PRAG saves each finished group of documents (Poly-PRAG, in one process: its "
                        "progress); rerunning the same command after a crash, on any number of processes, resumes "
                        "from it (default for PRAG: .LIBRARY.checkpoints beside the library, removed once it is "
                        "saved; Poly-PRAG keeps none unless given)")


def _chosen_documents(docs: list, args: argparse.Namespace) -> list:
    """The corpus documents ``--library`` picks: all of them, or the ``--questions``' passages (plus N others)."""
    which = str(args.which)
    if which == "corpus":
        return docs
    if not (which == "questions" or which.isdigit()):
        raise InvalidInputError(f"--library must be 'corpus', 'questions' or a number, got {which!r}.")
    if not args.questions:
        raise InvalidInputError(f"--library {which} needs --questions FILE (the questions whose passages to encode).")
    from .documents import load_questions
    from .evaluation.questions import evidence
    from .evaluation.runner import library_documents
    from .retrieval.bm25 import BM25Retriever

    questions = load_questions(args.questions)
    index = BM25Retriever(docs, k=min(args.k, len(docs)))
    retrieved = [[s.document.id for s in index.retrieve(q.question)] for q in questions]
    use_gold = any(evidence(q) for q in questions)
    return library_documents(docs, questions, retrieved, True, use_gold, which, args.seed)


def _recipe_help(*paths: str) -> str:
    """Help text of an option left to the recipe: the help of the recipe fields it sets (``recipes.setting``
    paths, e.g. "poly.epochs", "prag.epochs") and each recipe's values of them."""
    from .encoding.recipes import RECIPES, setting, setting_help

    def shown(value) -> str:
        return "None" if value is None else f"{value:g}"

    def each(recipe) -> str:  # "15" for one setting, "Poly-PRAG 15, PRAG 8" for a method's each
        if len(paths) == 1:
            return shown(setting(recipe, paths[0]))
        return ", ".join(f"{_METHOD_NAMES[p.split('.')[0]]} {shown(setting(recipe, p))}" for p in paths)

    values = "; ".join(f"recipe {name}: {each(r)}" for name, r in RECIPES.items())
    return f"{'; '.join(setting_help(p) for p in paths)} (default: the --recipe's value; {values})"


_METHOD_NAMES = {"poly": "Poly-PRAG", "prag": "PRAG"}


def cmd_encode(args: argparse.Namespace) -> int:
    """Encode a corpus into a library folder and print what was written.

    With ``--workers N``, or under `torchrun` / `accelerate launch`, the work is split across processes
    (``encoding.distributed``); rank 0 saves, once, atomically, after every process has finished."""
    from .documents import load_corpus
    from .encoding import distributed, workers
    from .encoding.checkpoint import remove_checkpoints
    from .library.storage import check_target
    from .methods.polyprag.encoder import PolyPRAGEncoder
    from .methods.prag.encoder import PRAGEncoder

    check_target(args.library)  # a folder of the user's, a file or an unwritable path: refused before training

    if args.workers != 1 and not workers.is_worker():
        if distributed.world()[1] > 1:
            raise InvalidInputError("--workers starts its own processes; under torchrun / accelerate launch "
                                    "leave it at 1 (the launcher's processes are the workers).")
        if args.method == "poly" and args.checkpoint_dir:
            raise InvalidInputError("Poly-PRAG in several processes keeps no checkpoint: leave out --checkpoint-dir "
                                    "or --workers.")
        _chosen_documents(load_corpus(args.docs), args)  # a bad corpus is refused once, here, not by every worker
        return workers.launch([sys.executable, "-m", "polyprag.cli", *args.argv], args.workers,
                              threads=args.threads or 1)
    docs = _chosen_documents(load_corpus(args.docs), args)
    llm = _load_llm(args.model, distributed.local_device(args.device), args.compute_dtype)
    # options left at None come from the recipe
    common = dict(recipe=args.recipe, rank=args.rank, epochs=args.epochs, lr=args.lr, augmenter=args.augment,
                  seed=args.seed, progress=not args.quiet, layers=args.layers)
    if args.batch_size is not None:
        common["batch_size"] = args.batch_size
    folder = args.checkpoint_dir
    if args.method == "prag":
        encoder = PRAGEncoder(llm, stop_loss=args.stop_loss, group_size=args.group_size, **common)
        folder = folder or Path(args.library).parent / f".{Path(args.library).name}.checkpoints"
    else:
        if args.stop_loss is not None:
            raise InvalidInputError("--stop-loss applies to --method prag (one adapter per document) only.")
        encoder = PolyPRAGEncoder(llm, num_adapters=args.num_adapters, **common)
    distributed.init(llm.device)  # the rendezvous waits for the slowest model load: not part of the encode time
    t0 = time.perf_counter()
    library = distributed.fit(encoder, docs, checkpoint_dir=folder)
    seconds = time.perf_counter() - t0
    rank, size = distributed.world()
    if rank == 0:
        path = library.save(args.library)
        size_b = library.storage_bytes()
        tokens = sum(len(llm.tokenizer(d.full_text, add_special_tokens=False)["input_ids"]) for d in docs)
        print(f"Encoded {len(library)} documents ({args.method}) into {path}: bank {size_b['bank']:,} bytes, "
              f"routing {size_b['routing']:,} bytes, {size_b['per_document']:,} bytes per document; "
              f"{seconds:.1f} s on {size} process{'es' if size > 1 else ''}, {len(docs) / seconds:.3f} documents/s, "
              f"{tokens / seconds:.0f} tokens/s.")
    distributed.barrier()
    if folder is not None and not args.checkpoint_dir and distributed.local_rank() == 0:
        remove_checkpoints(folder)  # the default folder: its library is saved
    distributed.shutdown()
    return 0


# ---- ask ----------------------------------------------------------------------------------------
def _configure_ask(p: argparse.ArgumentParser) -> None:
    from .pipeline.modes import DEFAULT_MODE, MODES

    p.add_argument("library", help="an adapter library folder (from `polyprag encode`)")
    p.add_argument("question", help="the question to answer")
    p.add_argument("--corpus", default=None,
                   help="corpus JSONL to retrieve from (default: the library's own documents)")
    modes = [m for m in MODES if not m.startswith("lag")]
    p.add_argument("--mode", choices=modes, default=DEFAULT_MODE, metavar="MODE",
                   help=f"how the documents' knowledge reaches the model: {', '.join(modes)} (see the README's "
                        f"'which mode' table) (default: {DEFAULT_MODE})")
    p.add_argument("--k", type=int, default=None,
                   help="documents retrieved (default: 3, or all of a smaller corpus; a larger k is refused)")
    p.add_argument("--rule", choices=("mean", "sum"), default=None,
                   help="how the documents' adapters combine (default: mean for poly, sum for prag)")
    p.add_argument("--model", default=None, help="base model (default: the model the library was encoded on)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="most tokens in the answer (default: 32)")
    p.add_argument("--json", action="store_true", help="print the answer and its documents as JSON")


def cmd_ask(args: argparse.Namespace) -> int:
    """Answer one question from a library and print the answer (or JSON with its documents)."""
    from .documents import load_corpus
    from .retrieval.parametric import ParametricRetriever
    from .pipeline.pipeline import PolyPRAG
    from .retrieval.bm25 import BM25Retriever

    llm, library = _open_library(args)
    docs = load_corpus(args.corpus) if args.corpus else library.documents
    retriever = ParametricRetriever(BM25Retriever(docs, k=args.k), library, rule=args.rule)
    rag = PolyPRAG(llm, retriever, mode=args.mode, max_new_tokens=args.max_new_tokens)
    answer = rag.answer(args.question)
    if args.json:
        print(json.dumps({"question": args.question, "answer": answer.text, "mode": answer.mode,
                          "documents": [{"id": s.document.id, "title": s.document.title, "score": s.score}
                                        for s in answer.documents], "recitals": answer.recitals},
                         ensure_ascii=False))
    else:
        print(answer.text)
    return 0


def _open_library(args: argparse.Namespace):
    """(llm, library) for ``args.library`` on ``args.model`` or the model the library was encoded on."""
    from .encoding import distributed
    from .library.adapters import AdapterLibrary
    from .library.storage import is_polyprag_folder

    cfg = Path(args.library) / "config.json"
    if not Path(args.library).is_dir() or not is_polyprag_folder(Path(args.library)):  # before any model loads
        raise LibraryError(f"{args.library} is not an adapter library (no polyprag-manifest.json); "
                           "create one with `polyprag encode`.")
    llm = _load_llm(args.model or _library_model(cfg), distributed.local_device(args.device), args.compute_dtype)
    return llm, AdapterLibrary.load(args.library, llm)


def _library_model(cfg: Path) -> str | None:
    """The model name a library's config records (None: the default model); the library's own load checks it."""
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_name") or None
    except (OSError, ValueError):
        return None  # AdapterLibrary.load reports the broken config precisely


# ---- add / delete -------------------------------------------------------------------------------
def _configure_update(p: argparse.ArgumentParser) -> None:
    """Options ``add`` and ``delete`` share: the training settings of an update, output and resumption."""
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the library's own)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the library's own)")
    p.add_argument("--augment", choices=("generated_qa", "passage"), default=None,
                   help="training texts (default: the library's own)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where training progress is saved; rerunning the same command after a crash resumes "
                        "from it (default: .LIBRARY.checkpoints beside the library, removed once it is saved)")
    p.add_argument("--model", default=None, help="base model (default: the model the library was encoded on)")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")


def _configure_add(p: argparse.ArgumentParser) -> None:
    from .library.state import ADD_STRATEGIES

    p.add_argument("library", help="an adapter library folder (from `polyprag encode`); saved back atomically")
    p.add_argument("corpus", help="corpus JSONL of the documents to add: one {\"id\", \"title\", \"text\"} per line")
    p.add_argument("--replace", action="store_true",
                   help="a document whose id the library holds replaces its old text (else it is refused)")
    p.add_argument("--strategy", choices=ADD_STRATEGIES, default="grow",
                   help="Poly-PRAG: grow = new adapters trained on the new documents, old ones frozen; "
                        "routing = fit only their routing over the frozen bank (cheap, injects little) "
                        "(default: grow)")
    p.add_argument("--new-adapters", type=int, default=None,
                   help="adapters to grow by (default: keep the library's documents per adapter)")
    p.add_argument("--refit", action="store_true",
                   help="with --replace: re-fit the shared adapters the old texts used most (see `delete --refit`)")
    _configure_update(p)


def _configure_delete(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", help="an adapter library folder; saved back atomically")
    p.add_argument("ids", nargs="+", metavar="ID", help="ids of the documents to delete")
    p.add_argument("--refit", action="store_true",
                   help="Poly-PRAG: retrain the shared adapters the deleted documents used most on the remaining "
                        "documents that use them, so the bank forgets them too (costs re-encoding those documents)")
    _configure_update(p)


def _fit_options(args: argparse.Namespace) -> dict:
    options = {"progress": not args.quiet}
    for name, key in (("epochs", "epochs"), ("lr", "lr"), ("augment", "augmenter"), ("strategy", "strategy"),
                      ("new_adapters", "new_adapters")):
        if getattr(args, name, None) is not None:
            options[key] = getattr(args, name)
    return options


@contextlib.contextmanager
def _checkpoints(args: argparse.Namespace):
    """The checkpoint folder of this update; the default one is removed once the library is saved."""
    folder = Path(args.checkpoint_dir or Path(args.library).parent / f".{Path(args.library).name}.checkpoints")
    yield folder
    if not args.checkpoint_dir:
        from .encoding.checkpoint import remove_checkpoints

        remove_checkpoints(folder)  # only what the checkpoints wrote: a user's file there stays


def _print_update(args: argparse.Namespace, library, done: dict, verb: str) -> None:
    size = library.storage_bytes()
    done.update(library=str(args.library), documents=len(library), adapters=library.bank.m,
                bank_bytes=size["bank"], routing_bytes=size["routing"])
    if args.json:
        print(json.dumps(done, ensure_ascii=False))
        return
    refit = done.get("refit")
    print(f"{verb} in {done['seconds']:.1f} s; {args.library} now holds {len(library)} documents over "
          f"{library.bank.m} adapters (bank {size['bank']:,} bytes, routing {size['routing']:,} bytes)"
          + (f"; re-fitted {len(refit['adapters'])} adapter(s) on {len(refit['documents'])} document(s)"
             if refit else "") + ".")


def cmd_add(args: argparse.Namespace) -> int:
    """Add (or with --replace, replace) the corpus's documents in a library, then save it back atomically."""
    from .documents import load_corpus
    from .errors import DuplicateDocumentError

    from .library.storage import check_target

    docs = load_corpus(args.corpus)
    llm, library = _open_library(args)
    check_target(args.library)  # it can be written back, before any training
    old = [d for d in docs if d.id in library]
    if old and not args.replace:
        raise DuplicateDocumentError(f"{len(old)} document id(s) of {args.corpus} are already in the library, "
                                     f"e.g. {old[0].id!r}; pass --replace to replace their text, or give new ids.")
    new = [d for d in docs if d.id not in library]
    options = _fit_options(args)
    t0 = time.perf_counter()
    done: dict = {"added": [d.id for d in new], "replaced": [d.id for d in old], "new_adapters": 0}
    with _checkpoints(args) as folder:
        if old:
            library.update_documents(old, refit=args.refit, checkpoint_dir=folder, **options)
            done["refit"] = library.last_update.get("refit")
            done["new_adapters"] += library.last_update["new_adapters"]
        if new:
            library.add_documents(new, checkpoint_dir=folder, **options)
            done["new_adapters"] += library.last_update["new_adapters"]
        library.save(args.library)
    done["seconds"] = time.perf_counter() - t0
    _print_update(args, library, done, f"Added {len(new)} and replaced {len(old)} document(s)")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete documents from a library (optionally re-fitting the adapters they used), then save it back."""
    from .library.storage import check_target

    llm, library = _open_library(args)
    check_target(args.library)  # it can be written back, before any training
    options = {k: v for k, v in _fit_options(args).items() if k not in ("strategy", "new_adapters")}
    t0 = time.perf_counter()
    with _checkpoints(args) as folder:
        library.delete_documents(args.ids, refit=args.refit, checkpoint_dir=folder, **options)
        library.save(args.library)
    report = library.last_update
    done = {"deleted": report["deleted"], "dropped_adapters": report["dropped_adapters"],
            "refit": report.get("refit"), "seconds": time.perf_counter() - t0}
    _print_update(args, library, done, f"Deleted {len(args.ids)} document(s)")
    return 0


# ---- export -------------------------------------------------------------------------------------
def _configure_export(p: argparse.ArgumentParser) -> None:
    p.epilog = ("The folder loads with PeftModel.from_pretrained(base, DIR), vLLM's LoRARequest(name, id, DIR) "
                "or LoRAX's adapter_id=DIR, without polyprag installed.")
    p.add_argument("--library", required=True, help="adapter library folder (from `polyprag encode`)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--docs", type=_csv, help="comma-separated document ids whose mixture to export")
    which.add_argument("--question", help="export the mixture of the documents BM25 retrieves for this question")
    p.add_argument("--k", type=int, default=None, help="documents retrieved with --question (default: 3, or all "
                                                         "of a smaller library)")
    p.add_argument("--out", required=True, help="folder to write adapter_config.json + adapter_model.safetensors")
    p.add_argument("--rule", choices=("mean", "sum"), default=None,
                   help="mean of routing weights (rank r) or sum of deltas (rank k·r, exact); "
                        "default: mean for poly, sum for prag")
    p.add_argument("--pad-rank", type=int, default=None,
                   help="zero-pad the LoRA rank to this (same output; servers batch equal ranks) (default: no padding)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="dtype of the saved LoRA weights (default: float32)")
    p.add_argument("--model", default=None, help="base model (default: the one the library was encoded on)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def cmd_export(args: argparse.Namespace) -> int:
    """Write the mixture of the given (or retrieved) documents as a peft LoRA folder."""
    from .library.export import CONFIG_FILE, check_export_target, export_peft
    from .retrieval.bm25 import BM25Retriever

    check_export_target(args.out)  # before the model loads
    _, library = _open_library(args)
    doc_ids = args.docs
    if args.question is not None:
        doc_ids = [h.document.id for h in BM25Retriever(library.documents, k=args.k).retrieve(args.question)]
    out = export_peft(library, doc_ids, args.out, rule=args.rule, pad_rank=args.pad_rank, dtype=args.dtype)
    rank = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))["r"]
    if args.json:
        print(json.dumps({"out": str(out), "documents": doc_ids, "rank": rank,
                          "files": sorted(f.name for f in out.iterdir())}))
    else:
        print(f"Wrote a rank-{rank} peft LoRA adapter for {len(doc_ids)} document(s) ({', '.join(doc_ids)}) to {out}.")
    return 0


# ---- inspect ------------------------------------------------------------------------------------
def _configure_inspect(p: argparse.ArgumentParser) -> None:
    from .library.plots import MAX_ROWS

    p.add_argument("--library", required=True, help="adapter library folder (from `polyprag encode`)")
    p.add_argument("--out", default=None,
                   help="picture to write, .png, .pdf or .svg (default: routing.png; none with --json)")
    p.add_argument("--docs", type=_csv, default=None, help="comma-separated document ids (default: all)")
    p.add_argument("--max-rows", type=int, default=MAX_ROWS,
                   help=f"documents drawn at most (evenly sampled beyond this; the histogram uses all) "
                        f"(default: {MAX_ROWS})")
    p.add_argument("--model", default=None, help="base model (default: the one the library was encoded on)")
    p.add_argument("--json", action="store_true", help="print the routing summary as JSON")


def cmd_inspect(args: argparse.Namespace) -> int:
    """Draw the routing heat map and bank-usage histogram, and print the routing summary."""
    from .library.plots import check_picture_target, plot_routing, routing_summary

    if args.max_rows < 1:
        raise InvalidInputError(f"--max-rows must be >= 1, got {args.max_rows}.")
    out = args.out or (None if args.json else "routing.png")  # --json alone prints, and writes no file
    if out is not None:
        check_picture_target(out)  # never over a picture it did not draw
    _, library = _open_library(args)
    if out is not None:
        out = plot_routing(library, out, doc_ids=args.docs, max_rows=args.max_rows)
    summary = {**routing_summary(library, args.docs), "picture": None if out is None else str(out)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['documents']} documents over {summary['adapters']} adapters; "
              f"{summary['unused_adapters']} adapter(s) never any document's top choice; "
              f"mean routing entropy {summary['mean_normalised_entropy']:.2f} (0 one-hot, 1 uniform). "
              f"Wrote {out}.")
    return 0


# ---- bench --------------------------------------------------------------------------------------
SUITES = {"engine": "bench", "generation": "bench.generation", "bm25": "bench.bench_bm25", "lag": "bench.bench_lag"}


def _configure_bench(p: argparse.ArgumentParser) -> None:
    p.epilog = "Other options go to the suite, e.g. `polyprag bench --quick`, `polyprag bench bm25 --sizes 10000`."
    p.add_argument("suite", nargs="?", choices=sorted(SUITES), default="engine",
                   help="engine: python -m bench (latency, storage, switching, generation); generation: its "
                        "generation figures alone (tokens/s, mixture batching, answer latency); bm25: rank-bm25 vs "
                        "bm25s query latency; lag: LAG routing cost (default: engine)")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark module from the source checkout (the package's own, else the working folder's);
    its exit status is ours."""
    found = [root for root in (REPO, Path.cwd()) if (root / "bench" / "generation.py").is_file()]
    if not found:
        print("polyprag bench runs the benchmarks of a source checkout (bench/ is not installed with the "
              "package): clone the repository, `pip install -e '.[dev]'` in it and run `polyprag bench` there. "
              "The clone is enough: without ../shared/data beside it the benchmarks use the facts that ship with "
              "polyprag.", file=sys.stderr)
        return 1
    extra = list(getattr(args, "passthrough", []) or [])
    cmd = [sys.executable, "-m", SUITES[args.suite], *extra]
    return subprocess.call(cmd, cwd=found[0])


# ---- demo ---------------------------------------------------------------------------------------
def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.epilog = "Other options go to the demo itself (e.g. --epochs 2, --adapters 8, --model PATH)."


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the quickstart (polyprag.demo.quickstart.main) when it is installed, passing it the remaining options."""
    try:
        from .demo import quickstart
    except ImportError:
        print("The demo is not available in this install (polyprag.demo.quickstart is missing); run "
              "examples/quickstart.py from the source tree instead.", file=sys.stderr)
        return 1
    result = quickstart.main(list(args.passthrough))
    return result if isinstance(result, int) else 0


PASSTHROUGH = {"demo", "bench"}  # subcommands whose unknown options go on to the program they run

COMMANDS: dict[str, Command] = {
    "encode": Command("encode a corpus JSONL into an adapter library folder", _configure_encode, cmd_encode),
    "add": Command("add (or replace) documents in an adapter library", _configure_add, cmd_add),
    "delete": Command("delete documents from an adapter library", _configure_delete, cmd_delete),
    "ask": Command("answer a question from an adapter library", _configure_ask, cmd_ask),
    "eval": Command("compare methods on a QA slice (EM, F1, accuracy, costs)", _configure_eval, cmd_eval),
    "demo": Command("run the quickstart demo", _configure_demo, cmd_demo),
    "export": Command("write a query's mixture as a peft LoRA adapter folder (vLLM, LoRAX, peft)",
                      _configure_export, cmd_export),
    "inspect": Command("draw a library's routing weights and bank usage to a PNG", _configure_inspect, cmd_inspect),
    "bench": Command("run the benchmarks (engine, bm25, lag) and print ratios", _configure_bench, cmd_bench),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="polyprag", description="Parametric RAG: Poly-PRAG, PRAG and LAG.")
    parser.add_argument("--version", action="version", version=f"polyprag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.configure(p)
        p.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda when available)")
        p.add_argument("--compute-dtype", default="auto",
                       help="run forward passes in this dtype (autocast; the frozen linear weights are stored in "
                            "it, LoRA factors stay float32): auto (bfloat16 where the hardware computes it "
                            "natively, else float32), float32, bfloat16 (default: auto)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
        p.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bars (polyprag's, transformers' and huggingface_hub's)")
        p.add_argument("-v", "--verbose", action="store_true", help="log what polyprag does")
        p.set_defaults(_run=command.run)
    return parser


@contextlib.contextmanager
def _quiet(quiet: bool):
    """With ``-q``, no progress bar of any library: tqdm's, transformers' ("Loading weights") and the hub's."""
    if not quiet:
        yield
        return
    import os

    names = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")
    before = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})  # read by tqdm at each bar, by the hub when imported
    loaded = "transformers" in sys.modules
    if loaded:
        from transformers.utils import logging as hf_logging

        was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for n, v in before.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
        if loaded and was:
            hf_logging.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `polyprag` command; returns the exit status (2 for refused input)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in PASSTHROUGH:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passthrough = extra
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --workers reruns in each worker
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        with _quiet(args.quiet):
            return args._run(args)
    except PolyPRAGError as e:
        print(f"polyprag {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
