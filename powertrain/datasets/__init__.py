"""Datasets: versioned examples made from files or from traces and their feedback."""

from powertrain.datasets.export import ExportFormat, TaskPrompts, eval_record, openai_record
from powertrain.datasets.files import read_rows, rows_from_csv, rows_from_jsonl
from powertrain.datasets.from_traces import TraceQuery
from powertrain.datasets.rows import DatasetRow, DatasetRowError, RowInput, row_from_object
from powertrain.datasets.service import (
    CreateOutcome,
    DatasetNotFound,
    Datasets,
    parse_ref,
    row_json,
    version_json,
)
from powertrain.store.datasets import (
    ADMIN_OWNER,
    DatasetRecord,
    DatasetStore,
    DatasetVersionRecord,
    StoredRow,
)

__all__ = [
    "ADMIN_OWNER",
    "CreateOutcome",
    "DatasetNotFound",
    "DatasetRecord",
    "DatasetRow",
    "DatasetRowError",
    "DatasetStore",
    "DatasetVersionRecord",
    "Datasets",
    "ExportFormat",
    "RowInput",
    "StoredRow",
    "TaskPrompts",
    "TraceQuery",
    "eval_record",
    "openai_record",
    "parse_ref",
    "read_rows",
    "row_from_object",
    "row_json",
    "rows_from_csv",
    "rows_from_jsonl",
    "version_json",
]
