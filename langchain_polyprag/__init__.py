"""LangChain face of polyprag: a retriever, a chat model, a one-step parametric RAG runnable over any retriever,
offline embeddings, and LangChain documents made ready to encode."""
from .chat_models import ChatPolyPRAG
from .embeddings import PolyPRAGEmbeddings
from .retrievers import PolyPRAGRetriever, to_polyprag_documents
from .runnables import PolyPRAGRunnable

__all__ = ["ChatPolyPRAG", "PolyPRAGEmbeddings", "PolyPRAGRetriever", "PolyPRAGRunnable", "to_polyprag_documents"]
