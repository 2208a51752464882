"""LAG (Fleshman & Van Durme, arXiv 2507.05346): data-free routing over a library of LoRA adapters, kept as
spectral factors (``factors``, ``library``, ``peft``): the paper's per-token Arrow then SpectR (``router``), and
its scores pooled over a question to pick adapters applied whole or documents read in another mode (``selection``)."""
from .factors import ModuleFactors, spectral_factors
from .library import LAGLibrary
from .peft import read_peft_adapter
from .router import VARIANTS, LAGRouter
from .selection import SCORES, LAGRetriever, LAGSelector

__all__ = ["LAGLibrary", "LAGRetriever", "LAGRouter", "LAGSelector", "ModuleFactors", "SCORES", "VARIANTS",
           "read_peft_adapter", "spectral_factors"]
