"""LlamaIndex face of polyprag: a retriever, an LLM, a query engine over any retriever that applies adapter
mixtures, offline embeddings, and LlamaIndex documents and nodes made ready to encode."""
from .embeddings import PolyPRAGEmbedding
from .llm import PolyPRAGLLM
from .nodes import to_documents
from .query_engine import PolyPRAGQueryEngine
from .retriever import PolyPRAGRetriever

__all__ = ["PolyPRAGEmbedding", "PolyPRAGLLM", "PolyPRAGQueryEngine", "PolyPRAGRetriever", "to_documents"]
