"""Gateway overhead benchmark: ``python -m bench.gateway`` (see run.py)."""
