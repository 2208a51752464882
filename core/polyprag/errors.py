"""Exception types: each names what is wrong and what to do about it."""


class PolyPRAGError(Exception):
    """Base class of every error polyprag raises on purpose."""


class InvalidInputError(PolyPRAGError, ValueError):
    """An argument (query, k, mixture, …) is not usable as given."""


class CorpusFormatError(PolyPRAGError, ValueError):
    """A corpus or questions file cannot be read as the documented JSONL format."""


class DuplicateDocumentError(PolyPRAGError, ValueError):
    """Two documents share one id; ids must be unique within a corpus or library."""


class UnknownDocumentError(PolyPRAGError, KeyError):
    """A document id is not in the library or corpus it was looked up in."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class LibraryError(PolyPRAGError):
    """An adapter library on disk is missing, truncated, altered or of a newer format."""


class LibraryFolderError(LibraryError, InvalidInputError):
    """A folder cannot take a library (or export): it holds other files, is a file, or cannot be written."""


class IncompatibleModelError(LibraryError):
    """An adapter library was encoded on another base model than the one given."""


class ModelLoadError(PolyPRAGError):
    """The base model cannot be found or converted."""


class CheckpointError(PolyPRAGError):
    """A training checkpoint cannot be read (damaged, or written by another polyprag format)."""


class TrainingError(PolyPRAGError):
    """Training cannot go on, e.g. the loss became NaN or inf (diverged)."""
