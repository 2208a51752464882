"""Generation: loading the base model, prompts, batch planning, decoding with a mixture applied, and stopping."""
