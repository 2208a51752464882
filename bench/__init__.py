"""polyprag's benchmark suite: ``python -m bench`` prints each figure as a ratio measured in one run."""
