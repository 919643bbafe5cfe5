"""Eval suites in YAML: cases x targets x assertions, parsed into typed models.

Every problem is one line that names the file and the YAML path
(``suite.yaml: targets[1].variants: ...``), raised as :class:`SuiteError`.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from powertrain.errors import ConfigError, PowertrainError
from powertrain.rag.loaders import safe_relative_path
from powertrain.store.collections import ADMIN_OWNER

MAX_CASES = 100_000


class SuiteError(ConfigError):
    """The suite file is invalid: the message names the file and the YAML path."""

    error_type = "invalid_eval_suite"


@dataclass(frozen=True)
class Case:
    """One row of the dataset: the variables a target is run with, and what is expected."""

    idx: int
    vars: dict[str, Any]
    expected: Any = None

    @property
    def key(self) -> str:
        """Stable across runs (and suites) for the same content: runs are compared by it."""
        blob = orjson.dumps(
            {"vars": self.vars, "expected": self.expected}, option=orjson.OPT_SORT_KEYS
        )
        return hashlib.sha256(blob).hexdigest()[:32]


class CaseSource(Protocol):
    """Where a suite's cases come from (inline, a file, a stored dataset)."""

    def cases(self) -> list[Case]: ...

    def describe(self) -> str: ...


class StoredCases(Protocol):
    """The datasets subsystem as the suite loader sees it (``powertrain.datasets.Datasets``)."""

    def eval_cases(
        self, owner: str, ref: str, *, split: str | None = None, limit: int | None = None
    ) -> tuple[Any, list[dict[str, Any]]]: ...


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CaseSpec(_Model):
    vars: dict[str, Any] = Field(default_factory=dict)
    expected: Any = None


class DatasetSpec(_Model):
    """Inline ``cases``, or a ``file`` (JSONL or CSV) relative to the suite file."""

    cases: list[CaseSpec] | None = None
    file: str | None = None
    expected: str | None = None  # the file's column/field that holds the expected value
    vars: list[str] | None = None  # the fields that become variables (default: the others)
    limit: int | None = Field(default=None, ge=1)
    name: str | None = None  # a stored dataset: NAME or NAME@version
    split: str | None = None  # of a stored dataset: train, test or all (default)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, list):
            return {"cases": data}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("cases", "file", "name") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of cases, file or a dataset name")
        return self


class TargetSpec(_Model):
    """A task with some of its variants, or a catalog model with a prompt template."""

    task: str | None = None
    variants: list[str] | None = None
    version: int | str | None = None
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _kind(self) -> TargetSpec:
        if (self.task is None) == (self.model is None):
            raise ValueError("a target names either a task or a model")
        if self.model is not None and self.prompt is None:
            raise ValueError(f"model target {self.model!r} needs a prompt")
        if self.task is not None and (self.prompt is not None or self.system is not None):
            raise ValueError("a task target uses the task's own prompt; drop prompt/system")
        return self

    def ids(self) -> list[str]:
        """``task:NAME@VARIANT`` (or ``task:NAME``) per variant, or ``model:ALIAS``."""
        if self.model is not None:
            return [f"model:{self.model}"]
        if not self.variants:
            return [f"task:{self.task}"]
        return [f"task:{self.task}@{v}" for v in self.variants]


class AssertionSpec(_Model):
    type: str
    value: Any = None
    values: list[Any] | None = None
    path: str | None = None
    threshold: float | None = None
    min: float | None = None
    max: float | None = None
    rubric: str | None = None
    model: str | None = None
    weight: float = Field(default=1.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # ``- python: checks.py:my_check`` is ``- {type: python, value: checks.py:my_check}``
        if isinstance(data, dict) and "type" not in data and "python" in data:
            data = {**data, "type": "python", "value": data["python"]}
            del data["python"]
        return data


class Suite(_Model):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    dataset: DatasetSpec
    targets: list[TargetSpec] = Field(min_length=1)
    assertions: list[AssertionSpec] = Field(default_factory=list, alias="assert")
    threshold: float | None = Field(default=None, ge=0, le=1)
    concurrency: int = Field(default=4, ge=1, le=256)
    timeout: float = Field(default=120.0, gt=0)
    repeat: int = Field(default=1, ge=1, le=100)
    cache: bool = False  # answer from the response cache (off: every case calls the model)

    def target_ids(self) -> list[str]:
        return [tid for target in self.targets for tid in target.ids()]


@dataclass(frozen=True)
class LoadedSuite:
    suite: Suite
    cases: list[Case]
    base_dir: Path  # files named by the suite (cases, python checks) are relative to it
    path: Path | None = None
    raw: dict[str, Any] | None = None  # the suite as written (its hash survives new defaults)

    @property
    def content_hash(self) -> str:
        """Same suite, same cases: same hash (the automatic resume looks runs up by it).
        Made from the suite as written, not as parsed, so a new setting with a default
        in a later version does not orphan an unfinished run."""
        written = self.raw if self.raw is not None else self.suite.model_dump(mode="json")
        blob = orjson.dumps(
            {"suite": written, "cases": [c.key for c in self.cases]},
            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
            default=str,
        )
        return hashlib.sha256(blob).hexdigest()


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith("function-") and part not in ("str", "list[CaseSpec]"):
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_suite(data: Any, *, where: str = "suite") -> Suite:
    if not isinstance(data, dict):
        raise SuiteError(f"{where}: expected a mapping with name, dataset, targets and assert")
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        raise SuiteError(f"{where}: {_loc(first['loc'])}: {message}") from None


def load_suite(path: str | Path, *, stored: StoredCases | None = None) -> LoadedSuite:
    """Read and check a suite file and its cases (``stored`` reads ``dataset: NAME@v``;
    blocking, so call it from a thread in async code when it is given)."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"{where}: cannot read the suite: {exc.strerror or exc}") from None
    return load_suite_text(
        text, base_dir=path.resolve().parent, where=where, path=path, stored=stored
    )


def load_suite_text(
    text: str,
    *,
    base_dir: Path,
    where: str = "suite",
    path: Path | None = None,
    stored: StoredCases | None = None,
) -> LoadedSuite:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SuiteError(f"{where}: YAML syntax error{at}: {problem}") from None
    suite = parse_suite(data, where=where)
    source = case_source(suite.dataset, base_dir=base_dir, where=where, stored=stored)
    cases = source.cases()
    if not cases:
        raise SuiteError(f"{where}: dataset: {source.describe()} has no cases")
    return LoadedSuite(suite=suite, cases=cases, base_dir=base_dir, path=path, raw=data)


# -- case sources -------------------------------------------------------------------------


@dataclass(frozen=True)
class InlineCases:
    specs: list[CaseSpec]

    def cases(self) -> list[Case]:
        return [Case(i, dict(s.vars), s.expected) for i, s in enumerate(self.specs)]

    def describe(self) -> str:
        return "the inline cases"


@dataclass(frozen=True)
class FileCases:
    """JSONL (one object per line) or CSV (a header row). Each record is either
    ``{"vars": {...}, "expected": ...}`` or a flat record whose ``expected`` field (named by
    the suite) is the expected value and whose other fields are the variables."""

    path: Path
    expected: str | None
    fields: list[str] | None
    limit: int | None
    where: str

    def describe(self) -> str:
        return f"file {self.path.name!r}"

    def _records(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SuiteError(
                f"{self.where}: dataset.file: cannot read {self.path.name!r}: {exc.strerror or exc}"
            ) from None
        if self.path.suffix.lower() == ".csv":
            return list(csv.DictReader(io.StringIO(text)))
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise SuiteError(
                    f"{self.where}: dataset.file: {self.path.name} line {n} is not JSON"
                ) from None
            if not isinstance(record, dict):
                raise SuiteError(
                    f"{self.where}: dataset.file: {self.path.name} line {n} is not an object"
                )
            records.append(record)
            if len(records) > MAX_CASES:
                raise SuiteError(f"{self.where}: dataset.file: over {MAX_CASES} cases")
        return records

    def cases(self) -> list[Case]:
        out = []
        for i, record in enumerate(self._records()):
            if self.limit is not None and i >= self.limit:
                break
            if "vars" in record and isinstance(record["vars"], dict):
                out.append(Case(i, dict(record["vars"]), record.get("expected")))
                continue
            expected = record.get(self.expected) if self.expected else record.get("expected")
            skip = {self.expected or "expected"}
            names = self.fields if self.fields is not None else [k for k in record if k not in skip]
            out.append(Case(i, {k: record.get(k) for k in names}, expected))
        return out


def case_source(
    spec: DatasetSpec, *, base_dir: Path, where: str, stored: StoredCases | None = None
) -> CaseSource:
    if spec.cases is not None:
        return InlineCases(spec.cases[: spec.limit] if spec.limit else spec.cases)
    if spec.file is not None:
        try:
            relative = safe_relative_path(spec.file)
        except PowertrainError as exc:
            raise SuiteError(f"{where}: dataset.file: {exc.message}") from None
        if relative.suffix.lower() not in (".jsonl", ".csv"):
            raise SuiteError(f"{where}: dataset.file: {spec.file!r} is not .jsonl or .csv")
        root = base_dir.resolve()
        full = (root / relative).resolve()
        if not full.is_relative_to(root):  # a symlink out of the suite's directory
            raise SuiteError(f"{where}: dataset.file: {spec.file!r} leaves the suite's directory")
        return FileCases(full, spec.expected, spec.vars, spec.limit, where)
    assert spec.name is not None
    if stored is None:
        raise SuiteError(
            f"{where}: dataset: a stored dataset ({spec.name!r}) needs the store; run the "
            "suite with `powertrain eval run`"
        )
    return StoredDatasetCases(stored, spec.name, spec.split, spec.limit, where)


@dataclass(frozen=True)
class StoredDatasetCases:
    """``dataset: NAME[@version]``: a stored dataset's rows (the admin key's datasets)."""

    stored: StoredCases
    ref: str
    split: str | None
    limit: int | None
    where: str

    def describe(self) -> str:
        return f"dataset {self.ref!r}"

    def cases(self) -> list[Case]:
        try:
            _, records = self.stored.eval_cases(
                ADMIN_OWNER, self.ref, split=self.split, limit=self.limit
            )
        except PowertrainError as exc:
            raise SuiteError(f"{self.where}: dataset: {exc.message}") from None
        return [
            Case(i, dict(r.get("vars") or {}), r.get("expected")) for i, r in enumerate(records)
        ]
