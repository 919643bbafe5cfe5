"""Eval runner overhead per case against promptfoo."""
