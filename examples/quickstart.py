"""Quickstart: encode invented facts into a Poly-PRAG library and answer with no passage in the prompt.

Shows the same questions answered closed-book, in parametric mode and in recite mode, side by side.
Run from the repository root with `make demo` (or `.venv/bin/python examples/quickstart.py`); it takes
about 0:39 with the default model (model load, encoding 8 documents, 24 answers: CPU time of one thread on
this 2-core CPU, wall 0:40 at that run; beside about ten other jobs its wall time was 103 s).
The steps live in polyprag/demo/quickstart.py so that `polyprag demo` runs the same thing.
"""
from polyprag.demo.quickstart import main

if __name__ == "__main__":
    raise SystemExit(main())
