"""The store: SQLAlchemy 2 over SQLite (default) or Postgres, same schema and migrations."""

from powertrain.store.collections import CollectionStore
from powertrain.store.db import Database
from powertrain.store.evals import EvalResultRecord, EvalRunRecord, EvalStore
from powertrain.store.keys import ApiKeyRecord, KeyStore
from powertrain.store.tasks import SyncOutcome, TaskRecord, TaskStore, TaskVersionRecord
from powertrain.store.traces import TraceFilter, TracePage, TraceStore

__all__ = [
    "ApiKeyRecord",
    "CollectionStore",
    "Database",
    "EvalResultRecord",
    "EvalRunRecord",
    "EvalStore",
    "KeyStore",
    "SyncOutcome",
    "TaskRecord",
    "TaskStore",
    "TaskVersionRecord",
    "TraceFilter",
    "TracePage",
    "TraceStore",
]
