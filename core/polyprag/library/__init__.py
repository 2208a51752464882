"""The adapter library: its immutable state and method kinds' registry, live updates, the disk format and atomic storage, peft export and routing plots."""
