"""Retrieval: the shared retriever base, BM25, dense and hybrid search, and the parametric retriever
that maps hits to the adapter library."""
