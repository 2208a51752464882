"""The adapter library: its immutable state and the method kinds' registry, live updates, the disk format
and atomic storage, peft export and routing plots."""
