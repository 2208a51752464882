"""Poly-PRAG (Su et al., arXiv 2511.17044): a small bank of LoRAs shared by all documents and a routing vector
per document, trained jointly; here its routing, training loop, encoder and library kind (its data-parallel
fit is ``encoding.distributed``'s Shard of ``Encoder.fit``)."""
