"""LangChain face of polyprag: a retriever, a chat model and a one-step parametric RAG runnable."""
from .chat_models import ChatPolyPRAG
from .retrievers import PolyPRAGRetriever
from .runnables import PolyPRAGRunnable

__all__ = ["ChatPolyPRAG", "PolyPRAGRetriever", "PolyPRAGRunnable"]
