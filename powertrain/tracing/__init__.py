"""Traces: built on the request path, written to the store off it."""

from powertrain.tracing.writer import TraceWriter

__all__ = ["TraceWriter"]
