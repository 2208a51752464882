"""The question's path: the modes table, the PolyPRAG pipeline from retrieval to answer, the prompt fitted
to the context, and the bridge the LangChain and LlamaIndex faces share."""
