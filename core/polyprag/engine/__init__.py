"""The LoRA-mixing engine, the one place where LoRA arithmetic meets the frozen base model: the bank of
adapters (``bank``), what a batch row mixes from it (``mixtures``), the forward hooks that add it (``hooks``) and
the fixed slots a compiled decode step reads its rows' mixtures from (``captured``)."""
from .bank import LoRABank
from .captured import MixtureSlot
from .hooks import active_mixture, attach, tracing_mixture, use_mixture
from .mixtures import BankMixture, Mixture, SumMixture, lowrank_delta

__all__ = ["BankMixture", "LoRABank", "Mixture", "MixtureSlot", "SumMixture", "active_mixture", "attach",
           "lowrank_delta", "tracing_mixture", "use_mixture"]
