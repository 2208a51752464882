"""``polyprag.lag``: LAG's public names (the method lives in ``polyprag.methods.lag``)."""
from .methods.lag import VARIANTS, LAGLibrary, LAGRouter, ModuleFactors, read_peft_adapter, spectral_factors

__all__ = ["LAGLibrary", "LAGRouter", "ModuleFactors", "VARIANTS", "read_peft_adapter", "spectral_factors"]
