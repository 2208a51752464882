"""PRAG (Su et al., SIGIR 2025): one LoRA per document from one shared random init, the top-k documents'
deltas summed at query time; here its training, encoder and library kind."""
