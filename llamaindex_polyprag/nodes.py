"""Conversions between LlamaIndex nodes and polyprag documents, so either can feed the other."""
from __future__ import annotations

from typing import Iterable, Sequence

from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, TextNode

from polyprag import Document, InvalidInputError, ScoredDocument

ROUTING_KEY = "routing_weights"  # node metadata: the document's weights over the adapter bank, [m] floats
TITLE_KEY = "title"


def to_documents(documents: Iterable[Document | BaseNode | NodeWithScore]) -> list[Document]:
    """polyprag Documents from LlamaIndex Documents/TextNodes (id, text, ``title`` metadata) or polyprag ones."""
    out = []
    for i, d in enumerate(documents):
        if isinstance(d, NodeWithScore):
            d = d.node
        if isinstance(d, Document):
            out.append(d)
        elif isinstance(d, BaseNode):
            meta = {k: v for k, v in d.metadata.items() if k != ROUTING_KEY}
            title = meta.pop(TITLE_KEY, "") or ""
            out.append(Document(id=d.node_id, text=d.get_content(metadata_mode=MetadataMode.NONE),
                                title=str(title), metadata=meta))
        else:
            raise InvalidInputError(
                f"Item {i} is a {type(d).__name__}; give polyprag Documents or LlamaIndex Documents/TextNodes.")
    return out


def to_nodes(found: Sequence[ScoredDocument], weights: Sequence[Sequence[float]] | None = None
             ) -> list[NodeWithScore]:
    """Scored TextNodes for retrieved documents; each document's routing weights go in its metadata.

    The routing weights are excluded from what LlamaIndex shows the LLM or an embedding model, so
    a context-pasting synthesizer sees the same passage text as with any other retriever."""
    if weights is not None and len(weights) != len(found):
        raise InvalidInputError(f"Got {len(weights)} routing rows for {len(found)} documents.")
    nodes = []
    for i, s in enumerate(found):
        doc = s.document
        meta = dict(doc.metadata)
        if doc.title:
            meta[TITLE_KEY] = doc.title
        if weights is not None:
            meta[ROUTING_KEY] = [float(w) for w in weights[i]]
        node = TextNode(id_=doc.id, text=doc.text, metadata=meta,
                        excluded_llm_metadata_keys=[ROUTING_KEY], excluded_embed_metadata_keys=[ROUTING_KEY])
        nodes.append(NodeWithScore(node=node, score=float(s.score)))
    return nodes
