"""The three published methods, each in its own folder on the one engine: Poly-PRAG (``polyprag``),
PRAG (``prag``) and LAG (``lag``)."""
