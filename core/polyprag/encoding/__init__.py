"""Encoding documents into adapters: augmentation, recipes, the shared training loop, checkpoints, update
fitting and data-parallel training."""
