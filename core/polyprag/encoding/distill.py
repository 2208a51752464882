"""Context distillation: a document's adapter learns to answer questions about it as the model answers them
with the document in its prompt (the in-context "teacher"), token distributions included.

Knowledge Modules (Caccia et al. 2025, arXiv 2503.08727, "deep context distillation") train a document's module
so that the model *with the module and without the document* matches the model *with the document in context*.
Here the teacher is the frozen base model reading the passage; the questions are generic questions about the
document's subject (``PROFILE_QUESTIONS``, made from its title, no generation); the teacher answers each one
greedily and its top-``top_k`` next-token distribution at every answer token is kept. The student (the adapter,
question only) learns those distributions by soft cross-entropy,

    L = - Σ_t Σ_{v ∈ top_k(t)} p_teacher(v | passage, q, y_<t) · log p_adapter(v | q, y_<t)

(``top_k=0``: the teacher's greedy answer as a hard label, sequence-level distillation, Kim & Rush 2016). With
``context=True`` each question is also learned with the passage in the prompt, so that the adapter applied
beside its own passage (mode ``combine``) answers as the passage alone reads.

Teacher outputs are cached on disk per model, passage and settings: encoding the same corpus again generates
nothing.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..documents import Document
from ..errors import InvalidInputError
from ..generation.models import cache_dir
from ..generation.prompts import ANSWER_PREFIX, PROMPT_VERSION, answer_target, question_message
from ..library.storage import atomic_write_text
from ..progress import progress_bar
from .augment import (Augmentation, AugmentStats, TrainingExample, cache_file, clean_answer, examples_from,
                      recall_question)
from .recipes import FREE_TEXTS, check_texts

if TYPE_CHECKING:
    from ..generation.llm import LoRAMixingLLM

# generic questions about a document's subject (its title): who or what it is, what it is known for, and the
# when / where / who of a person, place, work or organisation. Not tailored to any benchmark's questions; they
# do include "Where was … born?", which PopQA's place-of-birth slice asks in another wording (see docs/results).
PROFILE_QUESTIONS = (
    "What do you know about {subject}?",
    "Who or what is {subject}?",
    "What is {subject} known for?",
    "When was {subject} born or founded?",
    "Where was {subject} born or founded?",
    "Where is {subject} from?",
)
DISTILL_VERSION = "1"  # bump when the procedure changes; prompts and settings are hashed into the key too


def profile_questions(doc: Document, templates: Sequence[str] = PROFILE_QUESTIONS) -> list[str]:
    """The profile questions about the document's subject (its title, else its first words)."""
    subject = recall_question(doc)[len("What do you know about "):-1]
    return [t.format(subject=subject) for t in templates]


class DistillAugmenter:
    """Training texts for context distillation: the free texts asked for (e.g. the passage) plus each profile
    question answered as the in-context teacher answers it, with its token distributions (see the module).

    Example:
        aug = DistillAugmenter(llm)                  # texts=("passage", "distill"), top_k=16
        PRAGEncoder(llm, augmenter=aug).fit(docs)
    """

    def __init__(self, llm: "LoRAMixingLLM", texts: Sequence[str] = ("passage", "distill"),
                 questions: Sequence[str] = PROFILE_QUESTIONS, top_k: int = 16, context: bool = False,
                 max_new_tokens: int = 24, cache: str | Path | None = None, batch_size: int = 64,
                 progress: bool = False):
        self.texts = check_texts(texts)
        if "distill" not in self.texts:
            raise InvalidInputError("DistillAugmenter makes the 'distill' texts; add 'distill' to texts.")
        generated = set(self.texts) - FREE_TEXTS - {"distill"}
        if generated:
            raise InvalidInputError(f"DistillAugmenter cannot also make generated texts {sorted(generated)}; "
                                    "use texts from passage, recall, sentences and distill.")
        if not questions or top_k < 0 or max_new_tokens < 1 or batch_size < 1:
            raise InvalidInputError("DistillAugmenter needs questions, top_k >= 0, max_new_tokens >= 1 and "
                                    "batch_size >= 1.")
        self.llm = llm
        self.questions = tuple(questions)
        self.top_k = int(top_k)
        self.context = bool(context)
        self.max_new_tokens = max_new_tokens
        self.cache = Path(cache).expanduser() if cache else cache_dir() / "distill"
        self.batch_size = batch_size
        self.progress = progress
        self.stats = AugmentStats()

    def __call__(self, documents: Sequence[Document]) -> list[list[TrainingExample]]:
        free = [t for t in self.texts if t in FREE_TEXTS]
        out = []
        for doc, taught in zip(documents, self.teach(documents)):
            ex = examples_from(doc, Augmentation(rewrite="", qa=[]), free) if free else []
            for q, a, ids, probs in taught:
                teacher = (tuple(map(tuple, ids)), tuple(map(tuple, probs))) if self.top_k else None
                ex.append(TrainingExample(target=a, question=q, teacher=teacher))
                if self.context:
                    ex.append(TrainingExample(target=a, question=q, context=doc.full_text, teacher=teacher))
            out.append(ex or [TrainingExample(target=doc.full_text)])
        return out

    # ---- the teacher, with a cache -------------------------------------------------------------
    def _settings(self) -> str:
        return json.dumps([DISTILL_VERSION, PROMPT_VERSION, question_message("{q}", ["{p}"]), ANSWER_PREFIX,
                           self.questions, self.top_k, self.max_new_tokens])

    def cache_path(self, doc: Document) -> Path:
        """Where this passage's teacher outputs are cached: model / settings hash / passage hash."""
        return cache_file(self.cache, self.llm, DISTILL_VERSION, self._settings(), doc)

    def teach(self, documents: Sequence[Document]) -> list[list[tuple]]:
        """Per document, its (question, answer, top ids, top probabilities) from the cache or the teacher."""
        out: list[list[tuple] | None] = [None] * len(documents)
        todo = []
        for i, d in enumerate(documents):
            hit = _read(self.cache_path(d))
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
                self.stats.cache_hits += 1
        todo.sort(key=lambda i: len(documents[i].full_text))  # similar lengths share a batch
        with progress_bar(len(todo), "distill (teacher)", self.progress and bool(todo)) as bar:
            for s in range(0, len(todo), self.batch_size):
                idx = todo[s: s + self.batch_size]
                for i, taught in zip(idx, self._teach([documents[i] for i in idx])):
                    out[i] = taught
                    atomic_write_text(self.cache_path(documents[i]), json.dumps(taught, ensure_ascii=False))
                    self.stats.generated += 1
                bar.update(len(idx))
        return out  # type: ignore[return-value]

    def _teach(self, docs: Sequence[Document]) -> list[list[tuple]]:
        llm = self.llm
        flat = [(i, q) for i, d in enumerate(docs) for q in profile_questions(d, self.questions)]
        prompts = [llm.question_prompt(q, [docs[i].full_text]) for i, q in flat]
        answers = [clean_answer(a) for a in llm.generate(prompts, max_new_tokens=self.max_new_tokens)]
        keep = [j for j, a in enumerate(answers) if a]
        self.stats.qa_failures += len(flat) - len(keep)
        soft = teacher_distributions(llm, [prompts[j] for j in keep], [answers[j] for j in keep], self.top_k) \
            if self.top_k else [([], [])] * len(keep)
        taught: list[list[tuple]] = [[] for _ in docs]
        for j, (ids, probs) in zip(keep, soft):
            i, q = flat[j]
            taught[i].append((q, answers[j], ids, probs))
        return taught


def answer_ids(llm: "LoRAMixingLLM", answer: str) -> list[int]:
    """The answer's tokens as training learns them: " <answer>." and the end-of-text token."""
    tok = llm.tokenizer
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    return tok(answer_target(answer), add_special_tokens=False)["input_ids"] + eos


def teacher_distributions(llm: "LoRAMixingLLM", prompts: Sequence[str], answers: Sequence[str], top_k: int,
                          rows_per_pass: int = 16) -> list[tuple[list[list[int]], list[list[float]]]]:
    """The base model's top-``top_k`` next-token distribution (renormalised) at each answer token, the answer
    teacher-forced after its prompt: per row, (ids [answer, top_k], probs [answer, top_k])."""
    tok = llm.tokenizer
    out = []
    for s in range(0, len(prompts), rows_per_pass):
        p_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[s: s + rows_per_pass]]
        a_ids = [answer_ids(llm, a) for a in answers[s: s + rows_per_pass]]
        rows = [p + a for p, a in zip(p_ids, a_ids)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        # position t predicts token t+1: the answer's tokens are predicted from len(prompt)-1 on
        at_r = torch.tensor([r for r, (p, a) in enumerate(zip(p_ids, a_ids)) for _ in a])
        at_t = torch.tensor([len(p) - 1 + j for p, a in zip(p_ids, a_ids) for j in range(len(a))])
        with torch.no_grad(), llm.compute(None):
            hidden = llm.model.base_model(input_ids=ids.to(llm.device),
                                          attention_mask=mask.to(llm.device)).last_hidden_state
            logits = llm.model.get_output_embeddings()(hidden[at_r, at_t]).float()  # [answer tokens, vocab]
        top = torch.softmax(logits, -1).topk(top_k, dim=-1)
        probs = (top.values / top.values.sum(-1, keepdim=True)).cpu()
        start = 0
        for a in a_ids:
            out.append((top.indices[start: start + len(a)].cpu().tolist(),
                        [[round(v, 5) for v in row] for row in probs[start: start + len(a)].tolist()]))
            start += len(a)
    return out


def _read(path: Path) -> list[tuple] | None:
    try:
        return [tuple(row) for row in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        return None
