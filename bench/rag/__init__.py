"""Vector index benchmark for collections: ``python -m bench.rag.ann`` (see bench/rag/README.md)."""
