"""polyprag: parametric retrieval-augmented generation (Poly-PRAG, PRAG, LAG) on one LoRA-mixing engine."""
from .encoding.augment import GeneratedQAAugmenter, PassageAugmenter, TrainingExample
from .pipeline.bridge import FrameworkRetriever, Source, SourcedDocument, answer_sources, face_pipeline
from .retrieval.dense import RETRIEVERS, DenseRetriever, HybridRetriever, SentenceEmbedder, build_retriever
from .documents import Document, Question, load_corpus, load_questions, passage_id
from .errors import (CheckpointError, CorpusFormatError, DuplicateDocumentError, IncompatibleModelError,
                     InvalidInputError, LibraryError, ModelLoadError, PolyPRAGError, TrainingError,
                     UnknownDocumentError)
from .library.adapters import AdapterLibrary
from .generation.llm import GenerationConfig, LoRAMixingLLM
from .engine import BankMixture, LoRABank, Mixture, SumMixture, use_mixture
from .methods.polyprag.encoder import PolyPRAGEncoder
from .methods.prag.encoder import PRAGEncoder
from .generation.models import DEFAULT_MODEL
from .retrieval.parametric import ON_UNKNOWN, ParametricRetriever, Retrieval
from .pipeline.modes import DEFAULT_MODE, MODES
from .pipeline.pipeline import Answer, PolyPRAG, Prepared
from .retrieval.base import ScoredDocument
from .retrieval.bm25 import BM25Retriever
from .threads import iterate_in_thread

__version__ = "0.1.0"

__all__ = [
    "AdapterLibrary", "Answer", "BM25Retriever", "BankMixture", "CheckpointError", "CorpusFormatError", "Document",
    "DuplicateDocumentError", "GeneratedQAAugmenter", "GenerationConfig", "IncompatibleModelError",
    "InvalidInputError", "LibraryError", "LoRABank", "LoRAMixingLLM", "Mixture", "ModelLoadError",
    "PRAGEncoder", "ParametricRetriever", "PassageAugmenter", "PolyPRAG", "PolyPRAGEncoder",
    "PolyPRAGError", "Question", "Retrieval", "ScoredDocument", "SumMixture", "TrainingError", "TrainingExample",
    "UnknownDocumentError",
    "load_corpus", "load_questions", "use_mixture",
    "DEFAULT_MODE", "DEFAULT_MODEL", "DenseRetriever", "HybridRetriever", "MODES", "ON_UNKNOWN", "Prepared", "RETRIEVERS",
    "SentenceEmbedder", "build_retriever", "iterate_in_thread", "passage_id",
    "FrameworkRetriever", "Source", "SourcedDocument", "answer_sources", "face_pipeline",
]
