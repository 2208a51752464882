"""The question's path: the modes table, the PolyPRAG pipeline from retrieval to answer, the Reciter (mode
"recite"'s recitals, kept per library state), the prompt fitted to the context, and the bridge the LangChain
and LlamaIndex faces share."""
