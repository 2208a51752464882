"""LangChain face of polyprag (filled by its own issue)."""
