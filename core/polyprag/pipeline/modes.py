"""The one table of modes: what each puts on the model (a mixture, the LAG router) and in the prompt."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """What a mode puts where: the retrieved documents' mixture on the model, their passages or their recitals in
    the prompt, the LAG router, and whether each retrieved document answers on a row of its own (an ensemble)."""

    mixture: bool = False    # the retrieved documents' adapters are applied
    passages: bool = False   # the retrieved passages are in the prompt
    recite: bool = False     # each encoded document's recital (what its adapter writes back) is in the prompt
    lag: bool = False        # the data-free LAG router is applied
    ensemble: bool = False   # one row per retrieved document (its own passage / recital / mixture), decoded together
    others: bool = False     # ensemble: a row's mixture is the *other* retrieved documents' adapters, not its own
    dual: bool = False       # ensemble: each document votes twice, its passage read and its adapter alone

    @property
    def library(self) -> bool:
        """Whether the mode reads the adapter library (needs a ParametricRetriever)."""
        return self.mixture or self.recite


# The one table of modes; the evaluation's methods are these modes with a library, documents and routing.
MODES: dict[str, Mode] = {
    "parametric": Mode(mixture=True),
    "recite": Mode(recite=True),
    "combine": Mode(mixture=True, passages=True),
    "in_context": Mode(passages=True),
    "closed_book": Mode(),
    "lag": Mode(lag=True),
    "lag_in_context": Mode(lag=True, passages=True),
    "lag_parametric": Mode(lag=True, mixture=True),
    # per-document reading: each retrieved document answers on its own row, the rows vote token by token
    "parametric_ensemble": Mode(mixture=True, ensemble=True),
    "recite_ensemble": Mode(recite=True, ensemble=True),
    "combine_ensemble": Mode(mixture=True, passages=True, ensemble=True),
    "in_context_ensemble": Mode(passages=True, ensemble=True),
    # a row reads one passage with the other retrieved documents' adapters applied: the two hops of a bridge
    # question, one in the prompt and one in the weights
    "cross_ensemble": Mode(mixture=True, passages=True, ensemble=True, others=True),
    # each document votes twice, as in_context_ensemble reads it and as parametric_ensemble recalls it
    "dual_ensemble": Mode(mixture=True, passages=True, ensemble=True, dual=True),
}
ENSEMBLE_WEIGHTS = ("uniform", "rank")
# The library's default mode (PolyPRAG, both faces, `polyprag ask`), chosen on the popqa-birthplaces dev probe
# (docs/results.md, "Choosing the default"): each retrieved document's passage read with its own adapter, the rows
# voting, was the most accurate mode that applies the documents' adapters (37.5% of 40 against 40.0% for the
# best reading of the same passages with no adapter, and 12.5% with wrong documents' adapters); `parametric`,
# the default before, answered 10.0%.
DEFAULT_MODE = "combine_ensemble"
