"""The quickstart demo and its bundled corpus of invented facts (`polyprag demo`, `make demo`)."""
