"""Real models for tests and benchmarks: paths (cache lookup), inputs (real inputs),
fetch (python models/fetch.py). Not part of the installed onnxopt package."""
