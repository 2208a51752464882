"""LlamaIndex face of polyprag: a retriever, an LLM and a query engine that apply adapter mixtures."""
from .llm import PolyPRAGLLM
from .query_engine import PolyPRAGQueryEngine
from .retriever import PolyPRAGRetriever

__all__ = ["PolyPRAGLLM", "PolyPRAGQueryEngine", "PolyPRAGRetriever"]
