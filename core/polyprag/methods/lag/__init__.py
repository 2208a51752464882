"""LAG (Fleshman & Van Durme, arXiv 2507.05346): data-free per-token routing over a library of LoRA adapters,
kept as spectral factors (``factors``, ``library``, ``peft``) and routed by Arrow then SpectR (``router``)."""
from .factors import ModuleFactors, spectral_factors
from .library import LAGLibrary
from .peft import read_peft_adapter
from .router import VARIANTS, LAGRouter

__all__ = ["LAGLibrary", "LAGRouter", "ModuleFactors", "VARIANTS", "read_peft_adapter", "spectral_factors"]
