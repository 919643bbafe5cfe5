"""A dataset row, the shapes it may be written in, and its deterministic split.

A row is ``{input: {variables?, messages?}, output?, labels, source}``. Its hash
covers input and output only, so where it came from never moves it; its split
is a hash of that and the seed, so adding rows never moves existing ones — unless
the row names its split itself (``"split": "test"``), as data with a published
test set does.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from powertrain.errors import InvalidRequest

MAX_ROWS = 1_000_000


class DatasetRowError(InvalidRequest):
    code = "invalid_dataset_row"


class RowInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variables: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class DatasetRow(BaseModel):
    """One example. ``output`` is the reference answer (text or a JSON value), if any."""

    model_config = ConfigDict(extra="forbid")
    input: RowInput
    output: Any = None
    labels: dict[str, Any] = Field(default_factory=dict)
    source: dict[str, Any] = Field(default_factory=dict)
    split: Literal["train", "test"] | None = Field(
        default=None, description="Pinned by the row; otherwise a hash of it decides."
    )

    def content_hash(self) -> str:
        return _sha256({"input": self.input.as_dict(), "output": self.output})

    def stored(self, *, test_fraction: float, seed: int) -> dict[str, Any]:
        """The row as the store keeps it, with its hash and split."""
        values = without_nul(
            {
                "input": self.input.as_dict(),
                "output": self.output,
                "labels": self.labels,
                "source": self.source,
            }
        )
        row_hash = _sha256({"input": values["input"], "output": values["output"]})
        values["row_hash"] = row_hash
        values["split"] = self.split or split_of(row_hash, seed=seed, test_fraction=test_fraction)
        return values  # type: ignore[no-any-return]


def without_nul(value: Any) -> Any:
    """Postgres cannot keep NUL in text or JSONB; it is U+FFFD on every backend alike."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


def _sha256(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def split_of(row_hash: str, *, seed: int, test_fraction: float) -> str:
    """ "test" for about ``test_fraction`` of rows, decided by the row alone (and the seed)."""
    digest = hashlib.sha256(f"{seed}:{row_hash}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if position < test_fraction else "train"


def version_hash(
    rows: list[dict[str, Any]],
    *,
    test_fraction: float,
    seed: int,
    pinned: list[str | None] | None = None,
) -> str:
    """What makes two versions the same: their rows in order (with labels, sources and any
    split a row pins), and the split settings."""
    pins = pinned or [None] * len(rows)
    body = [
        [r["row_hash"], r["labels"], r["source"], *([pin] if pin else [])]
        for r, pin in zip(rows, pins, strict=True)
    ]
    return _sha256({"rows": body, "test_fraction": test_fraction, "seed": seed})


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise DatasetRowError(f"{where}: messages must be a non-empty list")
    for n, message in enumerate(value, 1):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise DatasetRowError(f"{where}: message {n} needs a role")
        if message["role"] not in ("system", "user", "assistant", "tool", "developer"):
            raise DatasetRowError(f"{where}: message {n} has an unknown role {message['role']!r}")
    return [dict(m) for m in value]


def _content(message: dict[str, Any]) -> Any:
    content = message.get("content")
    return content if content is not None else ""


def row_from_object(obj: Any, where: str, *, source: dict[str, Any] | None = None) -> DatasetRow:
    """A row from one of the accepted shapes, or a one-line error naming ``where``.

    - ``{"input": {"variables": {...}} | {"messages": [...]} | {...variables} | "text",
      "output": ..., "labels": {...}}``
    - ``{"vars": {...}, "expected": ...}`` (an eval case)
    - ``{"messages": [...]}`` (OpenAI chat fine-tuning: the last assistant message is the
      reference output)
    """
    if not isinstance(obj, dict):
        raise DatasetRowError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    known = {"input", "output", "labels", "vars", "expected", "messages", "source", "split"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise DatasetRowError(
            f"{where}: unknown field {unknown[0]!r} (a row has input, output and labels; "
            "or vars and expected; or messages; and optionally its split)"
        )
    row = _row_of(obj, where, source)
    split = obj.get("split")
    if split is None:
        return row
    if split not in ("train", "test"):
        raise DatasetRowError(f'{where}: split must be "train" or "test", not {split!r}')
    return row.model_copy(update={"split": split})


def _row_of(obj: dict[str, Any], where: str, source: dict[str, Any] | None) -> DatasetRow:
    labels = obj.get("labels") or {}
    if not isinstance(labels, dict):
        raise DatasetRowError(f"{where}: labels must be an object")
    given_source = obj.get("source") or {}
    if not isinstance(given_source, dict):
        raise DatasetRowError(f"{where}: source must be an object")
    row_source = {**given_source, **(source or {})}
    if "messages" in obj:
        if "input" in obj or "vars" in obj:
            raise DatasetRowError(f"{where}: give messages or input, not both")
        messages = _messages(obj["messages"], where)
        output = obj.get("output", obj.get("expected"))
        if output is None and messages[-1]["role"] == "assistant" and len(messages) > 1:
            output = _content(messages.pop())
        return DatasetRow(
            input=RowInput(messages=messages), output=output, labels=labels, source=row_source
        )
    if "vars" in obj:
        if "input" in obj:
            raise DatasetRowError(f"{where}: give vars or input, not both")
        variables = obj["vars"]
        if not isinstance(variables, dict):
            raise DatasetRowError(f"{where}: vars must be an object")
        return DatasetRow(
            input=RowInput(variables=variables),
            output=obj.get("expected", obj.get("output")),
            labels=labels,
            source=row_source,
        )
    if "input" not in obj:
        raise DatasetRowError(f"{where}: a row needs input (or vars, or messages)")
    raw = obj["input"]
    if isinstance(raw, str):
        given = RowInput(messages=[{"role": "user", "content": raw}])
    elif isinstance(raw, dict) and (set(raw) & {"variables", "messages"}):
        if set(raw) - {"variables", "messages"}:
            raise DatasetRowError(f"{where}: input has variables and messages, nothing else")
        variables = raw.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise DatasetRowError(f"{where}: input.variables must be an object")
        chat = _messages(raw["messages"], where) if raw.get("messages") is not None else None
        given = RowInput(variables=variables, messages=chat)
    elif isinstance(raw, dict):
        given = RowInput(variables=raw)  # a bare object is the variables
    else:
        raise DatasetRowError(f"{where}: input must be an object or a string")
    return DatasetRow(input=given, output=obj.get("output"), labels=labels, source=row_source)
