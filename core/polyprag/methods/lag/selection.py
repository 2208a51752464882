"""LAG decided once per question: the Arrow/SpectR scores pooled over the question's tokens pick adapters, which
are then applied whole for the answer (``LAGSelector``) or read as documents in another mode (``LAGRetriever``).

The paper's rule (``LAGRouter``) changes adapter at every token and layer, so a question's answer is spread over
many documents' adapters, none applied long enough for its knowledge to reach the answer. Here the same
per-token quantities are computed on a bare forward pass over the prompt and pooled per adapter:

    votes_j  = Σ_{t, layer} [ĵ(t, layer) = j]                        (the paper's decisions, counted)
    spectr_votes_j: the same for SpectR over every adapter (no Arrow filter: the paper's "spectr" rule)
    spectr_j = Σ_{t, layer} ‖A*_j x_t‖ / ‖x_t‖ − mean_i ‖A*_i x_t‖ / ‖x_t‖   (SpectR, centred per token)
    arrow_j  = Σ_{t, layer} |a*_j · x_t| / ‖x_t‖ − mean_i (…)                 (Arrow, centred per token)

over the question's own tokens (``tokens="question"``; the chat template's tokens are the same for every
question) or every prompt token, on a bare forward pass or on the paper's routed one (``routed``). No document text is read: only the adapters' weights and the question.
The chosen adapters' mixture is the engine's ``BankMixture`` over ``LAGLibrary.bank()``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ...documents import Document
from ...engine import Mixture
from ...errors import InvalidInputError
from ...retrieval.base import ScoreRetriever, check_top_k
from .library import LAGLibrary
from .router import LAGRouter

if TYPE_CHECKING:
    from ...engine import BankMixture

SCORES = ("votes", "spectr_votes", "spectr", "arrow")
TOKENS = ("question", "prompt")
COMBINES = ("sum", "mean")


class PromptScores(Mixture):
    """Observes a forward pass and pools each adapter's LAG scores over the masked tokens; the pass is the bare
    model's (``routed=False``) or the paper's router's (``routed=True``: the votes are then its very decisions)."""

    def __init__(self, library: LAGLibrary, mask: torch.Tensor, k: int = 5, routed: bool = False):
        self.library = library
        self.routed = routed
        self.router = LAGRouter(library, k=k)  # the paper's per-token decision, for the votes
        self.mask = mask.float()               # [rows, L]: 1 for the tokens pooled
        self.rows = mask.shape[0]
        self.totals = {s: torch.zeros(self.rows, len(library)) for s in SCORES}  # [rows, m]

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        f = self.library.modules.get(name)
        if f is None or x.dim() != 3:
            return None
        rows, L, _ = x.shape
        A_flat, _ = f.for_dtype(x.dtype)
        n, R = f.A.shape[0], f.A.shape[1]
        z = (x.reshape(-1, x.shape[-1]) @ A_flat.T).view(rows, L, n, R).float()  # A*_j x: [rows, L, n, R]
        norm = x.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)                 # ‖x_t‖: [rows, L, 1]
        mask = self.mask.to(x.device)[..., None]                                      # [rows, L, 1]
        for score, per_token in (("spectr", z.norm(dim=-1) / norm), ("arrow", z[..., 0].abs() / norm)):
            centred = per_token - per_token.mean(-1, keepdim=True)                   # [rows, L, n]
            self.totals[score][:, f.members.cpu()] += (centred * mask).sum(1).cpu()
        local, _, _ = self.router._route(name, x)                                     # ĵ per token: [rows·L, 1]
        best = z.norm(dim=-1).argmax(-1).view(-1, 1)                                  # SpectR over all: [rows·L, 1]
        for score, won in (("votes", local), ("spectr_votes", best)):
            votes = torch.zeros(rows * L, n, device=x.device).scatter_(1, won, 1.0).view(rows, L, n)
            self.totals[score][:, f.members.cpu()] += (votes * mask).sum(1).cpu()
        return self.router.delta(name, x) if self.routed else None


class LAGSelector:
    """Per question, the LAG scores of every adapter pooled over its tokens (default ``spectr_votes``, the best
    measured: docs/lag.md), and the top ``top`` adapters' mixture
    at full strength (``combine="sum"``, as PRAG sums its documents) or averaged (``"mean"``: uniform mixing).

    Example:
        selector = LAGSelector(LAGLibrary.from_adapter_library(prag_library), top=1)
        mixture = selector.mixture("In what city was … born?")      # the question's adapter, held for the answer
        llm.generate([llm.question_prompt("In what city was … born?")], [mixture])
    """

    def __init__(self, library: LAGLibrary, top: int = 1, score: str = "spectr_votes", tokens: str = "question",
                 k: int = 5, combine: str = "sum", routed: bool = False):
        if score not in SCORES:
            raise InvalidInputError(f"score must be one of {SCORES}, got {score!r}.")
        if tokens not in TOKENS:
            raise InvalidInputError(f"tokens must be one of {TOKENS}, got {tokens!r}.")
        if combine not in COMBINES:
            raise InvalidInputError(f"combine must be one of {COMBINES}, got {combine!r}.")
        self.library = library
        self.top = check_top_k(top, len(library))
        self.score, self.tokens, self.combine = score, tokens, combine
        self.k = check_top_k(k)
        self.routed = routed
        self.llm = library.llm

    def masks(self, questions: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The questions' prompts as a left-padded batch and the mask of the tokens pooled ([rows, L])."""
        llm = self.llm
        prompts = [llm.question_prompt(q) for q in questions]
        enc = llm.encode(prompts)
        mask = enc["attention_mask"].clone().cpu()
        if self.tokens == "question":
            for i, (q, p) in enumerate(zip(questions, prompts)):
                mask[i] = _span_mask(llm.tokenizer, p, q, mask.shape[1])
        return enc, mask

    @torch.no_grad()
    def scores(self, questions: Sequence[str], which: str | None = None) -> torch.Tensor:
        """Every adapter's pooled score per question [questions, m] (``which``: one of SCORES, default this
        selector's); one bare forward pass over the prompts."""
        return self.all_scores(questions)[which or self.score]

    @torch.no_grad()
    def all_scores(self, questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Every kind of pooled score (SCORES) per question [questions, m], from one bare forward pass."""
        enc, mask = self.masks(list(questions))
        observer = PromptScores(self.library, mask, k=self.k, routed=self.routed)
        self.llm.logits(enc["input_ids"], enc["attention_mask"], mixture=observer)
        return observer.totals

    def choose(self, questions: Sequence[str]) -> torch.Tensor:
        """The ``top`` best-scored adapters per question [questions, top], library indices, best first."""
        return self.scores(questions).topk(self.top, dim=-1).indices

    def weights(self, chosen: torch.Tensor) -> torch.Tensor:
        """Mixing weights [questions, m] of chosen adapters: 1 each (sum) or 1/top each (mean)."""
        w = torch.zeros(chosen.shape[0], len(self.library))
        w.scatter_(1, chosen, 1.0 if self.combine == "sum" else 1.0 / chosen.shape[1])
        return w

    def mixture(self, question: str) -> "BankMixture":
        """The question's chosen adapters as one engine mixture, to hold for its whole answer."""
        return self.library.mixture(self.weights(self.choose([question]))[0])

    def mixtures(self, questions: Sequence[str]) -> list["BankMixture"]:
        """``mixture`` for many questions, scored in one forward pass."""
        w = self.weights(self.choose(questions))
        return [self.library.mixture(row) for row in w]


class LAGRetriever(ScoreRetriever):
    """LAG's pooled scores as a data-free retriever: a question's best-scored adapters name its documents, which
    any mode of the pipeline then uses (their adapters at full strength, an ensemble, recitation).

    Example:
        lag = LAGLibrary.from_adapter_library(prag_library)
        retriever = ParametricRetriever(LAGRetriever(lag, prag_library.documents, k=1), prag_library)
        PolyPRAG(llm, retriever, mode="parametric").answer("Who …?")
    """

    def __init__(self, library: LAGLibrary, documents: Sequence[Document] | None = None, k: int = 1,
                 score: str = "spectr_votes", tokens: str = "question", arrow_k: int = 5, routed: bool = False):
        self.selector = LAGSelector(library, top=1, score=score, tokens=tokens, k=arrow_k, routed=routed)
        by_id = {d.id: d for d in documents} if documents is not None else {}
        self.documents = [by_id.get(n) or Document(id=n, text=n) for n in library.names]  # adapter order
        self.k = check_top_k(k, len(library))

    def score_array_checked(self, query: str) -> np.ndarray:
        return self.selector.scores([query])[0].numpy()


def _span_mask(tokenizer, prompt: str, question: str, width: int) -> torch.Tensor:
    """1 for the (left-padded, width wide) prompt tokens that overlap the question's characters, else 0."""
    start = prompt.rfind(question)
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    out = torch.zeros(width)
    pad = width - len(offsets)
    if start < 0:  # the template changed the question's text: pool every prompt token
        out[pad:] = 1.0
        return out
    end = start + len(question)
    for i, (a, b) in enumerate(offsets):
        if b > start and a < end:
            out[pad + i] = 1.0
    return out
