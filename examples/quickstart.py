"""Quickstart: encode invented facts into a Poly-PRAG library and answer with no passage in the prompt.

Run from the repository root with `make demo` (or `.venv/bin/python examples/quickstart.py`).
The steps live in polyprag/demo/quickstart.py so that `polyprag demo` runs the same thing.
"""
from polyprag.demo.quickstart import main

if __name__ == "__main__":
    raise SystemExit(main())
