"""Rows from JSONL and CSV files, without ever leaving the directory they are read from.

A file name goes through the same checks as ingest (``safe_relative_path``):
``..``, absolute paths, encoded dots and NUL bytes are refused before anything
is opened, and a symlink that resolves outside the root is refused too.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import orjson

from powertrain.datasets.rows import MAX_ROWS, DatasetRow, DatasetRowError, row_from_object
from powertrain.rag.documents import UnsafePath
from powertrain.rag.loaders import safe_relative_path

MAX_FILE_BYTES = 512 * 1024 * 1024
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


def resolve_inside(root: Path, name: str) -> tuple[str, Path]:
    """(the name as given relative to ``root``, the real file), or :class:`UnsafePath`."""
    relative = safe_relative_path(name, root="the dataset root").as_posix()
    base = Path(root).resolve(strict=True)
    try:
        real = (base / relative).resolve(strict=True)
    except FileNotFoundError:
        raise DatasetRowError(f"{relative}: no such file") from None
    if not real.is_relative_to(base):
        raise UnsafePath(f"{relative} resolves outside {str(root)!r} (a symlink?)", param="path")
    if not real.is_file():
        raise DatasetRowError(f"{relative}: not a regular file")
    return relative, real


def read_rows(
    root: Path,
    name: str,
    *,
    output_column: str | None = None,
    file_format: str | None = None,
) -> list[DatasetRow]:
    """Every row of the file ``name`` under ``root`` (JSONL or CSV, by its suffix)."""
    relative, real = resolve_inside(root, name)
    kind = file_format or FORMATS.get(Path(relative).suffix.lower())
    if kind is None:
        raise DatasetRowError(
            f"{relative}: unknown file type; use .jsonl (or .ndjson) or .csv, or say which"
        )
    if real.stat().st_size > MAX_FILE_BYTES:
        raise DatasetRowError(f"{relative}: over the limit of {MAX_FILE_BYTES} bytes")
    # O_NOFOLLOW: a symlink swapped in after the check above is refused, not followed.
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetRowError(f"{relative}: not UTF-8 text (offset {exc.start})") from None
    if kind == "csv":
        return rows_from_csv(text, relative, output_column=output_column)
    if output_column is not None:
        raise DatasetRowError("--output-column is for CSV files")
    return rows_from_jsonl(text, relative)


def rows_from_jsonl(text: str, name: str) -> list[DatasetRow]:
    rows: list[DatasetRow] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DatasetRowError(f"{where}: not valid JSON ({exc})") from None
        rows.append(row_from_object(obj, where, source={"file": name, "line": number}))
        _check_count(rows, name)
    if not rows:
        raise DatasetRowError(f"{name}: no rows")
    return rows


def rows_from_csv(text: str, name: str, *, output_column: str | None) -> list[DatasetRow]:
    """A header row names the variables; ``output_column`` (if given) is the reference."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if not header:
        raise DatasetRowError(f"{name}: the CSV has no header row")
    if len(set(header)) != len(header):
        raise DatasetRowError(f"{name}: the header repeats a column name")
    if output_column is not None and output_column not in header:
        raise DatasetRowError(
            f"{name}: no column {output_column!r} for the output (columns: {', '.join(header)})"
        )
    rows: list[DatasetRow] = []
    for record in reader:
        number = reader.line_num
        if None in record:
            raise DatasetRowError(f"{name} line {number}: more values than header columns")
        values: dict[str, Any] = dict(record)
        output = values.pop(output_column) if output_column is not None else None
        rows.append(
            DatasetRow(
                input={"variables": values},  # type: ignore[arg-type]
                output=output,
                source={"file": name, "line": number},
            )
        )
        _check_count(rows, name)
    if not rows:
        raise DatasetRowError(f"{name}: no rows")
    return rows


def _check_count(rows: list[DatasetRow], name: str) -> None:
    if len(rows) > MAX_ROWS:
        raise DatasetRowError(f"{name}: over the limit of {MAX_ROWS} rows")
