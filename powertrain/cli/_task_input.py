"""Reading task variables from the command line: --var, --vars-json, @files and stdin."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from powertrain.cli._common import config_option
from powertrain.errors import InvalidRequest
from powertrain.tasks.definition import PromptVersion, VariantSpec
from powertrain.tasks.registry import LoadedTask

# Variable types whose --var value is JSON rather than a plain string.
_JSON_EXAMPLES = {
    "integer": "3",
    "number": "2.5",
    "boolean": "true",
    "array": '\'["a", "b"]\'',
    "object": '\'{"key": "value"}\'',
}
_JSON_TYPES = frozenset(_JSON_EXAMPLES)


def version_selector(value: str | None) -> int | str | None:
    """``--version 2`` is a number, ``--version production`` a label."""
    if value is None:
        return None
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() else text


def _split_assignment(pair: str) -> tuple[str, str]:
    name, sep, value = pair.partition("=")
    if not sep or not name.strip():
        raise InvalidRequest(
            f"--var {pair!r}: write it as name=value (or name=@file to read the value from a file)"
        )
    return name.strip(), value


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"{what}: cannot read {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"{what}: {path!r} is not UTF-8 text") from None


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _json_value(text: str) -> Any:
    """Strict JSON (no NaN or Infinity); raises ValueError with a short reason."""
    return json.loads(text, parse_constant=_reject_constant)


def _candidate_versions(
    task: LoadedTask, variant: str | None, version: int | str | None
) -> list[PromptVersion]:
    """The versions a call could use, most likely first (for variable types and input)."""
    if version is not None:
        try:
            return [task.resolve(version)[1]]
        except InvalidRequest:
            return []  # the runner reports it with the full context
    variants = task.settings.effective_variants()
    specs: list[VariantSpec]
    if variant is not None:
        specs = [variants[variant]] if variant in variants else []
    else:
        specs = sorted(
            (s for s in variants.values() if s.weight > 0), key=lambda s: s.weight, reverse=True
        )
    found = []
    for spec in specs:
        try:
            found.append(task.resolve(spec.version)[1])
        except InvalidRequest:
            continue
    return found


def gather_variables(
    task: LoadedTask,
    *,
    assignments: tuple[str, ...],
    vars_json: str | None,
    variant: str | None,
    version: int | str | None,
) -> dict[str, Any]:
    """``--vars-json`` then each ``--var`` (typed by the task's declarations), then stdin."""
    candidates = _candidate_versions(task, variant, version)
    variables: dict[str, Any] = {}
    if vars_json is not None:
        text = vars_json
        if text.startswith("@"):
            text = _read_text(text[1:], "--vars-json")
        try:
            given = _json_value(text)
        except ValueError as exc:
            raise InvalidRequest(f"--vars-json is not valid JSON: {one_line(exc)}") from None
        if not isinstance(given, dict):
            raise InvalidRequest("--vars-json must be a JSON object of variable names to values")
        variables.update(given)
    for pair in assignments:
        name, raw = _split_assignment(pair)
        if raw.startswith("@"):
            raw = _read_text(raw[1:], f"--var {name}={raw}")
        elif raw.startswith("\\@"):
            raw = raw[1:]  # a literal value starting with @
        declared = next((v.variables[name] for v in candidates if name in v.variables), None)
        if declared is not None and declared.type in _JSON_TYPES:
            try:
                variables[name] = _json_value(raw)
            except ValueError:
                shown = raw if len(raw) <= 40 else raw[:37] + "..."
                raise InvalidRequest(
                    f"--var {name}: {shown!r} is not JSON, and variable {name!r} is "
                    f"{declared.type} (write it like {name}={_JSON_EXAMPLES[declared.type]})"
                ) from None
        else:
            variables[name] = raw
    input_name = next((v.input for v in candidates if v.input is not None), None)
    piped = sys.stdin is not None and not sys.stdin.isatty()
    if input_name is not None and input_name not in variables and piped:
        text = sys.stdin.read()
        if text:
            variables[input_name] = text
    return variables


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def variable_options(fn: Any) -> Any:
    """--var, --vars-json, --variant, --version and --config (applied last to first)."""
    fn = config_option(fn)
    fn = click.option(
        "--version",
        "version",
        default=None,
        metavar="N|LABEL",
        help="Pin a version number or label (default: the variant's).",
    )(fn)
    fn = click.option("--variant", default=None, help="Pin a variant (default: by weight).")(fn)
    fn = click.option(
        "--vars-json",
        default=None,
        metavar="JSON",
        help="Variables as one JSON object (or @file.json); --var values override it.",
    )(fn)
    return click.option(
        "--var",
        "assignments",
        multiple=True,
        metavar="NAME=VALUE",
        help="A variable (repeatable). Strings as typed; integer, number, boolean, array and "
        "object variables as JSON. NAME=@file reads the value from a file (\\@ for a literal @).",
    )(fn)
