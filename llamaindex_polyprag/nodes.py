"""Conversions between LlamaIndex nodes and polyprag documents, so either can feed the other."""
from __future__ import annotations

from typing import Iterable, Sequence

from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, TextNode

from polyprag import Document, InvalidInputError, ScoredDocument, Source

ROUTING_KEY = "routing_weights"  # node metadata: the document's weights over the adapter bank, [m] floats
TITLE_KEY = "title"
REF_DOC_KEY = "ref_doc_id"  # polyprag Document metadata: the LlamaIndex document a node was parsed from


def to_documents(documents: Iterable[Document | BaseNode | NodeWithScore]) -> list[Document]:
    """polyprag Documents from LlamaIndex Documents, nodes from node parsers (id, text, ``title`` metadata) or
    polyprag ones; a node's source document id goes into its metadata as ``ref_doc_id``."""
    return [to_document(d, i) for i, d in enumerate(documents)]


def to_document(item: Document | BaseNode | NodeWithScore, position: int = 0) -> Document:
    """One polyprag Document from a LlamaIndex Document, node or scored node (or a polyprag Document)."""
    d = item.node if isinstance(item, NodeWithScore) else item
    if isinstance(d, Document):
        return d
    if not isinstance(d, BaseNode):
        raise InvalidInputError(
            f"Item {position} is a {type(d).__name__}; give polyprag Documents or LlamaIndex Documents/TextNodes.")
    meta = {k: v for k, v in d.metadata.items() if k != ROUTING_KEY}
    title = meta.pop(TITLE_KEY, "") or ""
    if d.ref_doc_id and d.ref_doc_id != d.node_id:
        meta.setdefault(REF_DOC_KEY, d.ref_doc_id)
    return Document(id=d.node_id, text=d.get_content(metadata_mode=MetadataMode.NONE), title=str(title),
                    metadata=meta)


def to_nodes(found: Sequence[ScoredDocument], weights: Sequence[Sequence[float] | None] | None = None
             ) -> list[NodeWithScore]:
    """Scored TextNodes for retrieved documents; each document's routing weights (if any) go in its metadata.

    The routing weights are excluded from what LlamaIndex shows the LLM or an embedding model, so
    a context-pasting synthesizer sees the same passage text as with any other retriever."""
    if weights is not None and len(weights) != len(found):
        raise InvalidInputError(f"Got {len(weights)} routing rows for {len(found)} documents.")
    return [to_node(s, None if weights is None else weights[i]) for i, s in enumerate(found)]


def to_node(scored: ScoredDocument, weights: Sequence[float] | None = None) -> NodeWithScore:
    """A scored TextNode for one retrieved document, its routing weights (if any) in its metadata."""
    doc = scored.document
    meta = dict(doc.metadata)
    if doc.title:
        meta[TITLE_KEY] = doc.title
    if weights is not None:
        meta[ROUTING_KEY] = [float(w) for w in weights]
    node = TextNode(id_=doc.id, text=doc.text, metadata=meta,
                    excluded_llm_metadata_keys=[ROUTING_KEY], excluded_embed_metadata_keys=[ROUTING_KEY])
    return NodeWithScore(node=node, score=float(scored.score))


def to_scored_document(scored: NodeWithScore, position: int = 0) -> ScoredDocument | Document:
    """A LlamaIndex retriever's scored node as a polyprag document, with its score when it has one."""
    doc = to_document(scored, position)
    return doc if scored.score is None else ScoredDocument(doc, float(scored.score))


def returned_node(source: Source) -> NodeWithScore:
    """The node to hand back for a source of an answer: the user's retriever's own (a copy, with the routing
    weights) when it returned it, else polyprag's."""
    if source.original is None:
        return to_node(source.document, source.routing_weights)
    return with_routing(source.original, source.routing_weights)


def with_routing(scored: NodeWithScore, weights: Sequence[float] | None) -> NodeWithScore:
    """A copy of a retrieved node with its routing weights in the metadata (kept out of prompts and embeddings)."""
    if weights is None:
        return scored
    node = scored.node.model_copy(update={
        "metadata": {**scored.node.metadata, ROUTING_KEY: [float(w) for w in weights]},
        "excluded_llm_metadata_keys": [*scored.node.excluded_llm_metadata_keys, ROUTING_KEY],
        "excluded_embed_metadata_keys": [*scored.node.excluded_embed_metadata_keys, ROUTING_KEY]})
    return NodeWithScore(node=node, score=scored.score)
